"""``--factory auto`` by measurement: build each candidate family on a seeded sample, tune it, keep the best.

    sample      seeded random rows (N/10, 50k..200k), shuffled; held-out queries drawn with them
    truth       exact inner-product top-k of the queries over the sample (``faiss.knn``)
    round 1     every family of ``index.candidates`` that fits the budget, cheapest to train first
    round 2     the best PQ family again with a learned OPQ rotation (8 alternations on <= 16k rows)
    per family  (``index.trial``) train its codes on the sample (one shared PCA and coarse k-means, nlist by
                the same 4·√N rule as the final index), add the sample, measure its ceiling: recall@k with every
                list probed
    sweeps      highest ceiling first: a family whose ceiling is below the leader's recall cannot win and is
                pruned; the others sweep nprobe (``index.operating_points.sweep``): recall@k and batch-1
                single-thread latency on 100 queries, extrapolated to N
    winner      the best recall@k whose extrapolated p50 is within ``max_query_ms`` and whose bytes fit;
                ties (within 0.005 recall) go to the smaller one

Why measure: the right code depends on the spectrum of the data. An exact low-dimensional latent makes PCA to that
width with 8-bit scalars nearly lossless while PQ over the full width is capped well below; a slowly decaying
spectrum (real text embeddings) spreads the signal so width matters more than bits. A fixed "largest code that
fits" rule is right for one and wrong for the other.

Latency extrapolation: a probe scans N/nlist codes at full size vs n/nlist_s in the sample, and the coarse
quantizer holds nlist vs nlist_s centroids; the sample's latency is scaled by the larger of the two ratios (an
upper bound). The final index then measures its own curve (``index.build`` self-check), so the served point obeys
``max_query_ms`` for real.

Cost bound, in CPU seconds of the chooser (one FAISS thread throughout, so CPU time is its work; wall time on a
shared machine is mostly the neighbours'): every candidate after the first starts only while the chooser has
spent less than ``cost_fraction`` (0.3) of the projected final build of the current leader (its training scaled
to the final training size, shared PCA and k-means included, plus its add time scaled to N), or less than
``min_seconds`` (30): small builds take seconds, and the bound must still leave room for the families worth
measuring. So the chooser costs at most max(min_seconds, 0.3 x projected build) + one candidate; skipped
candidates are listed with the reason. Cost, bound and wall time are in the reasoning; ``build_index`` records the
wall fraction of the whole build (measured, bench.index on a shared 2-core machine: 0.29 at 300k x 768; at 20-50k
rows, where the whole build takes about a minute, the floor dominates: 0.5-0.7).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from core.threads import faiss_threads
from index.candidates import Candidate, candidates_for
from index.errors import FactoryError
from index.factory import FLAT_MAX, ID_BYTES, FactoryChoice, fmt_bytes, nlist_for
from index.operating_points import RECALL_TOLERANCE
from index.train import Sample
from index.trial import K, Measured, SampleSpace, build, candidate_train_size, sweep_into

log = logging.getLogger(__name__)

SAMPLE_MIN, SAMPLE_MAX = 50_000, 200_000  # rows: N/10 within these bounds
CHOOSER_QUERIES = 500
COST_FRACTION = 0.3     # of the projected final build, that the candidates after the first may cost
MIN_SECONDS = 30.0      # ... or this many CPU seconds, for small builds where the fraction is seconds
OPQ_REACH = 0.1         # OPQ is tried when the best PQ family's ceiling is within this of the leader's recall: the
                        # most it added over PCAR in our measurements is 0.05 (MiniLM 20k, PQ46 over 184 dims)


@dataclasses.dataclass
class Choice:
    factory: FactoryChoice
    winner: Measured
    table: list[Measured]
    skipped: list[str]
    seconds: float
    sample_rows: int
    queries: int
    why: str
    bound_s: float                  # CPU seconds the candidates after the first were started within
    cpu_s: float                    # CPU seconds of the whole choice (one FAISS thread)

    def to_dict(self) -> dict[str, Any]:
        return {"winner": self.winner.factory, "why": self.why, "seconds": self.seconds, "cpu_s": self.cpu_s,
                "bound_s": self.bound_s,
                "sample_rows": self.sample_rows, "queries": self.queries, "k": K,
                "candidates": [m.row() for m in self.table], "skipped": self.skipped}


def exact_fits(n: int, d: int, budget: int | None) -> bool:
    """Small sets that fit as raw floats are searched exactly (``index.factory``'s first rule): nothing to measure."""
    return n <= FLAT_MAX and (budget is None or n * (4 * d + ID_BYTES) <= budget)


def sample_size(n: int) -> int:
    return min(n, max(SAMPLE_MIN, min(SAMPLE_MAX, n // 10)))


def choose(sample: np.ndarray, queries: np.ndarray, *, n_full: int, max_memory: int | None,
           max_query_ms: float, train_per_list: int = 64, metric: str = "ip", seed: int = 0,
           cost_fraction: float = COST_FRACTION, min_seconds: float = MIN_SECONDS, opq: bool = True,
           echo: Callable[[str], None] | None = None) -> Choice:
    """Measure the candidates for ``n_full`` vectors on ``sample`` (rows in random order) with held-out
    ``queries``; return the winner as a ``FactoryChoice`` for the full build, with the table and the reasons.

    One FAISS thread throughout. Measured reason: a candidate's work is many small parallel regions (one k-means
    per sub-quantizer, searches of a few lists), where OpenMP threads wait on each other; on this 2-core machine,
    shared, ``PCAR152,IVF256,PQ76x4fs`` on 19.5k rows took 37.6 s with 2 threads and 1.5 s with one."""
    with faiss_threads(1):
        return _choose(sample, queries, n_full=n_full, max_memory=max_memory, max_query_ms=max_query_ms,
                       train_per_list=train_per_list, metric=metric, seed=seed, cost_fraction=cost_fraction,
                       min_seconds=min_seconds, opq=opq, say=echo or (lambda m: log.info("%s", m)))


def _choose(sample: np.ndarray, queries: np.ndarray, *, n_full: int, max_memory: int | None, max_query_ms: float,
            train_per_list: int, metric: str, seed: int, cost_fraction: float, min_seconds: float, opq: bool,
            say: Callable[[str], None]) -> Choice:
    import faiss

    t_start, cpu_start = time.time(), time.process_time()
    d = sample.shape[1]
    nlist_full = nlist_for(n_full)
    cands = candidates_for(n_full, d, max_memory, nlist_full)
    if not cands:
        raise FactoryError(f"memory budget {fmt_bytes(max_memory or 0)} is too small for {n_full:,} vectors of dim "
                           f"{d}: no candidate fits. Raise --max-memory or shard across machines.")
    fmetric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    truth = faiss.knn(np.ascontiguousarray(queries), np.ascontiguousarray(sample), K, metric=fmetric)[1]
    budget_s = float("inf")  # set once a candidate has a point within the latency target
    nlist = nlist_for(len(sample))
    c0 = time.process_time()
    space = SampleSpace(sample, nlist, min(len(sample), nlist * train_per_list), min(c.width for c in cands), seed)
    space_s = time.process_time() - c0
    table: list[Measured] = []
    skipped: list[str] = []
    train_rows = min(len(sample), nlist * train_per_list)

    def projected_build(m: Measured) -> float:
        """The final build's FAISS work if ``m`` wins: its training scaled to the final training size, shared PCA
        and k-means included, plus its add time scaled to N."""
        train_full = candidate_train_size(m.candidate, n_full, nlist_full, train_per_list)
        shared = 0.0 if m.candidate.transform.startswith("OPQ") else space_s
        return (shared + m.train_s) * train_full / max(1, train_rows) + m.add_s * n_full / len(sample)

    def leader() -> Measured | None:
        ranked = [m for m in table if m.best]
        return max(ranked, key=lambda m: m.best.recall) if ranked else None

    def build_all(cs: list[Candidate]) -> list[tuple[Any, Measured]]:
        nonlocal budget_s
        built: list[tuple[Any, Measured]] = []
        for c in cs:
            spent = time.process_time() - cpu_start
            if (table or built) and spent > budget_s:
                skipped.append(f"{c.factory(nlist_full)}: cost bound reached ({spent:.0f} CPU s > {budget_s:.0f})")
                continue
            index, m = build(c, sample, queries, truth, n_full=n_full, d=d, nlist_full=nlist_full,
                             train_per_list=train_per_list, metric=metric, seed=seed, space=space)
            if max_memory is not None and m.bytes_per_vector * n_full > max_memory:
                skipped.append(f"{m.factory}: serializes to {m.sample_bytes / m.sample_bytes_predicted:.3f}x the "
                               f"byte model, {fmt_bytes(m.bytes_per_vector * n_full)} at full size is over budget")
                continue
            if not built and not table:  # until a leader is known, the bound follows the first family's build
                budget_s = max(min_seconds, cost_fraction * projected_build(m))
            built.append((index, m))
        return built

    def sweep_all(built: list[tuple[Any, Measured]]) -> None:
        """Highest ceiling first, so a leader is found early and candidates that cannot reach it are pruned."""
        nonlocal budget_s
        for index, m in sorted(built, key=lambda b: -b[1].ceiling):
            top = leader()
            if top and m.ceiling < top.best.recall - RECALL_TOLERANCE:
                m.pruned = True
            else:
                sweep_into(m, index, queries, truth, n=len(sample), n_full=n_full, nlist_full=nlist_full,
                           max_query_ms=max_query_ms)
            table.append(m)
            top = leader()
            if top:  # the bound follows the build the leader would cost
                budget_s = max(min_seconds, cost_fraction * projected_build(top))
            say(f"  measured {m.factory:<28} {m.bytes_per_vector:7.1f} B/vec  " + (
                f"pruned: recall@{K} {m.ceiling:.4f} with every list probed" if m.pruned else
                f"recall@{K} {m.best.recall:.4f} at nprobe {m.best.nprobe} ({m.best.p50_ms:.3f} ms)" if m.best
                else f"no point within {max_query_ms} ms") + f"  [{m.seconds:.1f}s]")

    sweep_all(build_all(cands))
    pq_rows = [m for m in table if m.candidate.family.startswith("pq")]
    best_pq = max(pq_rows, key=lambda m: m.ceiling) if pq_rows else None
    top = leader()
    if best_pq and opq and top and best_pq.ceiling < top.best.recall - OPQ_REACH:
        skipped.append(f"{best_pq.candidate.with_opq().factory(nlist_full)}: {best_pq.factory} reaches "
                       f"{best_pq.ceiling:.4f} with every list probed, more than {OPQ_REACH} below the leader's "
                       f"{top.best.recall:.4f}: a learned rotation does not close that gap")
    elif best_pq and opq:
        sweep_all(build_all([best_pq.candidate.with_opq()]))

    ok = [m for m in table if m.best is not None]
    if not ok:
        raise FactoryError(f"no candidate reaches a p50 latency of {max_query_ms} ms at batch 1 on one thread "
                           f"(fastest: {min(p.p50_ms for m in table for p in m.points):.2f} ms): raise "
                           "--max-query-ms or --max-memory")
    top = max(m.best.recall for m in ok)
    tied = [m for m in ok if m.best.recall >= top - RECALL_TOLERANCE]
    winner = min(tied, key=lambda m: m.bytes_per_vector)  # not by latency: that would make the choice noisy
    rivals = sorted((m for m in ok if m is not winner), key=lambda m: -m.best.recall)
    why = (f"{winner.factory}: best recall@{K} within {max_query_ms} ms ({winner.best.recall:.4f} at nprobe "
           f"{winner.best.nprobe}, {winner.best.p50_ms:.3f} ms extrapolated to {n_full:,} rows)")
    if len(tied) > 1:
        why += f"; the smallest of {len(tied)} within {RECALL_TOLERANCE} recall"
    if rivals:
        r = rivals[0]
        why += f"; next {r.factory} {r.best.recall:.4f} ({r.best.recall - winner.best.recall:+.4f})"
    seconds, cpu_s = time.time() - t_start, time.process_time() - cpu_start
    c = winner.candidate
    final_factory = c.factory(nlist_full)
    train_size = candidate_train_size(c, n_full, nlist_full, train_per_list)
    reasoning = [
        f"{n_full:,} vectors of dim {d}, memory budget {fmt_bytes(max_memory) if max_memory else 'unlimited'}, "
        f"latency target {max_query_ms} ms (batch 1, one thread); measured {len(table)} candidate(s) on a seeded "
        f"sample of {len(sample):,} rows with {len(queries)} held-out queries and exact top-{K} in {seconds:.0f}s",
        *[f"  {m.factory:<30} {m.bytes_per_vector:7.1f} B/vector  " + (
            f"recall@{K} {m.best.recall:.4f} nprobe {m.best.nprobe} p50 {m.best.p50_ms:.3f} ms" if m.best
            else f"pruned: recall@{K} {m.ceiling:.4f} with every list probed" if m.pruned
            else "too slow") for m in table],
        *[f"  skipped {s}" for s in skipped],
        f"cost: {cpu_s:.0f} CPU s ({seconds:.0f}s wall); bound {budget_s:.0f} CPU s = max({min_seconds:.0f}, "
        f"{cost_fraction} x the winner's projected build {projected_build(winner):.0f}): candidates after the first "
        "start only within it",
        f"chose {why}",
        f"nlist = {nlist_full} (power of two nearest 4*sqrt(N)); train on {train_size:,} vectors",
    ]
    pq_m = int(c.codec[2:].split("x")[0].rstrip("np")) if c.codec.startswith("PQ") else None
    choice = FactoryChoice(
        factory=final_factory, kind=f"ivf-{c.family}", nlist=nlist_full, pq_m=pq_m,
        opq=c.transform.startswith("OPQ"), quantizer="hnsw32" if "_HNSW" in final_factory else "flat",
        est_bytes=c.index_bytes(n_full, d, nlist_full), bytes_per_vector=c.code_bytes + ID_BYTES,
        train_size=train_size, reasoning=reasoning)
    return Choice(choice, winner, table, skipped, seconds, len(sample), len(queries), why, budget_s, cpu_s)


def choose_for_source(source, max_memory: int | None, max_query_ms: float, *, train_per_list: int = 64,
                      metric: str = "ip", seed: int = 0,
                      echo: Callable[[str], None] | None = None) -> tuple[Choice, Sample]:
    """``choose`` on a seeded random sample of an ``EmbeddingSource`` (rows shuffled: a candidate trains on a
    prefix), with held-out queries drawn with it. Returns the sample too: the final training reuses it
    (``index.train.train_index``) when it holds enough rows, rather than reading a second one."""
    from index.source import read_rows
    from index.train import draw_rows

    say = echo or (lambda m: log.info("%s", m))
    rows, query_rows = draw_rows(source.rows, sample_size(source.rows), CHOOSER_QUERIES, seed + 1)
    say(f"auto: measuring candidates on {len(rows):,} sampled rows, {len(query_rows)} held-out queries")
    # read in shuffled order (read_rows returns rows in the order asked): no shuffled copy of the sample
    rows = rows[np.random.default_rng(seed).permutation(len(rows))]
    sample = Sample(rows, read_rows(source, rows, ("embedding",))["embedding"])
    queries = read_rows(source, query_rows, ("embedding",))["embedding"]
    choice = choose(sample.vectors, queries, n_full=source.rows, max_memory=max_memory, max_query_ms=max_query_ms,
                    train_per_list=train_per_list, metric=metric, seed=seed, echo=say)
    return choice, sample
