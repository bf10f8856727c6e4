"""Deduplication: dedup-fit, dedup-assign, dedup-hash, dedup and dedup-result, one module each,
and the store of the files they hand to each other."""
