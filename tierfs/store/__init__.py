"""The object store (fsspec): listings, stats and ranged reads, with retries."""
