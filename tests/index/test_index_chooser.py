"""The measured ``auto`` choice: known answers on constructed data, budgets in real serialized bytes, operating
points that reproduce, everything seeded."""

from __future__ import annotations

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from index import operating_points as ops
from index.candidates import candidates_for
from index.chooser import choose
from index.factory import nlist_for
from index.ids import faiss_ids
from index.search import SearchIndex
from index.selfcheck import recall_at_k
from index.settings import BuildSettings
from index.train import train_empty_index
from pipeline.build_index_job import build_index
from tests.helpers_index import clustered, write_embeddings

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

BEAM = ["--runner=FnApiRunner"]
N = 12_000
NO_OPQ = dict(opq=False, min_seconds=600.0)  # every round-1 family, no OPQ round (not what is tested here)


def low_rank(n: int, seed: int = 0) -> np.ndarray:
    """64-d vectors with an 8-d latent: PCA to 16 dims keeps the signal, full-width codes spend bits on noise."""
    return clustered(n, 64, n_clusters=50, seed=seed, latent=8, noise=0.05)


def isotropic(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    """No preferred direction: every dimension PCA drops is lost signal."""
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def exact_ids(queries: np.ndarray, base: np.ndarray, k: int = 10) -> np.ndarray:
    return np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :k]


def assert_measured_best(choice) -> None:
    """The winner has the best measured recall of the table (up to the tie tolerance), within the latency target."""
    top = max(m.best.recall for m in choice.table if m.best)
    assert choice.winner.best.recall >= top - ops.RECALL_TOLERANCE
    assert choice.winner.best.p50_ms <= 5.0


def test_low_rank_data_chooses_dimension_reduction():
    x = low_rank(N + 300)
    budget = 30 * N
    choice = choose(x[:N], x[N:], n_full=N, max_memory=budget, max_query_ms=5.0, **NO_OPQ)
    families = {m.candidate.family for m in choice.table}
    assert {"sq8", "sq4", "pq4fs", "pq8"} <= families  # several widths and codes measured
    assert_measured_best(choice)
    winner = choice.winner.candidate
    assert winner.transform.startswith("PCA") and winner.width < 64, choice.why
    assert choice.factory.factory == f"{winner.transform},IVF{nlist_for(N)},{winner.codec}"
    # the table's recall is recall@10 against the exact neighbours (independent numpy reference)
    idx = train_empty_index(choice.factory.factory, 64, x[:N])
    idx.add_with_ids(x[:N], np.arange(N))
    ops.set_nprobe(idx, choice.winner.best.nprobe)
    found = idx.search(x[N:], 10)[1]
    assert recall_at_k(found, exact_ids(x[N:], x[:N]), 10) >= choice.winner.best.recall - 0.05
    assert any("chose" in line for line in choice.factory.reasoning)


def test_isotropic_data_keeps_every_dimension():
    x = isotropic(N + 300)
    choice = choose(x[:N], x[N:], n_full=N, max_memory=36 * N, max_query_ms=5.0, **NO_OPQ)
    assert any(m.candidate.transform for m in choice.table)  # a reduced candidate was measured ...
    assert_measured_best(choice)
    assert choice.winner.candidate.transform == "" and choice.winner.candidate.width == 32, choice.why  # ... and lost


def test_budget_is_respected_in_serialized_bytes():
    """Choose for 2N rows from an N-row sample, build the winner on all 2N: its real size fits the budget."""
    x = low_rank(2 * N + 300, seed=1)
    budget = 28 * 2 * N
    for c in candidates_for(2 * N, 64, budget, nlist_for(2 * N)):
        assert c.index_bytes(2 * N, 64, nlist_for(2 * N)) <= budget
    choice = choose(x[:N], x[2 * N:], n_full=2 * N, max_memory=budget, max_query_ms=5.0, **NO_OPQ)
    for m in choice.table:  # the byte model matches what faiss serializes (fast-scan lists pad a little more)
        assert m.sample_bytes == pytest.approx(m.sample_bytes_predicted, rel=0.1)
        assert m.bytes_per_vector * 2 * N <= budget
    idx = train_empty_index(choice.factory.factory, 64, x[:choice.factory.train_size])
    idx.add_with_ids(x[:2 * N], np.arange(2 * N))
    assert len(faiss.serialize_index(idx)) <= budget
    with pytest.raises(Exception, match="too small"):
        choose(x[:N], x[2 * N:], n_full=2 * N, max_memory=9 * 2 * N, max_query_ms=5.0, **NO_OPQ)


