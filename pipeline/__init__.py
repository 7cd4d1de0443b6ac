"""Pipelines assembled from ``transforms``: ``pipeline.embed_job`` (images -> embeddings Parquet)."""
