"""Hostile and damaged index roots: manifests edited consistently, names that point elsewhere, files that are not
what they should be. Each is built here from a real published version and must be refused with an
``IndexIntegrityError`` that names what is wrong, by ``SearchIndex.open`` (checksums on or off) and by ``publish``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from index import layout
from index.errors import IndexIntegrityError, NoLiveVersionError
from index.search import SearchIndex
from index.settings import BuildSettings
from pipeline.build_index_job import build_index
from tests.helpers_index import BEAM, write_embeddings

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

N, D = 300, 16


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("published")
    write_embeddings(tmp / "emb.parquet", np.random.default_rng(2).standard_normal((N, D)).astype(np.float32))
    build_index(str(tmp / "emb.parquet"), str(tmp / "root"), BuildSettings(shards=3, selfcheck_queries=40),
                beam_args=BEAM)
    return tmp / "root"


@pytest.fixture
def root(published, tmp_path) -> Path:
    shutil.copytree(published, tmp_path / "root")
    return tmp_path / "root"


def live(root: Path) -> str:
    version = layout.read_current(str(root))
    assert version is not None
    return version


def manifest_path(root: Path, version: str | None = None) -> Path:
    return root / "versions" / (version or live(root)) / "manifest.json"


def edit(root: Path, change) -> dict:
    """Rewrite the live manifest through ``change(manifest)`` (as someone with write access would)."""
    path = manifest_path(root)
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return manifest


def refused(root: Path, match: str) -> None:
    for verify in (True, False):  # the structure is checked whether or not checksums are
        with pytest.raises(IndexIntegrityError, match=match):
            SearchIndex.open(str(root), verify=verify)
    with pytest.raises(IndexIntegrityError, match=match):
        layout.publish(str(root), live(root))


def test_the_untouched_version_opens_whole(root):
    idx = SearchIndex.open(str(root))
    assert idx.ntotal == N and idx.manifest["n_shards"] == 3


def drop_shard(m: dict, shard: int = -1) -> None:
    """Remove one shard entry (the last) and make the manifest add up: n_shards, count and the numbering."""
    gone = m["shards"].pop(shard)
    m["n_shards"] -= 1
    m["count"] -= gone["count"]
    for i, s in enumerate(m["shards"]):
        s["shard"] = i


def test_a_shard_removed_consistently_is_refused(root):
    edit(root, drop_shard)
    refused(root, "sources hold 300 rows")  # the scan recorded the rows independently


def test_a_shard_removed_with_its_sources_row_count_is_refused(root, tmp_path):
    def change(m: dict) -> None:
        drop_shard(m)
        m["sources"][0]["rows"] = m["count"]

    edit(root, change)  # 3 -> 2 shards: the ids of shard 0 and 1 are not those of a 2-shard index
    with pytest.raises(IndexIntegrityError, match="belong to other shards"):
        SearchIndex.open(str(root))

    # 2 -> 1 shard: every id belongs to the one shard left; the self-check's exact neighbours still point at the
    # dropped one
    write_embeddings(tmp_path / "emb.parquet", np.random.default_rng(3).standard_normal((N, D)).astype(np.float32))
    two = tmp_path / "two"
    build_index(str(tmp_path / "emb.parquet"), str(two), BuildSettings(shards=2, selfcheck_queries=40),
                beam_args=BEAM)
    edit(two, change)
    with pytest.raises(IndexIntegrityError, match="are in no shard: rows are missing from the index"):
        SearchIndex.open(str(two))


def test_a_shard_listed_twice_is_refused(root):
    def same_file(m: dict) -> None:
        m["shards"].append({**m["shards"][0], "shard": 3})
        m["n_shards"] = 4
        m["count"] += m["shards"][0]["count"]
        m["sources"][0]["rows"] = m["count"]

    edit(root, same_file)
    refused(root, "both name the file")

    def duplicate_number(m: dict) -> None:
        m["shards"][3]["shard"] = 0
        m["n_shards"] = 3

    edit(root, duplicate_number)
    refused(root, r"not 0\.\.2 exactly once .*repeated \['0'\]")


def test_a_shard_copied_under_a_new_name_is_refused(root):
    """Doubled with its files copied, checksums right and every count edited to match: its ids belong to
    another shard."""
    vdir = root / "versions" / live(root)

    def change(m: dict) -> None:
        first = m["shards"][0]
        for key in ("path", "idmap"):
            src = first[key] if key == "path" else first["idmap"]["path"]
            shutil.copyfile(vdir / src, vdir / (src + ".copy"))
        m["shards"].append({**first, "shard": 3, "path": first["path"] + ".copy",
                            "idmap": {**first["idmap"], "path": first["idmap"]["path"] + ".copy"}})
        m["n_shards"] = 4
        m["count"] += first["count"]
        m["sources"][0]["rows"] = m["count"]

    edit(root, change)
    with pytest.raises(IndexIntegrityError, match="belong to other shards"):
        SearchIndex.open(str(root))


@pytest.mark.parametrize("path", ["../../../etc/passwd", "/etc/passwd", "shards/../../other/x.index",
                                  "file:///etc/passwd", "shards//x.index", "./trained.index", "C:\\x"])
def test_entry_paths_outside_the_version_are_never_followed(root, path):
    def change(m: dict) -> None:
        m["shards"][1]["path"] = path

    edit(root, change)
    refused(root, "not a plain relative path inside the version folder")


def test_a_manifest_naming_another_version_is_refused(root):
    v = live(root)
    other = layout.new_version_name()
    shutil.copytree(root / "versions" / v, root / "versions" / other)  # a copied folder, manifest untouched
    with pytest.raises(IndexIntegrityError, match=f"names version '{v}'"):
        layout.publish(str(root), other)
    with pytest.raises(IndexIntegrityError, match=f"names version '{v}'"):
        SearchIndex.open(str(root), version=other)


@pytest.mark.parametrize("text", ["../../elsewhere\n", "versions\n", "20261126T193012.123456Z-1a2b/../../x\n",
                                  "not-a-version\n", "\xff\xfe garbage"])
def test_current_naming_anything_but_a_version_is_refused(root, text):
    (root / "CURRENT").write_bytes(text.encode("latin-1"))
    with pytest.raises(IndexIntegrityError, match=r"not a version name|not text"):
        SearchIndex.open(str(root))
    with pytest.raises(IndexIntegrityError):
        layout.apply_retention(str(root), keep=1)  # and nothing is deleted against a CURRENT that cannot be read
    assert len(layout.list_versions(str(root))) == 1


def test_a_truncated_manifest_is_refused_and_nothing_else_breaks(root):
    path = manifest_path(root)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    refused(root, "is not valid JSON")
    with pytest.raises(IndexIntegrityError, match="is not valid JSON"):
        layout.live_manifest(str(root))


def test_current_at_a_half_deleted_version(root):
    """A deletion cut short removes the manifest first: the version is incomplete, never half-read."""
    manifest_path(root).unlink()
    with pytest.raises(NoLiveVersionError, match="has no manifest"):
        SearchIndex.open(str(root))
    with pytest.raises(NoLiveVersionError):
        layout.publish(str(root), live(root))


def test_a_shard_replaced_by_a_symlink_outside_the_root_is_refused(root, tmp_path):
    """Even with the same bytes (so the checksum holds): what is read must be inside the version folder."""
    vdir = root / "versions" / live(root)
    shard = vdir / json.loads(manifest_path(root).read_text())["shards"][0]["path"]
    outside = tmp_path / "outside.index"
    shutil.copyfile(shard, outside)
    shard.unlink()
    os.symlink(outside, shard)
    for verify in (True, False):
        with pytest.raises(IndexIntegrityError, match="outside"):
            SearchIndex.open(str(root), verify=verify)


def test_odd_values_in_the_manifest_are_refused(root):
    cases = [("count", -1, "count -1 is not an integer"), ("dim", "768", "dim '768'"),
             ("n_shards", True, "n_shards True"), ("nprobe", 0, "nprobe 0"), ("seq", "1", "seq '1'"),
             ("format", "ldot-index/99", "format 'ldot-index/99'")]
    original = manifest_path(root).read_text()
    for key, value, match in cases:
        manifest_path(root).write_text(original)
        edit(root, lambda m, k=key, v=value: m.__setitem__(k, v))
        with pytest.raises(IndexIntegrityError, match=match):
            SearchIndex.open(str(root), verify=False)
    manifest_path(root).write_text(original)
    edit(root, lambda m: m["shards"][0].__setitem__("sha256", "0" * 63))
    refused(root, "is not a sha256 hex digest")


def test_folders_that_are_not_versions_are_left_alone(root):
    """A stray folder under versions/ is not a version: retention does not delete it, publish refuses it."""
    (root / "versions" / "backup-of-tuesday").mkdir()
    (root / "versions" / "backup-of-tuesday" / "keep.txt").write_text("mine")
    assert layout.list_versions(str(root)) == [live(root)]
    layout.apply_retention(str(root), keep=1, incomplete_older_than_s=0)
    assert (root / "versions" / "backup-of-tuesday" / "keep.txt").exists()
    with pytest.raises(IndexIntegrityError, match="not a version name"):
        layout.publish(str(root), "backup-of-tuesday")
