"""One candidate family built and measured on the chooser's sample (``index.chooser`` compares them): its codes
trained on the sample's shared PCA and coarse k-means, its serialized size, its recall ceiling and its nprobe
sweep (recall@k and batch-1 latency extrapolated to the full N)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from index.candidates import Candidate
from index.factory import MIN_POINTS_PER_LIST, PQ_MIN_TRAIN, nlist_for
from index.operating_points import OperatingPoint, pick, sweep
from index.train import blas_distances

K = 10
LATENCY_QUERIES = 100   # batch-1 searches per candidate point (the final index re-measures its curve on 200)


@dataclasses.dataclass
class Measured:
    candidate: Candidate
    factory: str                    # as built on the sample
    bytes_per_vector: float         # predicted at full size (whole index / N)
    sample_bytes: int               # serialized size of the sample index
    sample_bytes_predicted: int     # the byte model at sample size (checks the prediction above)
    points: list[OperatingPoint]
    best: OperatingPoint | None     # best point within the latency target
    train_s: float                  # CPU seconds (one thread: the work, whatever the neighbours do)
    add_s: float                    # CPU seconds
    seconds: float                  # wall
    ceiling: float | None = None    # recall@k with every list probed (measured once built, for the sweep order)
    pruned: bool = False            # ceiling below the leader's recall when its turn came: not swept

    def row(self) -> dict[str, Any]:
        return {"family": self.candidate.family, "factory": self.factory, "bytes_per_vector": self.bytes_per_vector,
                "sample_bytes": self.sample_bytes, "sample_bytes_predicted": self.sample_bytes_predicted,
                "nprobe": self.best.nprobe if self.best else None,
                "recall": self.best.recall if self.best else None,
                "p50_ms": self.best.p50_ms if self.best else None, "train_s": self.train_s, "add_s": self.add_s,
                "seconds": self.seconds, "ceiling": self.ceiling, "pruned": self.pruned,
                "points": [p.to_dict() for p in self.points]}


class SampleSpace:
    """Training shared by every candidate on one sample: one full PCA, cut to each width a candidate asks for, and
    one coarse k-means, mapped into each candidate's space. Measured reason: at d=768 on 50k rows a PCA costs ~4 s
    and a 1024-list k-means ~7 s per candidate on these machines, most of a candidate's cost.

    Cutting the full PCA gives the matrix faiss trains for ``PCA{w}`` (the first w eigenvectors of the same
    covariance; ``PCAR{w}`` adds faiss's fixed-seed rotation). The k-means runs once on the first ``coarse_width``
    principal components; its centroids are mapped back to input space and through each candidate's transform, so
    every candidate partitions the data the same way and differs only in its codes (the final build trains its own
    quantizer)."""

    def __init__(self, sample: np.ndarray, nlist: int, train_n: int, coarse_width: int, seed: int) -> None:
        import faiss

        d = sample.shape[1]
        self.pca = faiss.PCAMatrix(d, d)
        self.pca.train(sample[:max(train_n, min(len(sample), 1000 * d))])
        w = min(d, coarse_width)
        km = faiss.Kmeans(w, nlist, niter=10, seed=seed, max_points_per_centroid=train_n // nlist + 1)
        with blas_distances():
            km.train(self.cut(w, rotate=False).apply(sample[:train_n]))
        pcamat = faiss.vector_to_array(self.pca.PCAMat).reshape(d, d)   # rows: principal directions
        mean = faiss.vector_to_array(self.pca.mean)
        self.centroids_in = (mean + km.centroids @ pcamat[:w]).astype(np.float32)  # back in input space

    def cut(self, width: int, rotate: bool):
        import faiss

        d = self.pca.d_in
        pca = faiss.PCAMatrix(d, width, 0, rotate)
        for name in ("mean", "eigenvalues", "PCAMat"):
            faiss.copy_array_to_vector(faiss.vector_to_array(getattr(self.pca, name)), getattr(pca, name))
        pca.is_trained = True
        pca.prepare_Ab()
        pca.PCAMat.clear()  # as index.train.drop_pca_training_state does for the final index
        pca.eigenvalues.clear()
        return pca


def _train_on_space(c: Candidate, factory: str, space: SampleSpace, x_train: np.ndarray, metric: str):
    """``factory`` trained with the shared PCA and coarse centroids: only the codes (SQ ranges, PQ codebooks on
    residuals) are trained here."""
    import faiss

    from index.train import metric_of

    vt = space.cut(c.width, rotate=c.transform.startswith("PCAR")) if c.transform else None
    inner = faiss.index_factory(c.width, factory.split(",", 1)[1] if c.transform else factory, metric_of(metric))
    ivf = faiss.extract_index_ivf(inner)
    ivf.quantizer.add(vt.apply(space.centroids_in) if vt else space.centroids_in)
    with blas_distances():
        inner.train(np.ascontiguousarray(vt.apply(x_train) if vt else x_train))
    return faiss.IndexPreTransform(vt, inner) if vt else inner


def build(c: Candidate, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, *, n_full: int, d: int,
          nlist_full: int, train_per_list: int, metric: str, seed: int,
          space: SampleSpace | None = None) -> tuple[Any, Measured]:
    """Train ``c`` on (a prefix of the shuffled) ``base`` — on the shared ``space`` unless its transform is learned
    (OPQ) —, add all of it, serialize it, and measure its recall with every list probed (one batched search: the
    ceiling no nprobe exceeds). Returns the index and its ``Measured`` without operating points (``sweep_into``)."""
    import faiss

    from index.train import train_empty_index

    t0, c0 = time.time(), time.process_time()
    n = len(base)
    nlist = nlist_for(n)
    train_n = candidate_train_size(c, n, nlist, train_per_list)
    factory = c.factory(nlist)
    if space is not None and not c.transform.startswith("OPQ"):
        index = _train_on_space(c, factory, space, base[:train_n], metric)
    else:
        index = train_empty_index(factory, d, base[:train_n], metric, seed)
    train_s = time.process_time() - c0
    c1 = time.process_time()
    index.add_with_ids(base, np.arange(n, dtype=np.int64))
    add_s = time.process_time() - c1
    sample_bytes = len(faiss.serialize_index(index))
    model_bytes = c.index_bytes(n, d, nlist)
    # the byte model, calibrated by what this sample index really serializes to (fast-scan padding of uneven lists)
    per_vector = c.index_bytes(n_full, d, nlist_full) * max(1.0, sample_bytes / model_bytes) / n_full
    ceiling = recall_ceiling(index, queries, truth)
    return index, Measured(c, factory, per_vector, sample_bytes, model_bytes, [], None, train_s, add_s,
                           time.time() - t0, ceiling=ceiling)


def sweep_into(m: Measured, index, queries: np.ndarray, truth: np.ndarray, *, n: int, n_full: int,
               nlist_full: int, max_query_ms: float) -> None:
    """``m``'s operating points (nprobe sweep, latency extrapolated to N) and its best point within the target."""
    t0 = time.time()
    nlist = nlist_for(n)
    scale = max(1.0, (n_full / nlist_full) / (n / nlist), nlist_full / nlist)
    m.points = sweep(index, queries, truth, K, max_latency_ms=max_query_ms, latency_scale=scale,
                     latency_queries=LATENCY_QUERIES)
    within = [p for p in m.points if p.p50_ms <= max_query_ms]
    m.best = pick(within, max_latency_ms=max_query_ms) if within else None
    m.seconds += time.time() - t0


def recall_ceiling(index, queries: np.ndarray, truth: np.ndarray) -> float:
    """recall@K of ``index`` searched with every list probed: no nprobe of it recalls more."""
    from index.operating_points import nlist_of, set_nprobe
    from index.selfcheck import recall_at_k

    nlist = nlist_of(index)
    if nlist:
        set_nprobe(index, nlist)
    return recall_at_k(index.search(np.ascontiguousarray(queries), K)[1], truth, K)


def candidate_train_size(c: Candidate, n: int, nlist: int, train_per_list: int) -> int:
    """Training rows: ``train_per_list`` per list (>= 39), and >= 9,984 for an 8-bit PQ codebook."""
    return min(n, max(nlist * train_per_list, nlist * MIN_POINTS_PER_LIST,
                      PQ_MIN_TRAIN if c.codec.startswith("PQ") else 0))