def test_choice_is_seeded_and_reproducible():
    x = isotropic(N + 300, seed=2)
    a = choose(x[:N], x[N:], n_full=N, max_memory=36 * N, max_query_ms=50.0, seed=3, **NO_OPQ)
    b = choose(x[:N], x[N:], n_full=N, max_memory=36 * N, max_query_ms=50.0, seed=3, **NO_OPQ)
    assert a.winner.factory == b.winner.factory
    assert [[p.recall for p in m.points] for m in a.table] == [[p.recall for p in m.points] for m in b.table]


def test_pick_rules():
    pts = [ops.OperatingPoint(1, 0.80, 0.1, 0.2), ops.OperatingPoint(2, 0.90, 0.2, 0.3),
           ops.OperatingPoint(4, 0.952, 0.4, 0.5), ops.OperatingPoint(8, 0.955, 0.8, 1.0)]
    assert ops.pick(pts, target_recall=0.85).nprobe == 2
    assert ops.pick(pts).nprobe == 4                      # within 0.005 of the best: no need for nprobe 8
    assert ops.pick(pts, max_latency_ms=0.3).nprobe == 2  # best within the bound
    assert ops.pick(pts, target_recall=0.99, max_latency_ms=1.0).nprobe == 4
    assert ops.pick(pts, max_latency_ms=0.01).nprobe == 1  # nothing is fast enough: the fastest
    with pytest.raises(ValueError):
        ops.pick([])


def test_manifest_operating_points_reproduce(tmp_path):
    x = clustered(N, 64, n_clusters=40, seed=4)
    write_embeddings(tmp_path / "emb.parquet", x, row_group_size=3000)
    root = str(tmp_path / "root")
    r = build_index(str(tmp_path / "emb.parquet"), root, BuildSettings(factory="PCA32,IVF64,SQ8", selfcheck_queries=200,
                                                                       target_recall=0.9, max_query_ms=50.0),
                    beam_args=BEAM)
    curve = r.manifest["operating_points"]
    assert curve["k"] == 10 and curve["queries"] == 200 and curve["points"][0]["nprobe"] == 1
    nprobes = [p["nprobe"] for p in curve["points"]]
    assert nprobes == sorted(nprobes) and r.manifest["nprobe"] == curve["chosen"]["nprobe"]
    assert r.manifest["selfcheck"]["recall_at_k"] == curve["chosen"]["recall"]

    # re-measured from the published files: recall exactly, latency within a generous factor
    table = pq.read_table(f"{r.path}/selfcheck.parquet")
    by_id = {f"img-{i:06d}": i for i in range(N)}
    q = x[[by_id[s] for s in table.column("image_id").to_pylist()]]
    truth = np.array(table.column("truth").to_pylist())
    names = np.array([f"img-{i:06d}" for i in range(N)])
    assert (faiss_ids(names[exact_ids(q, x)].reshape(-1)).reshape(truth.shape) == truth).all()  # exact truth
    idx = SearchIndex.open(root)
    for p in curve["points"]:
        idx.nprobe = p["nprobe"]
        assert recall_at_k(idx.search(q, 10).ids, truth, 10) == p["recall"]
        p50, _ = ops.batch1_latency(idx.index, q, 10)
        assert p50 < 20 * p["p50_ms"] + 1.0

    # a server picks its own point from the recorded curve
    fast = SearchIndex.open(root, max_latency_ms=0.0)
    assert fast.nprobe == min(curve["points"], key=lambda p: p["p50_ms"])["nprobe"]
    target = curve["points"][1]["recall"]
    picked = SearchIndex.open(root, target_recall=target)
    assert picked.nprobe <= curve["points"][1]["nprobe"] and picked.operating_point.recall >= target
    assert SearchIndex.open(root, target_recall=target, nprobe=3).nprobe == 3  # explicit nprobe wins
    old = {k: v for k, v in r.manifest.items() if k != "operating_points"}
    with pytest.raises(ValueError, match="no operating points"):
        SearchIndex.from_manifest(root, old, target_recall=0.9)


@pytest.mark.slow
def test_build_index_auto_measures_and_records_the_choice(tmp_path):
    n = 60_000  # above the exact-search size, so auto measures
    x = low_rank(n, seed=5)
    write_embeddings(tmp_path / "emb.parquet", x, row_group_size=10_000)
    root = str(tmp_path / "root")
    budget = 32 * n
    r = build_index(str(tmp_path / "emb.parquet"), root,
                    BuildSettings(max_memory=budget, selfcheck_queries=300, rows_per_unit=30_000, max_query_ms=5.0),
                    beam_args=BEAM)
    m = r.manifest
    ch = m["chooser"]
    assert m["factory"] == ch["winner"].replace(f"IVF{nlist_for(50_000)},", f"IVF{nlist_for(n)},")
    assert ch["sample_rows"] == 50_000 and ch["candidates"] and 0 < ch["fraction_of_build"] < 1
    assert m["factory"].startswith("PCA")                  # the low-rank answer, at full size too
    assert m["index_bytes"] <= budget                       # real serialized bytes (one shard)
    assert m["operating_points"]["chosen"]["p50_ms"] <= 5.0
    assert m["selfcheck"]["recall_at_k"] >= 0.7


