"""Storage on any fsspec URL: listing, range reads, atomic writes and where staged bytes go."""
