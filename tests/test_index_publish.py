"""Publishing: a concurrent reader sees the old version or the new one, never a mix; retention."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from index import layout, storage
from index.search import SearchIndex
from index.settings import BuildSettings
from pipeline.build_index_job import build_index
from tests.test_index import BEAM, numpy_topk, write_embeddings

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

D = 768



def test_concurrent_reader_sees_old_or_new_never_a_mix(tmp_path):
    rng = np.random.default_rng(0)
    data = {"A": rng.standard_normal((400, D)).astype(np.float32),
            "B": rng.standard_normal((600, D)).astype(np.float32)}
    q = rng.standard_normal((3, D)).astype(np.float32)
    expected = {}
    for name, x in data.items():
        ids = write_embeddings(tmp_path / name / "emb.parquet", x, model=f"model-{name}")
        top, _ = numpy_topk(q, x, 5)
        expected[f"model-{name}"] = (len(x), np.array(ids)[top].tolist())
    root = str(tmp_path / "root")
    build_index(str(tmp_path / "A"), root, BuildSettings(shards=2, selfcheck_queries=10, keep_versions=1),
                beam_args=BEAM)

    stop = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                idx = SearchIndex.open(root)
                count, want = expected[idx.manifest["model"]]
                assert idx.ntotal == count == idx.manifest["count"]
                assert idx.search(q, 5).image_ids == want  # results of exactly one dataset
                seen.append(idx.version)
            except BaseException as e:  # surfaced in the main thread
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    published = []
    try:
        for name in ("B", "A", "B"):  # keep_versions=1: each publish deletes the previous live version
            published.append(build_index(str(tmp_path / name), root,
                                         BuildSettings(shards=3, selfcheck_queries=10, keep_versions=1),
                                         beam_args=BEAM).version)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[0]
    assert len(seen) >= 4 and len(set(seen)) >= 2, seen
    assert layout.list_versions(root) == [published[-1]]


def test_current_is_replaced_atomically(tmp_path):
    root = str(tmp_path / "root")
    names = [layout.new_version_name() for _ in range(2)]
    for v in names:
        layout.write_manifest(root, v, {"version": v})
    stop = threading.Event()
    bad: list[str | None] = []

    def reader() -> None:
        while not stop.is_set():
            v = layout.read_current(root)
            if v not in names:
                bad.append(v)

    layout.publish(root, names[0])
    t = threading.Thread(target=reader)
    t.start()
    for i in range(300):
        layout.publish(root, names[i % 2])
    stop.set()
    t.join()
    assert not bad
    assert not [p for p in Path(root).iterdir() if p.name.startswith(".")]  # no temp files left


def test_retention_keeps_last_k_and_never_the_live_one(tmp_path):
    import datetime as dt

    root = str(tmp_path / "root")
    now = dt.datetime.now(dt.UTC)
    complete = [layout.new_version_name(now - dt.timedelta(hours=h)) for h in (50, 40, 30, 20, 10)]
    for v in complete:
        layout.write_manifest(root, v, {"version": v})
    stale = layout.new_version_name(now - dt.timedelta(hours=30))   # crashed build, long ago
    fresh = layout.new_version_name(now - dt.timedelta(minutes=5))  # a build that may still be running
    for v in (stale, fresh):
        storage.write_bytes(storage.join(layout.version_dir(root, v), "trained.index"), b"partial")
    layout.publish(root, complete[0])  # an old version is live (e.g. rolled back)
    deleted = layout.apply_retention(root, keep=2)
    assert sorted(deleted) == sorted([complete[1], complete[2], stale])
    assert layout.list_versions(root) == sorted([complete[0], complete[3], complete[4], fresh])
    assert layout.read_current(root) == complete[0]
    # with the nightly job's lock held, incomplete versions of any age may go; the live one still stays
    layout.apply_retention(root, keep=1, incomplete_older_than_s=0)
    assert layout.list_versions(root) == [complete[0], complete[4]]
    assert json.loads(Path(layout.manifest_url(root, complete[0])).read_text())["version"] == complete[0]
    with pytest.raises(ValueError):
        layout.apply_retention(root, keep=0)


def test_object_store_root_via_fsspec(tmp_path):
    """An fsspec URL root (memory://, standing in for gs:// or s3://): single-object writes, same layout."""
    x = np.random.default_rng(7).standard_normal((300, 32)).astype(np.float32)
    names = write_embeddings(tmp_path / "emb.parquet", x)
    root = "memory://ldot-test-index"
    try:
        first = build_index(str(tmp_path / "emb.parquet"), root, BuildSettings(shards=2, selfcheck_queries=10),
                            beam_args=BEAM)
        second = build_index(str(tmp_path / "emb.parquet"), root,
                             BuildSettings(shards=2, selfcheck_queries=10, keep_versions=1), beam_args=BEAM)
        assert layout.read_current(root) == second.version and layout.list_versions(root) == [second.version]
        assert first.version != second.version
        idx = SearchIndex.open(root)
        top, _ = numpy_topk(x[:3], x, 5)
        assert idx.search(x[:3], 5).image_ids == np.array(names)[top].tolist()
    finally:
        storage.rm(root)