def test_read_rows_returns_the_rows_asked_in_the_order_asked(tmp_path, monkeypatch):
    """Rows picked out of several files, row groups and decode batches land where they were asked for."""
    from index import source as src

    monkeypatch.setattr(src, "READ_BATCH", 70)  # batches that straddle row groups' picks
    x = isotropic(1000, 8, seed=6)
    write_embeddings(tmp_path / "a.parquet", x[:600], row_group_size=250)
    write_embeddings(tmp_path / "b.parquet", x[600:], start=600, row_group_size=128, fixed=False)
    source = src.EmbeddingSource.open([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")])
    rows = np.random.default_rng(0).choice(1000, 300, replace=False)
    got = src.read_rows(source, rows, ("embedding", "image_id"))
    assert np.array_equal(got["embedding"], x[rows]) and got["embedding"].flags["C_CONTIGUOUS"]
    assert got["image_id"] == [f"img-{i:06d}" for i in rows]


def test_cost_bound_stops_candidates_and_is_reported():
    """With no time to spare only the first candidate is measured; the rest are skipped, saying why."""
    x = low_rank(N + 300, seed=7)
    tight = choose(x[:N], x[N:], n_full=N, max_memory=30 * N, max_query_ms=5.0, cost_fraction=0.0, min_seconds=0.0)
    free = choose(x[:N], x[N:], n_full=N, max_memory=30 * N, max_query_ms=5.0, **NO_OPQ)
    assert len(tight.table) == 1 and tight.table[0].factory == free.table[0].factory
    assert len(tight.skipped) == len(free.table) - 1  # the other round-1 families (no PQ measured: no OPQ round)
    assert all("cost bound" in s for s in tight.skipped)
    assert not any("cost bound" in s for s in free.skipped)
    assert 0 < tight.cpu_s < free.cpu_s and tight.to_dict()["bound_s"] == 0.0
    assert any(line.startswith("cost:") for line in tight.factory.reasoning)


def test_candidates_that_cannot_win_are_pruned_unswept():
    """A candidate whose recall with every list probed is below the leader's is not swept, and cannot have won."""
    x = low_rank(N + 300, seed=8)
    choice = choose(x[:N], x[N:], n_full=N, max_memory=30 * N, max_query_ms=5.0, **NO_OPQ)
    pruned = [m for m in choice.table if m.pruned]
    assert pruned, [m.row() for m in choice.table]
    top = max(m.best.recall for m in choice.table if m.best)
    for m in pruned:
        assert m.points == [] and m.best is None and m.ceiling < top - ops.RECALL_TOLERANCE
    for m in choice.table:
        if m.best:  # a full scan recalls at least what any nprobe does
            assert m.ceiling is None or m.ceiling >= m.best.recall


def test_training_reuses_the_chooser_sample_when_it_is_large_enough(tmp_path):
    """One sample in memory for the choice and the training: the training rows are a prefix of the chooser's
    shuffled sample (its vectors a view, not a second read); the held-out queries are disjoint and seeded; a
    training set larger than the sample is drawn afresh."""
    from index.source import EmbeddingSource, read_rows
    from index.train import Sample, can_train_from, reused_sample, train_index

    x = isotropic(2000, 8, seed=8)
    write_embeddings(tmp_path / "a.parquet", x, row_group_size=300)
    source = EmbeddingSource.open([str(tmp_path / "a.parquet")])
    rows = np.random.default_rng(1).permutation(2000)[:1200]
    chooser_sample = Sample(rows, read_rows(source, rows)["embedding"])
    assert can_train_from(chooser_sample, source, 1000, 300) and not can_train_from(chooser_sample, source, 1500, 300)
    train_rows, query_rows, vectors = reused_sample(source, 1000, 300, 2, chooser_sample)
    assert np.array_equal(train_rows, rows[:1000]) and np.shares_memory(vectors, chooser_sample.vectors)
    assert np.array_equal(vectors, x[train_rows])
    assert len(query_rows) == 300 and not set(query_rows) & set(train_rows)
    assert np.array_equal(query_rows, reused_sample(source, 1000, 300, 2, chooser_sample)[1])
    _, reused_rows, reused_queries = train_index("IVF8,Flat", source, 1000, 300, seed=2, reuse=chooser_sample)
    assert np.array_equal(reused_rows, train_rows) and np.array_equal(reused_queries, query_rows)
    _, big_rows, big_queries = train_index("IVF8,Flat", source, 1500, 300, seed=2, reuse=chooser_sample)
    assert len(big_rows) == 1500 and not set(big_queries) & set(big_rows) and len(big_queries) == 300
