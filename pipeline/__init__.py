"""Pipelines assembled from ``transforms``: ``pipeline.embed_job`` (images -> embeddings Parquet),
``pipeline.build_index_job`` (embeddings -> a published index version) and the ``pipeline.nightly`` job."""
