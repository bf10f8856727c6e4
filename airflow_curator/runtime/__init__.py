"""The ``airflow-curator`` command line that pods and local subprocesses run (core only)."""
