"""Pipelines assembled from ``transforms``: ``pipeline.index_job`` (images -> embeddings Parquet)."""
