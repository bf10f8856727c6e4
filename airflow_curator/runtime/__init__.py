"""The ``airflow-curator`` command line that pods and local subprocesses run. Depends on core only."""
