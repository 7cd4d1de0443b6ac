"""Sharded FAISS indexes over LightningDOT embeddings: plain functions, faiss-contrib style.

- ``index.ids``: stable 63-bit FAISS ids and shard assignment from ``image_id``.
- ``index.factory``: the ``auto`` factory choice (Flat → IVF-Flat → IVF-SQ8 → (OPQ+)IVF-PQ) with its reasoning.
- ``index.source``: reading embedding Parquet (file, directory, glob) in record batches.
- ``index.train``: a seeded random sample and one trained empty index shared by every shard.
- ``index.build``: ``build_index`` — train, build shards as a Beam stage, self-check recall, publish.
- ``index.layout``: ``ROOT/versions/<version>/`` + ``ROOT/CURRENT``, atomic publish, retention.
- ``index.search``: ``SearchIndex.open(root).search(vectors, k)`` with checksum verification.

Modules are imported lazily by their users; this package import stays cheap (no faiss, no Beam).
"""
