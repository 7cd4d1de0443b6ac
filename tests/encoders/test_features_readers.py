"""Region-feature files: the regions Parquet table, UNITER image DBs (LMDB, msgpack and npz records) and BUTD
TSV files (original and LXMERT columns). The tests write small files of each format themselves."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from encoders.regions import Regions, normalize_boxes
from encoders.regions.formats import (
    REGIONS_SCHEMA,
    RegionsWriter,
    detect_format,
    read_regions,
    regions_to_row,
    row_to_regions,
)
from encoders.regions.formats._msgpack import packb, unpackb
from encoders.regions.formats.butd_tsv import write_butd_tsv
from encoders.regions.formats.regions_table import rows_to_table
from encoders.regions.formats.uniter_lmdb import compute_num_bb
from tests.helpers_regions import make_regions, uniter_record, write_lmdb


# ---- regions Parquet ---------------------------------------------------------------------------------------
def test_parquet_roundtrip_file_and_directory(tmp_path):
    items = [(f"dir/img{i}.jpg", make_regions(i, n)) for i, n in enumerate([10, 37, 100])]
    with RegionsWriter(tmp_path / "out", rows_per_file=2) as w:
        for image_id, r in items:
            w.write(image_id, f"gs://bucket/{image_id}", r)
    files = sorted((tmp_path / "out").glob("*.parquet"))
    assert [f.name for f in files] == ["regions-00000.parquet", "regions-00001.parquet"]
    table = pq.read_table(files[0])
    assert table.schema.equals(REGIONS_SCHEMA, check_metadata=False)
    assert table.column("num_boxes").to_pylist() == [10, 37]
    got = list(read_regions(tmp_path / "out"))
    assert [i for i, _ in got] == [i for i, _ in items]
    for (_, want), (_, r) in zip(items, got, strict=True):
        assert r.num_boxes == want.num_boxes and (r.width, r.height) == (640, 480)
        np.testing.assert_allclose(r.features, want.features, rtol=1e-3, atol=1e-6)  # stored fp16
        np.testing.assert_array_equal(r.norm_bb, want.norm_bb)
        np.testing.assert_array_equal(r.boxes, want.boxes)
        np.testing.assert_array_equal(r.conf, want.conf)
        np.testing.assert_allclose(r.soft_labels, want.soft_labels, atol=1e-3)
        np.testing.assert_allclose(r.soft_labels.sum(1), 1.0, atol=5e-3)
    assert [i for i, _ in read_regions(files[1])] == ["dir/img2.jpg"]


def test_row_converters_without_soft_labels():
    r = make_regions(3, 12, soft=False)
    row = regions_to_row("a", None, r, with_soft_labels=True)
    assert row["soft_labels"] is None and row["features"].dtype == np.float16
    table = rows_to_table([row, regions_to_row("b", "u", make_regions(4, 10), with_soft_labels=False)])
    assert table.column("soft_labels").null_count == 2
    back = row_to_regions(table.to_pylist()[0])
    assert back.soft_labels is None and back.num_boxes == 12
    np.testing.assert_allclose(back.features, r.features, rtol=1e-3, atol=1e-6)


def test_attribute_columns_roundtrip_and_version_1_files_still_read(tmp_path):
    import pyarrow as pa

    with_attrs, without = make_regions(5, 23, attrs=True), make_regions(6, 11)
    table = rows_to_table([regions_to_row("a", None, with_attrs), regions_to_row("b", None, without)])
    assert table.column("attr_ids").type == pa.list_(pa.int16()) and table.column("attr_conf").null_count == 1
    pq.write_table(table, tmp_path / "v2.parquet")
    got = dict(read_regions(tmp_path / "v2.parquet"))
    np.testing.assert_array_equal(got["a"].attr_ids, with_attrs.attr_ids)
    np.testing.assert_array_equal(got["a"].attr_conf, with_attrs.attr_conf)
    assert got["a"].attr_ids.dtype == np.int32 and got["b"].attr_ids is None and got["b"].attr_conf is None
    # a file written before the attribute columns existed (regions_version 1)
    v1 = pa.schema([f for f in REGIONS_SCHEMA if not f.name.startswith("attr_")],
                   metadata={b"lightningdot_index.table": b"regions", b"lightningdot_index.regions_version": b"1"})
    pq.write_table(table.select(v1.names).cast(v1), tmp_path / "v1.parquet")
    (image_id, old), _ = list(read_regions(tmp_path / "v1.parquet"))
    assert image_id == "a" and old.attr_ids is None and old.attr_conf is None
    np.testing.assert_array_equal(old.conf, with_attrs.conf)
    with pytest.raises(ValueError, match="both or neither"):
        Regions.from_boxes(with_attrs.features, with_attrs.boxes, with_attrs.conf, None, 640, 480, with_attrs.attr_ids)


def test_parquet_missing_columns_is_a_clear_error(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"image_id": ["x"], "embedding": [[1.0, 2.0]]}), tmp_path / "emb.parquet")
    with pytest.raises(ValueError, match="not a regions table"):
        list(read_regions(tmp_path / "emb.parquet"))


# ---- UNITER image DB ---------------------------------------------------------------------------------------


def _npz_bytes(rec: dict) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **rec)
    return buf.getvalue()


def test_uniter_msgpack_db_with_nbb_json(tmp_path):
    """UNITER's default layout: feat_th0.2_max100_min10/ (msgpack records) + nbb_th0.2_max100_min10.json."""
    db = tmp_path / "coco_val2014"
    db.mkdir()
    regs = {f"coco_val2014_{i:012d}.npz": make_regions(10 + i, n) for i, n in enumerate([36, 12, 100])}
    nbb = {name: compute_num_bb(r.conf, 0.2, 10, 100) for name, r in regs.items()}
    # records are cut to nbb when the DB is built (convert_imgdir.py's load_npz)
    write_lmdb(db / "feat_th0.2_max100_min10",
                {k: packb({kk: vv[: nbb[k]] for kk, vv in uniter_record(r).items()}) for k, r in regs.items()})
    (db / "nbb_th0.2_max100_min10.json").write_text(json.dumps(nbb))
    assert detect_format(db) == "uniter"
    got = dict(read_regions(db))
    assert set(got) == set(regs)
    for name, want in regs.items():
        r = got[name]
        n = nbb[name]
        assert r.num_boxes == n and (r.width, r.height) == (0, 0)
        np.testing.assert_allclose(r.features, want.features[:n], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(r.norm_bb, want.norm_bb[:n], atol=1e-3)
        np.testing.assert_array_equal(r.boxes, r.norm_bb[:, :4])
        np.testing.assert_allclose(r.soft_labels, want.soft_labels[:n], atol=1e-3)
        assert np.all(np.diff(r.conf) <= 0)
    # the LMDB directory itself also works
    assert set(dict(read_regions(db / "feat_th0.2_max100_min10"))) == set(regs)


def test_uniter_compressed_all_db_applies_uniter_rule(tmp_path):
    """all_compressed/ (npz records with every box, no json): UNITER's clamp(#(conf > 0.2), 10, 100)."""
    db = tmp_path / "flickr"
    db.mkdir()
    r = make_regions(20, 100)
    conf = r.conf.copy()
    conf[:] = np.linspace(0.9, 0.0, 100)
    conf[30] = 0.2  # UNITER's rule is strict: exactly 0.2 does not count
    r = Regions(r.features, r.boxes, r.norm_bb, np.sort(conf)[::-1], r.soft_labels, r.width, r.height)
    write_lmdb(db / "all_compressed", {"img.jpg.npz": _npz_bytes(uniter_record(r))})
    (name, got), = list(read_regions(db))
    expected = compute_num_bb(r.conf.astype(np.float16).astype(np.float32), 0.2, 10, 100)
    assert name == "img.jpg.npz" and got.num_boxes == expected
    assert expected == int((r.conf.astype(np.float16) > 0.2).sum())
    few = list(read_regions(db, conf_th=0.95))
    assert few[0][1].num_boxes == 10


def test_msgpack_subset_matches_the_spec():
    assert unpackb(b"\x93\x01\xa1a\xc3") == [1, "a", True]
    assert unpackb(b"\x82\xa1x\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00\xa1y\xc0") == {"x": 1.5, "y": None}
    assert unpackb(b"\xc4\x03abc") == b"abc"
    assert unpackb(b"\xd0\x85") == -123 and unpackb(b"\xff") == -1
    # msgpack_numpy's array layout (bytes keys, as written with use_bin_type=True)
    arr = np.arange(6, dtype=np.float16).reshape(2, 3)
    back = unpackb(packb({"features": arr, "n": 300, "neg": -5}))
    np.testing.assert_array_equal(back["features"], arr)
    assert back["features"].dtype == np.float16 and back["n"] == 300 and back["neg"] == -5


# ---- BUTD TSV ----------------------------------------------------------------------------------------------
def test_butd_tsv_original_columns(tmp_path):
    items = [("123", make_regions(30, 10, 500, 375, soft=False)), ("456", make_regions(31, 36, 333, 500, soft=False))]
    path = tmp_path / "feats.tsv"
    write_butd_tsv(path, items)
    assert detect_format(path) == "tsv"
    got = list(read_regions(path))
    assert [i for i, _ in got] == ["123", "456"]
    for (_, want), (_, r) in zip(items, got, strict=True):
        assert (r.width, r.height, r.num_boxes) == (want.width, want.height, want.num_boxes)
        np.testing.assert_array_equal(r.features, want.features)
        np.testing.assert_array_equal(r.boxes, want.boxes)
        np.testing.assert_allclose(r.norm_bb, normalize_boxes(want.boxes, want.width, want.height))
        assert r.soft_labels is None and np.all(r.conf == 1.0)


def test_butd_tsv_lxmert_columns_sorted_by_conf(tmp_path):
    r = make_regions(40, 12, 640, 427, soft=False)
    conf = np.random.default_rng(0).uniform(0, 1, 12).astype(np.float32)
    b64 = lambda a: base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()  # noqa: E731
    fields = ["COCO_1", "427", "640", b64(np.arange(12, dtype=np.int64)), b64(conf),
              b64(np.zeros(12, np.int64)), b64(np.zeros(12, np.float32)), "12", b64(r.boxes), b64(r.features)]
    path = tmp_path / "lx.tsv"
    path.write_text("\t".join(fields) + "\n")
    (image_id, got), = list(read_regions(path))
    order = np.argsort(-conf, kind="stable")
    assert image_id == "COCO_1" and (got.width, got.height) == (640, 427)
    np.testing.assert_array_equal(got.conf, conf[order])
    np.testing.assert_array_equal(got.features, r.features[order])


def test_butd_tsv_bad_row_names_the_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("1\t10\t10\t2\tAAAA\tAAAA\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:1"):
        list(read_regions(path))


def test_detect_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither"):
        detect_format(tmp_path / "empty")


def test_parquet_through_fsspec_url(tmp_path):
    import fsspec

    with RegionsWriter(tmp_path / "local", rows_per_file=1) as w:
        for i in range(2):
            w.write(f"img{i}", None, make_regions(50 + i, 10))
    fs = fsspec.filesystem("memory")
    for f in sorted((tmp_path / "local").glob("*.parquet")):
        fs.pipe(f"/regions-test/{f.name}", f.read_bytes())
    try:
        assert detect_format("memory://regions-test") == "parquet"
        assert [i for i, _ in read_regions("memory://regions-test")] == ["img0", "img1"]
        assert [i for i, _ in read_regions("memory://regions-test/regions-00001.parquet")] == ["img1"]
    finally:
        fs.rm("/regions-test", recursive=True)
