"""The recall self-check of a freshly built version: exact ground truth, operating points, recall@k.

Held-out rows (drawn before training, so the index never trained on them) are the queries. Their exact top-k over
all rows is computed by the build's workers, one work unit at a time (``exact_topk``), and merged (``merge_topk``),
with FAISS's own exhaustive search and ``ResultHeap``. The driver then opens the version exactly as a server would
(``SearchIndex``, checksums verified), measures its recall-latency curve (``index.operating_points``), picks
nprobe from it if it was not given, and records recall@k in the manifest and
the per-query table ``selfcheck.parquet``, from which the figure can be recomputed.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index import operating_points as ops
from index import storage
from index.ids import faiss_ids
from index.layout import version_dir
from index.search import SearchIndex
from index.settings import BuildSettings
from index.source import WorkUnit, iter_unit_batches, vectors
from index.train import metric_of

SELFCHECK_K = 10
SELFCHECK_TABLE = "selfcheck.parquet"


def groundtruth_url(staging: str) -> str:
    return storage.join(staging, "groundtruth.npz")


def keeps_max(metric: str) -> bool:
    """Inner product ranks high scores first, L2 low distances."""
    import faiss

    return bool(faiss.is_similarity_metric(metric_of(metric)))


def exact_topk(unit: WorkUnit, queries: np.ndarray, k: int, dim: int, metric: str = "ip",
               block: int = 4_096) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` against one unit's rows, read block by block: (scores [Q,k], faiss ids [Q,k]);
    fewer than k rows pad with id -1. A block is held about five times over (Arrow's reader holds ~4, see
    ``index.source.UNIT_BATCH``; the flat index ``knn_ground_truth`` copies it): 16,384 rows of 384-d are ~125 MB."""
    from faiss.contrib.exhaustive_search import knn_ground_truth

    block_ids: list[np.ndarray] = []

    def blocks() -> Iterator[np.ndarray]:
        for batch in iter_unit_batches(unit, ["image_id", "embedding"], batch_size=block):
            block_ids.append(faiss_ids(batch.column(0).to_pylist()))
            yield vectors(batch.column(1), dim, unit.url)

    scores, rows = knn_ground_truth(np.ascontiguousarray(queries, np.float32), blocks(), k,
                                    metric_type=metric_of(metric))
    ids = np.concatenate(block_ids)  # row number within the unit -> faiss id
    return scores, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1).astype(np.int64)


def merge_topk(parts: Iterable[tuple[np.ndarray, np.ndarray]], k: int,
               keep_max: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Merge candidate (scores, ids) blocks row-wise into the k best, best first (FAISS's ``ResultHeap``). Rows with
    fewer than k candidates pad with id -1. Exactly equal scores keep FAISS's heap order (rare in float32: about
    one query in a thousand at d=768, and it only matters for a tie at the k-th place)."""
    import faiss

    heap = None
    for scores, ids in parts:
        if heap is None:
            heap = faiss.ResultHeap(len(scores), k, keep_max=keep_max)
        heap.add_result(scores, ids)
    if heap is None:
        raise ValueError("merge_topk needs at least one block")
    heap.finalize()
    return heap.D, heap.I


def save_topk(url: str, scores: np.ndarray, ids: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, scores=scores, ids=ids)
    storage.write_bytes(url, buf.getvalue())


def load_topk_ids(url: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(url)))["ids"]


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean |found[:k] ∩ truth[:k]| / |truth[:k]| over queries (ignoring -1 padding in truth)."""
    total, hits = 0, 0
    for f, t in zip(found[:, :k], truth[:, :k], strict=True):
        t = t[t >= 0]
        total += len(t)
        hits += len(np.intersect1d(f[f >= 0], t))
    return hits / total if total else 1.0


def run_selfcheck(root: str, manifest: dict[str, Any], staging: str, queries: np.ndarray,
                  query_image_ids: list[str], settings: BuildSettings) -> tuple[int | None, dict[str, Any]]:
    """Open the written version, measure its operating points, pick nprobe (unless set) and recall@k; write
    ``selfcheck.parquet`` into the version. Returns (nprobe to record, the manifest's "selfcheck" entry)."""
    k, nprobe = SELFCHECK_K, settings.nprobe
    out: dict[str, Any] = {"k": k, "queries": len(queries), "target_recall": settings.target_recall,
                           "min_recall": settings.min_recall}
    idx = SearchIndex.from_manifest(root, manifest)  # loads + verifies exactly what was written
    nlist = idx.nlist
    if not len(queries):
        out.update(recall_at_k=1.0, passed=True, note="no held-out queries")
        return nprobe, out
    truth = load_topk_ids(groundtruth_url(staging))

    target, max_ms = settings.target_recall, settings.max_query_ms
    points = ops.sweep(idx.index, queries, truth, k, max_latency_ms=max_ms)
    if nprobe is None:
        chosen = ops.pick(points, target_recall=target, max_latency_ms=max_ms)
        rule = (f"smallest nprobe reaching recall@{k} >= {target} within p50 {max_ms} ms, else the smallest "
                f"within {ops.RECALL_TOLERANCE} of the best recall within it")
        nprobe = chosen.nprobe
    else:
        chosen = next((p for p in points if p.nprobe == min(nprobe, nlist or nprobe)), None)
        chosen = chosen or ops.measure_point(idx.index, queries, truth, k, nprobe if nlist else None)
        rule = f"nprobe {nprobe} given"
    out["operating_points"] = ops.to_manifest(points, chosen, k=k, queries=len(queries),
                                              latency_queries=ops.LATENCY_QUERIES, rule=rule)
    if nlist:
        nprobe = min(int(nprobe), nlist)
        idx.nprobe = nprobe
    t0 = time.perf_counter()
    found = idx.search(queries, k).ids
    out["search_seconds"] = time.perf_counter() - t0
    recall = recall_at_k(found, truth, k)
    out["recall_at_k"] = recall
    out["passed"] = settings.min_recall is None or recall >= settings.min_recall
    table = pa.table({"image_id": pa.array(query_image_ids, pa.string()),
                      "truth": pa.array(list(truth), pa.list_(pa.int64())),
                      "found": pa.array(list(found), pa.list_(pa.int64()))})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    storage.write_bytes(storage.join(version_dir(root, manifest["version"]), SELFCHECK_TABLE), data)
    out.update(path=SELFCHECK_TABLE, sha256=storage.sha256_bytes(data), bytes=len(data))
    return (nprobe if nlist else None), out
