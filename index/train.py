"""The seeded random training sample and the one trained empty index that every shard starts from."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator

import numpy as np

from core.threads import faiss_threads
from index.errors import FactoryError
from index.source import EmbeddingSource, read_rows

log = logging.getLogger(__name__)

# Training samples below this many rows train on one FAISS thread. Measured reason: their work is many small
# parallel regions (a k-means per PQ sub-quantizer, OPQ's alternations) where OpenMP threads wait on each other;
# on the shared 2-core build machine OPQ46_184,IVF512,PQ46np trained on 19k MiniLM rows in 119.5 s with 2 threads,
# against 26.7 s for the same training on 16k rows with one (the chooser's). Larger samples are GEMM-bound k-means.
ONE_THREAD_BELOW = 100_000
# Rows a pre-transform (PCA, OPQ) trains on before the rest of a large training sample is read through it: 85 per
# dimension at d=768 for a covariance.
PRETRAIN_ROWS = 65_536
# OPQ's training: alternations and rows (faiss: 50 and 256 x 2^nbits per sub-quantizer). Measured on MiniLM
# 100k x 384, OPQ72_288,IVF1024,PQ72np at nprobe 256: 16k rows recall@10 0.8214 in 26 CPU s and +172 MB, 65k
# rows 0.8219 in 55 CPU s and +336 MB; on 20k rows OPQ46_184,IVF256,PQ46np recalls 0.807 after 8 alternations
# (17.6 s) and 0.804 after 20 (31.1 s). The chooser's candidates train the same way as the final build.
OPQ_NITER, OPQ_POINTS = 8, 16_384


def draw_rows(n_total: int, n_train: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, seeded, uniformly random global row numbers: (training rows, held-out query rows).
    Not the first N rows: inputs are often sorted (by source, date, id) and a prefix is a biased sample.
    Queries take at most half the rows, so a small corpus still leaves vectors to train on."""
    n_queries = min(n_queries, n_total // 2) if n_total > 1 else n_total
    n_train = min(n_train, n_total - n_queries)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n_total, size=n_train + n_queries, replace=False)
    return np.sort(chosen[:n_train]), np.sort(chosen[n_train:])


@dataclasses.dataclass
class Sample:
    """Seeded random rows of a source, read, in random order: any prefix is a seeded uniform sample too."""

    rows: np.ndarray        # global row numbers, in the order of ``vectors``
    vectors: np.ndarray     # [len(rows), d] float32


