"""A dataset's shards and metadata: discovery and its manifest, id checks, save-metadata."""
