"""Fixtures for tests, the demo and benchmarks: a small real dataset, synthetic annotations,
tiny random models. Never imported by the pipeline itself."""