def can_train_from(sample: Sample, source: EmbeddingSource, n_train: int, n_queries: int) -> bool:
    """Whether ``sample`` holds the ``n_train`` rows that training would take (after the held-out queries')."""
    n_total = source.rows
    q = min(n_queries, n_total // 2) if n_total > 1 else n_total
    return len(sample.rows) >= min(n_train, n_total - q)


def train_index(factory: str, source: EmbeddingSource, n_train: int, n_queries: int, metric: str = "ip",
                seed: int = 0, reuse: Sample | None = None):
    """(trained empty index, training rows, disjoint held-out query rows), seeded. With ``reuse`` (the chooser's
    sample) holding enough rows, its prefix trains and nothing is read again: one sample in memory, not two;
    otherwise ``draw_rows`` and ``train_from_source``. A caller holding a ``reuse`` too small to train from
    should drop it first (``can_train_from``): it would stay in memory beside the training rows."""
    if reuse is not None and can_train_from(reuse, source, n_train, n_queries):
        train_rows, query_rows, vectors = reused_sample(source, n_train, n_queries, seed, reuse)
        return train_empty_index(factory, source.dim, vectors, metric, seed), train_rows, query_rows
    train_rows, query_rows = draw_rows(source.rows, n_train, n_queries, seed)
    return train_from_source(factory, source, train_rows, metric, seed), train_rows, query_rows


def reused_sample(source: EmbeddingSource, n_train: int, n_queries: int, seed: int,
                  reuse: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training rows, held-out query rows, training vectors) from the chooser's sample: its prefix (a view) and
    seeded queries from the other rows."""
    n_total = source.rows
    q = min(n_queries, n_total // 2) if n_total > 1 else n_total
    n_train = min(n_train, n_total - q)
    train_rows = reuse.rows[:n_train]
    rest = np.setdiff1d(np.arange(n_total, dtype=np.int64), train_rows, assume_unique=True)
    query_rows = np.sort(np.random.default_rng(seed).choice(rest, size=min(q, len(rest)), replace=False))
    return train_rows, query_rows, reuse.vectors[:n_train]


def metric_of(name: str) -> int:
    import faiss

    if name in ("ip", "inner_product", "METRIC_INNER_PRODUCT"):
        return faiss.METRIC_INNER_PRODUCT
    if name in ("l2", "METRIC_L2"):
        return faiss.METRIC_L2
    raise ValueError(f"unknown metric {name!r} (ip or l2)")


def train_empty_index(factory: str, d: int, sample: np.ndarray, metric: str = "ip", seed: int = 0):
    """``faiss.index_factory`` + train on ``sample``; checks the result can hold ids and be merged across shards.
    An OPQ rotation trains with ``OPQ_NITER`` alternations on at most ``OPQ_POINTS`` rows."""
    return _trained(_new_index(factory, d, metric, seed), factory, d, sample)


def train_from_source(factory: str, source: EmbeddingSource, rows: np.ndarray, metric: str = "ip",
                      seed: int = 0, *, pretrain_rows: int = PRETRAIN_ROWS):
    """``train_empty_index`` on the given rows of ``source``, holding them at the width the index codes them at.
    A pre-transform (PCA, OPQ) first trains on a seeded ``pretrain_rows`` of them, then every training row is
    read through it: a 1M x 768 build to PCA88 holds its 262k training rows in 92 MB, not 805 MB. Other
    factories, and samples of at most ``pretrain_rows``, are read as they are."""
    import faiss

    index = _new_index(factory, source.dim, metric, seed)
    if index.is_trained or not isinstance(index, faiss.IndexPreTransform) or len(rows) <= pretrain_rows:
        return _trained(index, factory, source.dim, sample_vectors(source, rows))
    t0 = time.time()
    with _training_threads(len(rows)):
        first = np.sort(np.random.default_rng(seed).choice(rows, size=pretrain_rows, replace=False))
        train_transforms(index, sample_vectors(source, first), apply_last=False)
        chain = [index.chain.at(i) for i in range(index.chain.size())]
        reduced = read_rows(source, rows, ("embedding",), through=lambda x: _apply(chain, x),
                            width=chain[-1].d_out)["embedding"]
        index.index.train(reduced)
        index.is_trained = index.index.is_trained
    log.info("trained %s on %d vectors (its transforms on %d) in %.1fs", factory, len(rows), pretrain_rows,
             time.time() - t0)
    return _shardable(index, factory, source.dim)


def _new_index(factory: str, d: int, metric: str, seed: int):
    import faiss

    try:
        index = faiss.index_factory(d, factory, metric_of(metric))
    except RuntimeError as e:
        raise FactoryError(f"faiss cannot build factory {factory!r} for dim {d}: {e}") from e
    _limit_opq_training(index)
    ivf = _ivf_or_none(index)
    if ivf is not None:
        ivf.cp.seed = seed
        ivf.cp.niter = max(ivf.cp.niter, 10)
    return index


def _trained(index, factory: str, d: int, sample: np.ndarray):
    if not index.is_trained:
        if len(sample) == 0:
            raise FactoryError(f"factory {factory!r} needs training vectors but the sample is empty")
        t0 = time.time()
        with _training_threads(len(sample)):
            train_in_blocks(index, np.ascontiguousarray(sample, dtype=np.float32))
        log.info("trained %s on %d vectors in %.1fs", factory, len(sample), time.time() - t0)
    return _shardable(index, factory, d)


@contextlib.contextmanager
def _training_threads(n: int) -> Iterator[None]:
    """BLAS distances, and one FAISS thread for a sample under ``ONE_THREAD_BELOW`` rows (all of them above)."""
    import faiss

    with blas_distances(), faiss_threads(1 if n < ONE_THREAD_BELOW else faiss.omp_get_max_threads()):
        yield


def _shardable(index, factory: str, d: int):
    """The trained index, without training-only state, once it is known to take ids and merge: every shard is a
    clone of it, filled on its own and merged with its siblings."""
    import faiss

    drop_pca_training_state(index)
    a, b = faiss.clone_index(index), faiss.clone_index(index)
    try:
        probe = np.zeros((1, d), np.float32)
        b.add_with_ids(probe, np.array([1], np.int64))
        a.merge_from(b, 0)
    except RuntimeError as e:
        raise FactoryError(f"factory {factory!r} cannot be sharded (add_with_ids + merge_from failed: {e}); "
                           "use Flat, IVF*, PQ or SQ factories") from e
    return index


def train_in_blocks(index, x: np.ndarray, block: int = 16_384) -> None:
    """``index.train(x)``, with an ``IndexPreTransform``'s transforms applied to ``x`` block by block. faiss's own
    ``IndexPreTransform::train`` does the same steps (train each untrained transform on the previous output,
    apply it, train the sub-index on the last output) but applies each transform in one GEMM over the whole
    sample, where OpenBLAS with 2 threads holds ~3x the output in work space. Measured, PCA88,IVF2048,SQ8 on
    131k x 768 with 2 threads: training peaks 300 MB above the sample with faiss's train, 160 MB in 16k-row
    blocks; the trained index is the same (tested)."""
    import faiss

    if not isinstance(index, faiss.IndexPreTransform):
        index.train(x)
        return
    index.index.train(train_transforms(index, x, block=block))
    index.is_trained = index.index.is_trained


def train_transforms(index, x: np.ndarray, *, block: int = 16_384, apply_last: bool = True) -> np.ndarray:
    """Train an ``IndexPreTransform``'s untrained transforms in order, each on the previous one's output
    (computed block by block); returns ``x`` through the whole chain (``apply_last``) or through all but the
    last transform."""
    n = index.chain.size()
    for i in range(n):
        vt = index.chain.at(i)
        if not vt.is_trained:
            vt.train(x)
        if i < n - 1 or apply_last:
            x = _apply([vt], x, block)
    return x


def _apply(chain, x: np.ndarray, block: int = 16_384) -> np.ndarray:
    for vt in chain:
        out = np.empty((len(x), vt.d_out), np.float32)
        for j in range(0, len(x), block):
            out[j:j + block] = vt.apply(x[j:j + block])
        x = out
    return x


@contextlib.contextmanager
def blas_distances(threshold: int = 20) -> Iterator[None]:
    """Brute-force distances through BLAS from ``threshold`` query rows on, while training. faiss 1.15 ships
    128,000: a k-means over fewer points takes its sequential kernel, ~12x slower at
    d <= 6 (measured, one thread: a 256-centroid k-means of 19.5k 4-d points 1.23 s vs 0.10 s), which is every
    sub-quantizer of an 8-bit PQ over 4-d sub-vectors: ``PQ46`` over 184 dims trained in 51 s vs 5.5 s. Wider
    k-means (the coarse quantizer, d >= 80) costs the same either way (measured)."""
    import faiss

    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = threshold
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = before


def _limit_opq_training(index) -> None:
    """OPQ's defaults dominate build time for no gain (``OPQ_NITER``, ``OPQ_POINTS``)."""
    import faiss

    if not isinstance(index, faiss.IndexPreTransform):
        return
    for i in range(index.chain.size()):
        vt = faiss.downcast_VectorTransform(index.chain.at(i))
        if isinstance(vt, faiss.OPQMatrix):
            vt.niter = min(vt.niter, OPQ_NITER)
            vt.max_train_points = min(vt.max_train_points, OPQ_POINTS)


def drop_pca_training_state(index) -> None:
    """A trained PCAMatrix keeps all d x d eigenvectors and the eigenvalues, which only training reads (``A`` and
    ``b`` do the transform): 2.4 MB at d=768, in every shard and in memory — 47 B/vector at 50k vectors."""
    import faiss

    if not isinstance(index, faiss.IndexPreTransform):
        return
    for i in range(index.chain.size()):
        vt = faiss.downcast_VectorTransform(index.chain.at(i))
        if isinstance(vt, faiss.PCAMatrix):
            vt.PCAMat.clear()
            vt.eigenvalues.clear()


def _ivf_or_none(index):
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def sample_vectors(source: EmbeddingSource, rows: np.ndarray) -> np.ndarray:
    return read_rows(source, rows, ("embedding",))["embedding"] if len(rows) else np.zeros((0, source.dim), np.float32)
