"""The WebDataset format: shard and record names, tar reading, records, .idx files, tar writing."""
