"""One module per ``airflow-curator`` subcommand: ``HELP``, ``add_arguments``, ``run``."""
