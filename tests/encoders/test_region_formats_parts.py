"""Feature files read in parts by several workers: a regions table by runs of row groups, a BUTD TSV by
line-aligned byte ranges, a UNITER DB by key ranges. Whatever the part size every record is read exactly once,
and a bad record costs only itself; through the pipeline a repeated image_id keeps its first record."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from encoders.regions.formats import (
    BadRecord,
    butd_tsv,
    iter_part_records,
    read_regions,
    region_parts,
    regions_table,
    uniter_lmdb,
)
from encoders.regions.formats._msgpack import packb
from encoders.regions.formats.butd_tsv import write_butd_tsv
from encoders.regions.formats.regions_table import regions_to_row, rows_to_table
from tests.helpers_regions import make_regions, uniter_record, write_lmdb
from transforms.records import FAILED
from transforms.regions import ReadPrecomputedRegions

N = 40
BAD = 17  # the record that is broken in each file


def regions_table_file(tmp_path):
    rows = [regions_to_row(f"img{i}", None, make_regions(i, 3 + i % 5, soft=False), False) for i in range(N)]
    rows[BAD]["features"] = rows[BAD]["features"][:-1]  # no longer splits into its boxes
    import pyarrow.parquet as pq

    path = tmp_path / "regions.parquet"
    pq.write_table(rows_to_table(rows), path, row_group_size=3)
    return path


def tsv_file(tmp_path):
    path = tmp_path / "feats.tsv"
    write_butd_tsv(path, [(f"img{i}", make_regions(i, 3 + i % 5, soft=False)) for i in range(N)])
    lines = path.read_bytes().splitlines(keepends=True)
    lines[BAD] = b"img17\tnot-a-number\t1\t1\tAAAA\tAAAA\n"
    path.write_bytes(b"".join(lines))
    return path


def uniter_db(tmp_path):
    records = {f"img{i:03d}": packb(uniter_record(make_regions(i, 12))) for i in range(N)}
    records[f"img{BAD:03d}"] = b"\x00not msgpack"
    write_lmdb(tmp_path / "all", records)
    return tmp_path / "all"


FILES = {"parquet": regions_table_file, "tsv": tsv_file, "uniter": uniter_db}


def small_parts(monkeypatch, size):
    monkeypatch.setattr(regions_table, "PART_ROWS", size)
    monkeypatch.setattr(butd_tsv, "SPLIT_BYTES", size * 5000)
    monkeypatch.setattr(uniter_lmdb, "KEYS_PER_RANGE", size)


@pytest.mark.parametrize("size", [1, 4, 1000])
@pytest.mark.parametrize("fmt", sorted(FILES))
def test_every_record_once_and_a_bad_one_costs_only_itself(tmp_path, monkeypatch, fmt, size):
    path = FILES[fmt](tmp_path)
    small_parts(monkeypatch, size)
    parts = list(region_parts(path))
    assert {p.fmt for p in parts} == {fmt}
    assert (len(parts) > 5) == (size < 1000), len(parts)
    items = [item for part in parts for item in iter_part_records(part)]
    good = [i[0] for i in items if not isinstance(i, BadRecord)]
    bad = [i for i in items if isinstance(i, BadRecord)]
    names = [f"img{i:03d}" if fmt == "uniter" else f"img{i}" for i in range(N)]
    assert sorted(good) == sorted(n for i, n in enumerate(names) if i != BAD)
    assert len(bad) == 1 and bad[0].image_id == names[BAD]
    whole = dict(read_regions_tolerant(path))  # read in one piece: the same arrays
    for item in items:
        if not isinstance(item, BadRecord):
            np.testing.assert_array_equal(item[1].features, whole[item[0]].features)


@pytest.mark.parametrize("size", [1, 1000])
def test_a_stray_quote_in_a_tsv_line_costs_only_that_line(tmp_path, monkeypatch, size):
    path = tmp_path / "feats.tsv"
    write_butd_tsv(path, [(f"img{i}", make_regions(i, 3, soft=False)) for i in range(6)])
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = b'"img2\t' + lines[2].split(b"\t", 1)[1]  # an unclosed quote opening the image_id
    path.write_bytes(b"".join(lines))
    small_parts(monkeypatch, size)
    items = [item for part in region_parts(path) for item in iter_part_records(part)]
    good = [i[0] for i in items if not isinstance(i, BadRecord)]
    assert sorted(good) == ["img0", "img1", "img3", "img4", "img5"]  # the lines after it are read as they are
    assert len(items) == 6


def read_regions_tolerant(path):
    from encoders.regions.formats import iter_region_records

    return [i for i in iter_region_records(path) if not isinstance(i, BadRecord)]


def test_precomputed_regions_in_parts_through_the_pipeline(tmp_path, monkeypatch):
    """Several byte ranges of a TSV that names img3 twice (the second in a later part): one record each, the
    first kept, the repeat and the bad line a failure row each."""
    path = tsv_file(tmp_path)
    write_butd_tsv(tmp_path / "again.tsv", [("img3", make_regions(99, 4, soft=False))])
    with open(path, "ab") as f:
        f.write((tmp_path / "again.tsv").read_bytes())
    small_parts(monkeypatch, 4)
    assert len(list(region_parts(path))) > 5
    first = dict(read_regions_tolerant(path))["img3"]
    with BeamTestPipeline() as p:
        out = p | ReadPrecomputedRegions(str(path))
        assert_that(out["regions"] | "Ids" >> beam.Map(lambda r: r.image_id),
                    equal_to([f"img{i}" for i in range(N) if i != BAD]), label="Ids")
        assert_that(out["regions"] | "Img3" >> beam.Filter(lambda r: r.image_id == "img3")
                    | "Boxes" >> beam.Map(lambda r: r.regions.num_boxes), equal_to([first.num_boxes]), label="First")
        assert_that(out[FAILED] | "Errors" >> beam.Map(lambda f: (f["image_id"], f["error"])),
                    equal_to([("img17", "bad_record"), ("img3", "duplicate_id")]), label="Errors")


def test_the_strict_reader_still_raises(tmp_path):
    with pytest.raises(ValueError, match=r"feats\.tsv:18: ValueError"):
        list(read_regions(tsv_file(tmp_path)))


def test_empty_feature_files_have_no_records(tmp_path, monkeypatch):
    """A UNITER DB with no records and a regions table with no row groups: no record, no failure, no error; a DB
    whose key count is not a multiple of the range size still ends in one open-ended range."""
    small_parts(monkeypatch, 3)
    write_lmdb(tmp_path / "empty", {})
    import pyarrow.parquet as pq

    schema = rows_to_table([regions_to_row("x", None, make_regions(0, 2, soft=False), False)]).schema
    pq.ParquetWriter(tmp_path / "empty.parquet", schema).close()  # a footer, no row group
    assert pq.ParquetFile(tmp_path / "empty.parquet").num_row_groups == 0
    for path in (tmp_path / "empty", tmp_path / "empty.parquet"):
        assert [item for part in region_parts(path) for item in iter_part_records(part)] == []
    write_lmdb(tmp_path / "seven", {f"k{i}": b"x" for i in range(7)})  # 8 keys with __keys__, ranges of 3
    with uniter_lmdb.UniterImageDB(tmp_path / "seven") as db:
        assert list(db.key_ranges()) == [(None, b"k2"), (b"k2", b"k5"), (b"k5", None)]
        assert sum(1 for _ in db.records(b"k5")) == 2  # k5, k6 (__keys__ skipped)
