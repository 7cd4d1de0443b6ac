"""Embedding tables in the pipeline's contract, an exact top-k, and random models made to score inputs apart, for
the index, search and serving tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

BEAM = ["--runner=FnApiRunner"]


def write_embeddings(path: str | Path, x: np.ndarray, start: int = 0, *, model: str = "ldot-test-model",
                     fixed: bool = True, row_group_size: int = 500, ids: list[str] | None = None) -> list[str]:
    """An embeddings table in the pipeline's contract (fixed_size_list<float32>[D] or list<float32>)."""
    n, d = x.shape
    ids = ids if ids is not None else [f"img-{i:06d}" for i in range(start, start + n)]
    emb = (pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).reshape(-1)), d) if fixed
           else pa.array(list(x.astype(np.float32)), pa.list_(pa.float32())))
    table = pa.table({
        "image_id": pa.array(ids, pa.string()),
        "uri": pa.array([f"file:///photos/{i}.jpg" for i in ids], pa.string()),
        "content_sha256": pa.array(["0" * 64] * n, pa.string()),
        "embedding": emb,
        "num_boxes": pa.array([36] * n, pa.int32()),
        "width": pa.array([640] * n, pa.int32()),
        "height": pa.array([480] * n, pa.int32()),
        "model": pa.array([model] * n, pa.string()),
    })
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path), row_group_size=row_group_size)
    return ids


def write_vocab(path: Path, words: list[str]) -> Path:
    """A WordPiece vocab file of BERT's special tokens then ``words``, for a tiny text tower; returns its path."""
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return path


def spread_weights(model: torch.nn.Module, factor: float) -> None:
    """Scale every matrix of ``model`` in place. BERT's N(0, 0.02) init makes every output nearly parallel (cosine
    0.99999, so float32 scores tie); x25 on a text tower gives cosines ~0.7, like a trained model's."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(factor)


def numpy_topk(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(s, top, axis=1)


def clustered(n: int, d: int, n_clusters: int = 50, seed: int = 0, latent: int = 24, noise: float = 0.05,
              rng: np.random.Generator | None = None) -> np.ndarray:
    """Clusters in a low-dimensional subspace (like real embeddings), projected to d dims, plus a little noise."""
    base = np.random.default_rng(seed)
    proj = base.standard_normal((latent, d)).astype(np.float32) / np.sqrt(latent)
    centers = 3 * base.standard_normal((n_clusters, latent)).astype(np.float32)
    rng = rng or base
    z = centers[rng.integers(0, n_clusters, n)] + rng.standard_normal((n, latent)).astype(np.float32)
    return (z @ proj + noise * rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32)
