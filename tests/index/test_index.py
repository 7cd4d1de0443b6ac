"""index package: ids, factory choice, exact Flat builds, stability, integrity, IVF-PQ recall self-check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from index import layout
from index.errors import (
    DuplicateImageIdError,
    EmbeddingsError,
    FactoryError,
    IdCollisionError,
    IndexIntegrityError,
    ModelMismatchError,
    NoLiveVersionError,
    RecallBelowFloorError,
)
from index.factory import choose_factory, parse_memory
from index.ids import check_unique, faiss_id, faiss_ids, shard_of
from index.search import SearchIndex
from index.selfcheck import recall_at_k
from index.settings import BuildSettings
from index.train import draw_rows
from pipeline.build_index_job import build_index
from tests.helpers_index import BEAM, clustered, numpy_topk, write_embeddings

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

D = 768


# ---- ids -----------------------------------------------------------------------------------------------------------

def test_faiss_id_is_a_stable_63_bit_hash():
    assert faiss_id("img-000000") == faiss_id("img-000000")
    # golden values: a change here breaks every published index's ids (nightly rebuilds must keep ids)
    assert faiss_id("img-000000") == 5812239569905124530
    assert faiss_id("") == 1726961232712789864
    ids = faiss_ids(f"x{i}" for i in range(20_000))
    assert ids.dtype == np.int64 and (ids >= 0).all() and len(np.unique(ids)) == len(ids)
    shards = [shard_of(f"x{i}", 7) for i in range(7_000)]
    assert np.bincount(shards).min() > 800  # roughly uniform
    assert all(shard_of(f"x{i}", 7) == faiss_id(f"x{i}") % 7 for i in range(100))
    with pytest.raises(ValueError):
        shard_of("x", 0)


def test_check_unique_tells_collisions_from_duplicates():
    check_unique(np.array([1, 2, 3]), ["a", "b", "c"])
    with pytest.raises(IdCollisionError, match="'a' and 'z'"):
        check_unique(np.array([5, 2, 5]), ["a", "b", "z"])
    with pytest.raises(DuplicateImageIdError, match="'b'"):
        check_unique(np.array([1, 2, 2]), ["a", "b", "b"])


# ---- factory choice --------------------------------------------------------------------------------------------------

def test_draw_rows_is_seeded_disjoint_and_leaves_rows_to_train_on():
    train, queries = draw_rows(100_000, 5000, 1000, seed=3)
    assert len(train) == 5000 and len(queries) == 1000 and not set(train) & set(queries)
    assert train.max() > 50_000  # a random sample, not a prefix
    again = draw_rows(100_000, 5000, 1000, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(queries, again[1])
    assert not np.array_equal(train, draw_rows(100_000, 5000, 1000, seed=4)[0])
    small_train, small_queries = draw_rows(300, 5000, 1000, seed=0)  # fewer rows than the default query count
    assert len(small_queries) == 150 and len(small_train) == 150 and not set(small_train) & set(small_queries)


def test_auto_factory_walks_flat_ivf_sq_pq_with_budget():
    assert parse_memory("4G") == 4 << 30 and parse_memory("1.5MiB") == int(1.5 * (1 << 20))
    assert choose_factory(10_000, D, "4G").factory == "IDMap,Flat"
    c = choose_factory(200_000, D, "4G")
    assert c.factory == "IVF2048,Flat" and c.nlist == 2048 and 30 * 2048 <= c.train_size <= 256 * 2048
    assert choose_factory(1_000_000, D, "1G").factory == "IVF4096,SQ8"
    c = choose_factory(1_000_000, D, "100M")
    assert c.factory == "OPQ64,IVF4096,PQ64np" and c.opq and c.est_bytes <= 100 << 20
    assert any("OPQ" in line for line in c.reasoning)
    c = choose_factory(1_000_000, D, "200M")
    assert c.kind == "ivf-pq" and c.pq_m == 128 and not c.opq
    c = choose_factory(100_000_000, D, "16G")
    assert c.quantizer == "hnsw32" and "_HNSW32" in c.factory and c.kind == "ivf-pq"
    for n in (60_000, 1_000_000, 50_000_000):  # nlist within the 4-16*sqrt(N) guidance (power of two rounding)
        nlist = choose_factory(n, D, None).nlist
        assert 2 * np.sqrt(n) <= nlist <= 16 * np.sqrt(n)
    with pytest.raises(FactoryError, match="too small"):
        choose_factory(1_000_000, D, "1M")


# ---- builds ----------------------------------------------------------------------------------------------------------

def test_flat_build_equals_numpy_topk_exactly(tmp_path):
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1200, D)).astype(np.float32)
    x2 = rng.standard_normal((800, D)).astype(np.float32)
    ids1 = write_embeddings(tmp_path / "emb" / "part-0.parquet", x1, 0, fixed=True)
    ids2 = write_embeddings(tmp_path / "emb" / "part-1.parquet", x2, 1200, fixed=False)  # list<float32> accepted
    root = str(tmp_path / "root")
    result = build_index([str(tmp_path / "emb")], root,
                         BuildSettings(shards=3, selfcheck_queries=50, rows_per_unit=600), beam_args=BEAM)
    m = result.manifest
    assert result.published and layout.read_current(root) == result.version
    assert m["factory"] == "IDMap,Flat" and m["dim"] == D and m["metric"] == "inner_product"
    assert m["count"] == 2000 and sum(s["count"] for s in m["shards"]) == 2000 and len(m["shards"]) == 3
    assert m["model"] == "ldot-test-model" and m["selfcheck"]["recall_at_k"] == 1.0
    assert [s["path"] for s in m["sources"]] == sorted(str(p) for p in (tmp_path / "emb").glob("*.parquet"))
    assert all(len(s["sha256"]) == 64 and s["idmap"]["sha256"] for s in m["shards"])
    assert m["build_seconds"] > 0 and m["bytes_per_vector"] >= 4 * D and m["factory_choice"]["reasoning"]

    x = np.concatenate([x1, x2])
    names = np.array(ids1 + ids2)
    q = rng.standard_normal((25, D)).astype(np.float32)
    idx = SearchIndex.open(root)
    res = idx.search(q, 10)
    top, scores = numpy_topk(q, x, 10)
    assert res.image_ids == names[top].tolist()
    assert (res.ids == faiss_ids(names[top].reshape(-1)).reshape(top.shape)).all()
    np.testing.assert_allclose(res.scores, scores, rtol=1e-5, atol=1e-4)
    assert res.uris[0][0] == f"file:///photos/{names[top[0, 0]]}.jpg"
    # k larger than the index: padded with -1 / ""
    small = idx.search(q[:1], 2500)
    assert (small.ids[0, 2000:] == -1).all() and small.image_ids[0][-1] == "" and np.isneginf(small.scores[0, -1])


def test_ids_and_shards_stable_across_rebuilds(tmp_path):
    x = np.random.default_rng(1).standard_normal((900, D)).astype(np.float32)
    ids = write_embeddings(tmp_path / "emb.parquet", x, row_group_size=200)
    root = str(tmp_path / "root")
    a = build_index(str(tmp_path / "emb.parquet"), root,
                    BuildSettings(shards=4, selfcheck_queries=20, rows_per_unit=400), beam_args=BEAM)
    b = build_index(str(tmp_path / "emb.parquet"), root,
                    BuildSettings(shards=4, selfcheck_queries=20, rows_per_unit=200), beam_args=BEAM)
    assert a.version != b.version
    for sa, sb in zip(a.manifest["shards"], b.manifest["shards"], strict=True):
        assert sa["count"] == sb["count"] and sa["idmap"]["sha256"] == sb["idmap"]["sha256"]
    expected = {i: (faiss_id(i), shard_of(i, 4)) for i in ids}
    for s in a.manifest["shards"]:
        table = pq.read_table(os.path.join(a.path, s["idmap"]["path"]))
        for fid, image_id in zip(table.column("faiss_id").to_pylist(), table.column("image_id").to_pylist(),
                                 strict=True):
            assert expected[image_id] == (fid, s["shard"])


def test_duplicate_ids_and_mixed_models_are_refused(tmp_path, monkeypatch):
    x = np.random.default_rng(2).standard_normal((300, 16)).astype(np.float32)
    dup = [f"img-{i}" for i in range(299)] + ["img-7"]
    write_embeddings(tmp_path / "dup.parquet", x, ids=dup)
    root = str(tmp_path / "root")
    with pytest.raises(DuplicateImageIdError, match="img-7"):
        build_index(str(tmp_path / "dup.parquet"), root, BuildSettings(shards=2, selfcheck_queries=10), beam_args=BEAM)
    assert layout.read_current(root) is None and layout.list_versions(root) == []

    # a genuine 63-bit collision cannot be found by brute force in a test: force one through the hash
    import index.shards

    real = index.shards.faiss_ids
    monkeypatch.setattr(index.shards, "faiss_ids",
                        lambda names: np.array([123 if n in ("img-000001", "img-000002") else v
                                                for n, v in zip(names, real(names), strict=True)], np.int64))
    write_embeddings(tmp_path / "ok.parquet", x)
    with pytest.raises(IdCollisionError, match="img-000001"):
        build_index(str(tmp_path / "ok.parquet"), root, BuildSettings(shards=2, selfcheck_queries=10), beam_args=BEAM)
    monkeypatch.undo()

    write_embeddings(tmp_path / "mixed" / "a.parquet", x[:100], 0, model="ldot-a")
    write_embeddings(tmp_path / "mixed" / "b.parquet", x[100:], 100, model="ldot-b")
    with pytest.raises(ModelMismatchError, match="ldot-a"):
        build_index(str(tmp_path / "mixed"), root, beam_args=BEAM)
    with pytest.raises(EmbeddingsError, match="not found"):
        build_index(str(tmp_path / "nope"), root, beam_args=BEAM)


def test_tampered_or_missing_shard_is_refused(tmp_path):
    x = np.random.default_rng(3).standard_normal((400, D)).astype(np.float32)
    write_embeddings(tmp_path / "emb.parquet", x)
    root = str(tmp_path / "root")
    with pytest.raises(NoLiveVersionError):
        SearchIndex.open(root)
    r = build_index(str(tmp_path / "emb.parquet"), root, BuildSettings(shards=2, selfcheck_queries=10), beam_args=BEAM)
    SearchIndex.open(root)
    shard = Path(r.path) / r.manifest["shards"][1]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the middle of the codes
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match="checksum"):
        SearchIndex.open(root)
    shard.unlink()
    with pytest.raises(IndexIntegrityError, match="missing"):
        SearchIndex.open(root)
    idmap = Path(r.path) / r.manifest["shards"][0]["idmap"]["path"]
    idmap.write_bytes(idmap.read_bytes()[:-10])
    with pytest.raises(IndexIntegrityError):
        SearchIndex.from_manifest(root, {**r.manifest, "shards": r.manifest["shards"][:1]})


def test_ivfpq_on_clustered_data_meets_its_recorded_recall_and_floor_guard(tmp_path):
    n = 12_000
    x = clustered(n, D, n_clusters=40, seed=4)
    write_embeddings(tmp_path / "emb.parquet", x, row_group_size=2000)
    root = str(tmp_path / "root")
    with pytest.raises(RecallBelowFloorError) as info:  # PQ cannot reach recall 0.999: built, not published
        build_index(str(tmp_path / "emb.parquet"), root,
                    BuildSettings(shards=2, factory="IVF64,PQ48np", min_recall=0.999, selfcheck_queries=200,
                                  rows_per_unit=4000, target_recall=0.9), beam_args=BEAM)
    err = info.value
    assert layout.read_current(root) is None and layout.is_complete(root, err.version)
    m = err.manifest
    sc = m["selfcheck"]
    assert m["factory"] == "IVF64,PQ48np" and not sc["passed"] and sc["queries"] == 200
    assert 1 <= m["nprobe"] <= 64 and m["operating_points"]["points"][0]["nprobe"] == 1
    assert m["code_bytes_per_vector"] == 48 + 8 and m["bytes_per_vector"] < 4 * D / 4
    assert sc["recall_at_k"] >= 0.4, sc  # clustered data: PQ48 keeps many true neighbours

    layout.publish(root, err.version)  # the guard hook: publish later, explicitly
    idx = SearchIndex.open(root)
    assert idx.nprobe == m["nprobe"] and idx.ntotal == n
    # the recorded figure is reproducible from the published files ...
    table = pq.read_table(Path(root) / "versions" / err.version / "selfcheck.parquet")
    by_id = {f"img-{i:06d}": i for i in range(n)}
    q = x[[by_id[s] for s in table.column("image_id").to_pylist()]]
    truth = np.array(table.column("truth").to_pylist())
    top, _ = numpy_topk(q, x, 10)
    assert (faiss_ids(np.array([f"img-{i:06d}" for i in range(n)])[top].reshape(-1)).reshape(top.shape)
            == truth).all()  # ground truth really is exact
    found = idx.search(q, 10).ids
    assert recall_at_k(found, truth, 10) == pytest.approx(sc["recall_at_k"])
    # ... and holds for fresh queries from the same distribution
    fresh = clustered(200, D, n_clusters=40, seed=4, rng=np.random.default_rng(9))  # same clusters, new points
    top, _ = numpy_topk(fresh, x, 10)
    exact_ids = faiss_ids(np.array([f"img-{i:06d}" for i in range(n)])[top].reshape(-1)).reshape(top.shape)
    assert recall_at_k(idx.search(fresh, 10).ids, exact_ids, 10) >= sc["recall_at_k"] - 0.1


def test_build_without_publish_then_publish(tmp_path):
    x = np.random.default_rng(5).standard_normal((300, 32)).astype(np.float32)
    write_embeddings(tmp_path / "emb.parquet", x)
    root = str(tmp_path / "root")
    first = build_index(str(tmp_path / "emb.parquet"), root, BuildSettings(selfcheck_queries=10), beam_args=BEAM)
    second = build_index(str(tmp_path / "emb.parquet"), root, BuildSettings(selfcheck_queries=10, publish=False),
                         beam_args=BEAM)
    assert not second.published and layout.read_current(root) == first.version
    assert json.loads((Path(second.path) / "manifest.json").read_text())["version"] == second.version
    assert SearchIndex.open(root, version=second.version).version == second.version
    layout.publish(root, second.version, keep_versions=1)
    assert layout.read_current(root) == second.version and layout.list_versions(root) == [second.version]
    with pytest.raises(NoLiveVersionError):
        layout.publish(root, "20990101T000000.000000Z-abcdef")
