"""plan-reshard, reshard and commit: the filtered, resharded copy of a dataset."""
