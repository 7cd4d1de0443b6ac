"""The recall–latency curve of one index: each search setting (nprobe) -> recall@k and batch-1 latency.

Measured on held-out queries against exact ground truth and written into the manifest, so a server picks its own
point (``SearchIndex.open(root, target_recall=0.9)`` or ``max_latency_ms=1``) without re-measuring. Latency is
batch-1, one thread, of the FAISS search alone (no id lookup), on the machine that measured it: a server on other
hardware should read it as relative. Recall is deterministic for a fixed index and query set.

The chooser (``index.chooser``) measures its candidates with the same sweep, so a candidate's figures and the
final index's curve mean the same thing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.threads import faiss_threads

DEFAULT_MAX_QUERY_MS = 2.0      # batch 1 on one core: ~1/50 of an exact scan of 1M x 768 floats
LATENCY_QUERIES = 200
RECALL_TOLERANCE = 0.005        # "as good as the best" when within this much recall@k (the noise of ~1000 queries)
PLATEAU = 0.002                 # a sweep stops when two doublings of nprobe gain less than this


@dataclasses.dataclass
class OperatingPoint:
    nprobe: int | None              # None: the index has no search parameter (Flat)
    recall: float                   # recall@k on the held-out queries
    p50_ms: float                   # batch-1 single-thread latency (median)
    p99_ms: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def nlist_of(index) -> int | None:
    import faiss

    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return None


def set_nprobe(index, nprobe: int) -> int:
    """The one place search parameters are set: nprobe (clamped to nlist), and an HNSW coarse quantizer's
    efSearch kept >= 2·nprobe so it returns the nprobe nearest lists it is asked for. Returns the nprobe set."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    value = max(1, min(int(nprobe), int(ivf.nlist)))
    ps = faiss.ParameterSpace()
    ps.set_index_parameter(index, "nprobe", value)
    if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
        ps.set_index_parameter(index, "quantizer_efSearch", max(64, 2 * value))
    return value


def batch1_latency(index, queries: np.ndarray, k: int, threads: int = 1, warmup: int = 10) -> tuple[float, float]:
    """(p50, p99) milliseconds of one-query searches with ``threads`` OpenMP threads (restored afterwards)."""
    with faiss_threads(threads):
        x = np.ascontiguousarray(queries, np.float32)
        for i in range(min(warmup, len(x))):
            index.search(x[i:i + 1], k)
        times = np.empty(len(x))
        for i in range(len(x)):
            t0 = time.perf_counter()
            index.search(x[i:i + 1], k)
            times[i] = time.perf_counter() - t0
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def measure_point(index, queries: np.ndarray, truth: np.ndarray, k: int, nprobe: int | None, *,
                  latency_queries: int = LATENCY_QUERIES, latency_scale: float = 1.0) -> OperatingPoint:
    """recall@k on all ``queries`` and batch-1 latency on the first ``latency_queries`` at ``nprobe``."""
    from index.selfcheck import recall_at_k  # index.selfcheck imports this module (through index.search)

    x = np.ascontiguousarray(queries, np.float32)
    if nprobe is not None:
        nprobe = set_nprobe(index, nprobe)
    found = index.search(x, k)[1]
    p50, p99 = batch1_latency(index, x[:latency_queries], k)
    return OperatingPoint(nprobe, recall_at_k(found, truth, k), p50 * latency_scale, p99 * latency_scale)


def sweep(index, queries: np.ndarray, truth: np.ndarray, k: int, *, max_latency_ms: float | None = None,
          latency_queries: int = LATENCY_QUERIES, latency_scale: float = 1.0) -> list[OperatingPoint]:
    """nprobe = 1, 2, 4, ... up to nlist (``measure_point``; latency times ``latency_scale``, the chooser's
    extrapolation to the full index). Stops past ``max_latency_ms`` (slower points cannot be chosen), at recall 1,
    or on a plateau (quantization, not probing, limits recall there). A Flat index has one point."""
    nlist = nlist_of(index)
    points: list[OperatingPoint] = []
    nprobe = 1
    while True:
        points.append(measure_point(index, queries, truth, k, nprobe if nlist else None,
                                    latency_queries=latency_queries, latency_scale=latency_scale))
        if not nlist or nprobe >= nlist or points[-1].recall >= 1.0:
            break
        if max_latency_ms is not None and points[-1].p50_ms > max_latency_ms:
            break
        if len(points) >= 3 and points[-1].recall - points[-3].recall < PLATEAU:
            break
        nprobe *= 2
    return points


def pick(points: Sequence[OperatingPoint], *, target_recall: float | None = None,
         max_latency_ms: float | None = None, tolerance: float = RECALL_TOLERANCE) -> OperatingPoint:
    """The point to serve at, from one index's curve. Among points within ``max_latency_ms`` (the fastest point if
    none is): the cheapest (smallest nprobe) that reaches ``target_recall``; if none does, or no target is given,
    the cheapest within ``tolerance`` of the best recall. Ordered by nprobe, not by measured latency, so the pick
    is reproducible: latency grows with nprobe, its measurement is noisy."""
    if not points:
        raise ValueError("no operating points to pick from")
    allowed = [p for p in points if max_latency_ms is None or p.p50_ms <= max_latency_ms]
    if not allowed:
        return min(points, key=lambda p: p.p50_ms)
    by_cost = sorted(allowed, key=lambda p: p.nprobe or 0)
    if target_recall is not None:
        reaching = [p for p in by_cost if p.recall >= target_recall]
        if reaching:
            return reaching[0]
    best = max(p.recall for p in allowed)
    return next(p for p in by_cost if p.recall >= best - tolerance)


def to_manifest(points: Sequence[OperatingPoint], chosen: OperatingPoint, *, k: int, queries: int,
                latency_queries: int, rule: str) -> dict[str, Any]:
    return {"k": k, "queries": queries, "latency_queries": min(latency_queries, queries), "threads": 1,
            "batch": 1, "rule": rule, "chosen": chosen.to_dict(), "points": [p.to_dict() for p in points]}


def from_manifest(manifest: dict[str, Any]) -> list[OperatingPoint]:
    """The recorded curve of a version; an empty list for versions built before operating points existed."""
    recorded = manifest.get("operating_points") or {}
    return [OperatingPoint(**p) for p in recorded.get("points", [])]
