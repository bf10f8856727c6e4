"""Pure library: formats, discovery, index, annotate, metadata, reshard.

Never imports airflow or kubernetes; heavy dependencies (DALI, torch) are imported lazily.
"""
