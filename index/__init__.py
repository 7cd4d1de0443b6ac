"""Sharded FAISS indexes over LightningDOT embeddings: plain functions, faiss-contrib style, no Beam.

- ``index.ids``: stable 63-bit FAISS ids and shard assignment from ``image_id``.
- ``index.settings``: ``BuildSettings``, what a build is asked to do (shared by ``ldot build-index`` and nightly).
- ``index.factory``: the rule-based factory choice (Flat → IVF-Flat → IVF-SQ8 → (OPQ+)IVF-PQ), nlist, budgets.
- ``index.candidates``: the index families that fit a memory budget, with their byte model.
- ``index.chooser``: ``--factory auto`` by measurement: each candidate built and swept on a seeded sample.
- ``index.operating_points``: an index's recall-latency curve (nprobe -> recall@k, batch-1 p50/p99) and the pick.
- ``index.source``: reading embedding Parquet (file, directory, glob) in record batches.
- ``index.train``: a seeded random sample and one trained empty index shared by every shard.
- ``index.shards``: encoding a work unit into per-shard partials and merging a shard (run by Beam stages in
  ``transforms.index_shards``; the driver is ``pipeline.build_index_job.build_index``).
- ``index.selfcheck``: exact ground truth, operating points and recall@k of a freshly built version.
- ``index.layout``: ``ROOT/versions/<version>/`` + ``ROOT/CURRENT``, atomic publish, the one retention rule.
- ``index.search``: ``SearchIndex.open(root).search(vectors, k)`` with checksum verification.

Modules are imported lazily by their users; this package import stays cheap (no faiss, no Beam).
"""
