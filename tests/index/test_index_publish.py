"""Publishing: a concurrent reader sees the old version or the new one, never a mix; retention, its order (seq) and
its exclusion from publish (the root lock, and without one the never-newer-than-live rule)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from index import layout, storage
from index.discard import discard_incomplete_version
from index.errors import IndexIntegrityError, NoLiveVersionError
from index.search import SearchIndex
from index.settings import BuildSettings
from index.shards import done_url
from pipeline.build_index_job import build_index
from tests.helpers_index import BEAM, numpy_topk, write_embeddings

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


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[str, str]:
    """(root, version): one real small version whose folder the tests below clone under other names."""
    tmp = tmp_path_factory.mktemp("built")
    write_embeddings(tmp / "emb.parquet", np.random.default_rng(1).standard_normal((200, 16)).astype(np.float32))
    root = str(tmp / "root")
    result = build_index(str(tmp / "emb.parquet"), root, BuildSettings(shards=2, selfcheck_queries=10),
                         beam_args=BEAM)
    return root, result.version


def clone(built: tuple[str, str], root: str, name: str | None = None) -> str:
    """A complete copy of the built version under ``name`` in ``root`` (its manifest rewritten by
    ``layout.write_manifest``, which records the next seq: clones are ordered as they are made)."""
    src_root, src = built
    name = name or layout.new_version_name()
    source = Path(layout.version_dir(src_root, src))
    for path in source.rglob("*"):
        if path.is_file() and path.name != layout.MANIFEST:
            storage.write_bytes(storage.join(layout.version_dir(root, name), str(path.relative_to(source))),
                                path.read_bytes())
    manifest = json.loads((source / layout.MANIFEST).read_text())
    manifest["version"] = name
    layout.write_manifest(root, name, manifest)
    return name


def test_current_is_replaced_atomically(tmp_path, built):
    root = str(tmp_path / "root")
    names = [clone(built, root) for _ in range(2)]
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
    assert not [p for p in Path(root).iterdir() if p.name.startswith(".") and p.name != layout.ROOT_LOCK]


def test_retention_keeps_last_k_and_never_the_live_one(tmp_path, built):
    import datetime as dt

    root = str(tmp_path / "root")
    now = dt.datetime.now(dt.UTC)
    complete = [clone(built, root, layout.new_version_name(now - dt.timedelta(hours=h))) for h in (50, 40, 30, 20, 10)]
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


def test_versions_are_ordered_by_seq_not_by_their_time_stamped_names(tmp_path, built):
    """A build on a machine whose clock is a day ahead names its version "tomorrow". It must not stay the newest:
    the next builds are newer, and retention keeps those."""
    import datetime as dt

    root = str(tmp_path / "root")
    now = dt.datetime.now(dt.UTC)
    first = clone(built, root)
    ahead = clone(built, root, layout.new_version_name(now + dt.timedelta(days=1)))
    later = [clone(built, root) for _ in range(2)]
    assert layout.complete_versions(root) == [first, ahead, *later]  # the order they were made in
    assert [layout.read_manifest(root, v)["seq"] for v in (first, ahead, *later)] == [0, 1, 2, 3]
    layout.publish(root, later[-1], keep_versions=2)
    assert layout.list_versions(root) == sorted(later)  # the version from "tomorrow" went as the older one


def test_publish_waits_for_a_running_retention(tmp_path, built):
    """Two threads (flock locks belong to open files, so they exclude each other as processes do): retention
    pauses after its first deletion while another thread publishes a version retention is about to delete. The
    publish waits for the root lock and then finds the version gone; CURRENT never names a deleted version."""
    root = str(tmp_path / "root")
    versions = [clone(built, root) for _ in range(4)]
    layout.publish(root, versions[-1])
    paused, resume = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def pause(_: str) -> None:
        if not paused.is_set():
            paused.set()
            resume.wait(30)

    def retention() -> None:
        outcome["deleted"] = layout.apply_retention(root, keep=1, on_delete=pause)

    def rollback() -> None:
        try:
            layout.publish(root, versions[1])
            outcome["published"] = True
        except NoLiveVersionError as e:
            outcome["published"] = e

    a = threading.Thread(target=retention)
    a.start()
    assert paused.wait(30)  # retention deleted versions[0] and holds the lock
    b = threading.Thread(target=rollback)
    b.start()
    b.join(1.0)
    assert b.is_alive(), "publish did not wait for the retention in progress"
    assert layout.read_current(root) == versions[-1]
    resume.set()
    a.join(30)
    b.join(30)
    assert outcome["deleted"] == versions[:3]
    assert isinstance(outcome["published"], NoLiveVersionError)  # too late: retention had deleted it
    assert layout.read_current(root) == versions[-1] and layout.is_complete(root, versions[-1])
    SearchIndex.open(root)


def test_retention_without_a_root_lock_never_deletes_newer_than_live(tmp_path, built):
    """On an object store (memory:// here) nothing excludes another process's publish: retention keeps every
    version newer than the live one, which is what such a publish would make live; a local root (locked) keeps
    only the newest ``keep``."""
    local = str(tmp_path / "root")
    store = "memory://ldot-test-retention"
    try:
        out = {}
        for root in (local, store):
            versions = [clone(built, root) for _ in range(4)]
            layout.publish(root, versions[1])  # rolled back
            out[root] = (versions, layout.apply_retention(root, keep=1))
        versions, deleted = out[store]
        assert deleted == [versions[0]] and layout.list_versions(store) == sorted(versions[1:])
        versions, deleted = out[local]
        assert deleted == [versions[0], versions[2]]
        SearchIndex.open(store)
    finally:
        storage.rm(store)


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


def test_failed_build_removes_its_incomplete_version(tmp_path):
    root = str(tmp_path / "index")
    version = layout.new_version_name()
    with pytest.raises(RuntimeError, match="pipeline failed"), discard_incomplete_version(root, version):
        storage.write_text(storage.join(layout.version_dir(root, version), "trained.index"), "partial")
        raise RuntimeError("pipeline failed")
    assert layout.list_versions(root) == []


def test_complete_or_live_versions_are_kept(tmp_path, built):
    root = str(tmp_path / "index")
    complete = layout.new_version_name()
    with pytest.raises(ValueError), discard_incomplete_version(root, complete):
        clone(built, root, complete)  # complete (e.g. below the recall floor)
        raise ValueError("recall below the floor")
    live = clone(built, root)
    layout.publish(root, live)
    with pytest.raises(ValueError), discard_incomplete_version(root, live):
        storage.rm(layout.manifest_url(root, live))
        raise ValueError("never delete what is live")
    assert layout.list_versions(root) == sorted([complete, live])


def test_the_build_ends_in_one_step_that_joins_every_branch(built):
    """``_done`` is written by the last step, after every shard and the ground truth: it holds each shard's
    manifest entry and the counts (here in-process, so by this process; through worker processes see
    tests/pipeline/test_portable.py)."""
    root, version = built
    done = json.loads(storage.read_text(done_url(layout.version_dir(root, version))))
    manifest = layout.read_manifest(root, version)
    assert done["n_shards"] == 2 and [s["shard"] for s in done["shards"]] == [0, 1]
    assert done["shards"] == manifest["shards"] and done["vectors"] == manifest["count"] == 200
    assert len(done["groundtruth"]) == 1 and done["written_by"].endswith(f":{os.getpid()}")


def drop_shard_one(url: str) -> None:
    done = json.loads(storage.read_text(url))
    done["shards"] = done["shards"][:1]
    storage.write_text(url, json.dumps(done))


@pytest.mark.parametrize(("damage", "message"), [
    (storage.rm, r"the build pipeline ended but its last step left no .*_done: the shards were not all written "
                 r"where this launcher reads them"),
    (drop_shard_one, r"_done does not match this build: 1 shard entries for 2 shard\(s\) \(missing \[1\]"),
], ids=["missing", "wrong"])
def test_a_build_whose_done_is_missing_or_wrong_is_refused_and_removed(tmp_path, damage, message):
    """What the driver finds after the pipeline (its workers wrote elsewhere, or the job ended early) is checked:
    refused with a message that says what is wrong, and the incomplete version is removed."""
    x = np.random.default_rng(3).standard_normal((120, 16)).astype(np.float32)
    write_embeddings(tmp_path / "emb.parquet", x)
    root, version = str(tmp_path / "root"), layout.new_version_name()

    def after_the_pipeline(point: str) -> None:
        if point == "pipeline":
            damage(done_url(layout.version_dir(root, version)))

    with pytest.raises(IndexIntegrityError, match=message):
        build_index(str(tmp_path / "emb.parquet"), root, BuildSettings(shards=2, selfcheck_queries=10),
                    beam_args=BEAM, version=version, on_point=after_the_pipeline)
    assert layout.list_versions(root) == [] and layout.read_current(root) is None
