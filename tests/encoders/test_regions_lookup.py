"""Serving region features by image_id: the map beside a regions table, row-group reads, fsspec, UNITER DBs."""

from __future__ import annotations

import logging
import shutil

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from encoders.regions.formats import RegionsWriter, read_regions
from encoders.regions.formats._msgpack import packb
from encoders.regions.formats.regions_lookup import (
    FETCH_COLUMNS,
    MAP_NAME,
    ParquetRegionStore,
    RegionsLookupError,
    UniterRegionStore,
    open_region_store,
    read_regions_map,
    write_regions_map,
)
from encoders.regions.formats.regions_table import ROW_GROUP_ROWS
from tests.helpers_regions import make_regions, uniter_record, write_lmdb

N_IMAGES = 90


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    """90 images of 10..100 boxes in 3 files of 40/40/10 rows, row groups of ROW_GROUP_ROWS."""
    d = tmp_path_factory.mktemp("regions")
    rng = np.random.default_rng(0)
    with RegionsWriter(d, rows_per_file=40) as w:
        for i in range(N_IMAGES):
            w.write(f"img-{i:03d}", f"gs://photos/{i}.jpg", make_regions(i, int(rng.integers(10, 101))))
    return d


@pytest.fixture(scope="module")
def full(table_dir) -> dict:
    return dict(read_regions(table_dir))


def assert_same(a, b) -> None:
    assert a.num_boxes == b.num_boxes and (a.width, a.height) == (b.width, b.height)
    for name in ("features", "norm_bb", "boxes", "conf"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_writer_writes_small_row_groups_and_the_map(table_dir):
    files = sorted(table_dir.glob("*.parquet"))
    assert len(files) == 3 and pq.ParquetFile(files[0]).metadata.num_row_groups == -(-40 // ROW_GROUP_ROWS)
    table = read_regions_map(str(table_dir))
    assert table is not None and table.num_rows == N_IMAGES
    assert table.column("image_id").to_pylist() == sorted(f"img-{i:03d}" for i in range(N_IMAGES))
    row = table.to_pylist()[41]  # img-041: second file, its second row (row groups of ROW_GROUP_ROWS rows)
    assert (row["image_id"], row["file"]) == ("img-041", 1)
    assert (row["row_group"], row["row"]) == divmod(1, ROW_GROUP_ROWS)
    # the map is not a regions table: Parquet readers of the directory do not see it
    assert len(list(read_regions(table_dir))) == N_IMAGES


def test_fetch_returns_exactly_the_stored_regions(table_dir, full):
    store = open_region_store(table_dir)
    assert len(store) == N_IMAGES
    wanted = ["img-089", "img-000", "img-017", "img-041", "img-016", "nope"]
    got = store.fetch(wanted)
    assert sorted(got) == sorted(wanted[:-1]) and "nope" not in store and "img-017" in store
    for image_id, regions in got.items():
        assert_same(regions, full[image_id])
        assert regions.soft_labels is None  # never read: the largest column, unused by re-ranking


class CountingFS(LocalFileSystem):
    """The local filesystem under another protocol, counting the bytes read (to see which row groups are read)."""

    protocol = ("countfs",)
    read_bytes = 0

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        if "r" in mode:
            read = f.read

            def counted(*args):
                data = read(*args)
                CountingFS.read_bytes += len(data)
                return data

            f.read = counted
        return f


def test_fetch_reads_only_the_candidates_row_groups(table_dir):
    fsspec.register_implementation("countfs", CountingFS, clobber=True)
    store = open_region_store(f"countfs://{table_dir}")
    files = sorted(table_dir.glob("*.parquet"))
    CountingFS.read_bytes = 0
    got = store.fetch(["img-005", "img-050"])  # one row group in each of the first two files
    assert sorted(got) == ["img-005", "img-050"]
    where = {r["image_id"]: r for r in read_regions_map(str(table_dir)).to_pylist()}
    needed = footers = 0
    for image_id in ("img-005", "img-050"):
        meta = pq.ParquetFile(files[where[image_id]["file"]]).metadata
        group = meta.row_group(where[image_id]["row_group"])
        needed += sum(group.column(c).total_compressed_size for c in range(group.num_columns)
                      if group.column(c).path_in_schema.split(".")[0] in FETCH_COLUMNS)
        footers += meta.serialized_size + 8
    total = sum(p.stat().st_size for p in files)
    assert needed <= CountingFS.read_bytes <= needed + footers + (256 << 10), (CountingFS.read_bytes, needed)
    assert CountingFS.read_bytes < 0.3 * total


def test_fsspec_url_builds_the_missing_map_lazily(table_dir, full):
    fs = fsspec.filesystem("memory")
    for p in table_dir.glob("*.parquet"):
        fs.pipe(f"/served/regions/{p.name}", p.read_bytes())
    assert read_regions_map("memory://served/regions") is None
    store = open_region_store("memory://served/regions")
    assert fs.exists(f"/served/regions/{MAP_NAME}")
    assert_same(store.fetch(["img-033"])["img-033"], full["img-033"])


def test_stale_map_is_rebuilt_when_files_change(table_dir, tmp_path, full):
    d = tmp_path / "regions"
    shutil.copytree(table_dir, d)
    with RegionsWriter(d, prefix="nightly") as w:
        w.write("img-new", None, make_regions(999, 12))
    (d / MAP_NAME).unlink()
    write_regions_map(str(d))
    with RegionsWriter(d, prefix="later") as w:  # a second append rewrites the map on close ...
        w.write("img-later", None, make_regions(1000, 20))
    shutil.copy(table_dir / MAP_NAME, d / MAP_NAME)  # ... but an old map put back is stale: detected, rebuilt
    store = open_region_store(d)
    assert len(store) == N_IMAGES + 2 and {"img-new", "img-later", "img-001"} <= set(store.fetch(
        ["img-new", "img-later", "img-001"]))


def test_duplicate_ids_serve_the_first_and_warn(tmp_path, caplog):
    with RegionsWriter(tmp_path, prefix="a") as w:
        w.write("same", None, make_regions(1, 10))
    with RegionsWriter(tmp_path, prefix="b") as w, caplog.at_level(logging.WARNING):
        w.write("same", None, make_regions(2, 30))
    assert "appear in more than one row" in caplog.text
    assert ParquetRegionStore.open(str(tmp_path)).fetch(["same"])["same"].num_boxes == 10


def test_not_a_regions_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"neither \.parquet files nor a UNITER LMDB"):
        open_region_store(tmp_path / "empty")
    with pytest.raises(RegionsLookupError, match="no Parquet files"):
        ParquetRegionStore.open(str(tmp_path / "empty"))


def test_uniter_image_db_is_a_source_too(tmp_path):
    regs = {f"coco_val2014_{i:012d}.npz": make_regions(i, n) for i, n in enumerate([12, 40, 100])}
    db = tmp_path / "coco_val2014"
    db.mkdir()
    write_lmdb(db / "feat_th0.2_max100_min10", {k: packb(uniter_record(r)) for k, r in regs.items()})
    store = open_region_store(db)
    assert isinstance(store, UniterRegionStore)
    got = store.fetch(["coco_val2014_000000000002.npz", "coco_val2014_000000000000.npz", "missing.npz"])
    assert sorted(got) == ["coco_val2014_000000000000.npz", "coco_val2014_000000000002.npz"]
    store.close()  # LMDB refuses a second open of the same environment in one process
    want = dict(read_regions(db))
    for name, regions in got.items():
        np.testing.assert_array_equal(regions.features, want[name].features)
        np.testing.assert_array_equal(regions.norm_bb, want[name].norm_bb)
