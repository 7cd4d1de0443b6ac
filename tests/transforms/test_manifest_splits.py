"""A manifest is cut into parts that workers read: whatever the part size, every row is read exactly once, each
bad row is one failure row, BOM / CRLF / over-long lines behave as in one piece, and rows are named by line in
the first part and by byte offset after it."""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.listing import ListImages, manifests, read_part, split_manifest
from transforms.listing.manifests import RowGroup, TextRange
from transforms.records import FAILED, ImageRef

ROWS = 300
LINE_LIMIT = 200  # MAX_MANIFEST_LINE in these tests, so that a too-long line is short enough to split finely
BAD = {7: "{not json", 150: json.dumps({"uri": ""}), 151: "x" * (LINE_LIMIT + 5), 299: "[1]"}
KINDS = {7: "bad_json", 150: "missing_uri", 151: "line_too_long", 299: "bad_row"}


@pytest.fixture(autouse=True)
def short_lines(monkeypatch):
    monkeypatch.setattr(manifests, "MAX_MANIFEST_LINE", LINE_LIMIT)


def jsonl_manifest(path: Path) -> tuple[list[str], dict[int, tuple[int, int]]]:
    """ROWS rows with a BOM and CRLF ends, the BAD ones in place of good ones, and an empty line after row 40.
    -> good ids, (line number, byte offset) by row."""
    data, offsets, good = b"\xef\xbb\xbf", {}, []
    for n in range(1, ROWS + 1):
        offsets[n] = (n + (n > 40), len(data))
        line = BAD.get(n) or json.dumps({"uri": f"/img/{n}.jpg", "image_id": f"id{n}"})
        if n not in BAD:
            good.append(f"id{n}")
        data += line.encode() + b"\r\n"
        if n == 40:
            data += b"\r\n"  # an empty line: skipped, never a row
    path.write_bytes(data)
    return good, offsets


def read_all(spec: str, split_bytes: int) -> tuple[list, list]:
    parts = list(split_manifest(spec, 0, split_bytes))
    items = [item for part in parts for item in read_part(part)]
    return parts, items


@pytest.mark.parametrize("split_bytes", [1, 3, 97, 4096, 1 << 30])
def test_every_row_once_whatever_the_part_size(tmp_path, split_bytes):
    spec = str(tmp_path / "m.jsonl")
    good, offsets = jsonl_manifest(tmp_path / "m.jsonl")
    parts, items = read_all(spec, split_bytes)
    assert all(isinstance(p, TextRange) for p in parts)
    assert len(parts) == -(-(tmp_path / "m.jsonl").stat().st_size // split_bytes)
    refs = [i for i in items if isinstance(i, ImageRef)]
    failed = [i for i in items if not isinstance(i, ImageRef)]
    assert sorted(r.image_id for r in refs) == sorted(good)  # the BOM did not spoil id1, CRLF no id
    assert sorted(f["error"] for f in failed) == sorted(KINDS.values())
    first_end = parts[0].end
    for f in failed:
        line, offset = offsets[next(n for n, kind in KINDS.items() if kind == f["error"])]
        if offset < first_end:  # the first part knows its line numbers
            assert f["image_id"] == f"{spec}:{line}" and f" line {line}: " in f["message"]
        else:
            assert f["image_id"] == f"{spec}:byte-{offset}" and f"line at byte {offset}: " in f["message"]


def test_csv_header_is_read_once_and_given_to_every_part(tmp_path):
    path = tmp_path / "m.csv"
    rows = [f"/img/{n}.jpg,c{n}" for n in range(200)]
    rows[50] = "/img/50.jpg,c50,extra"
    path.write_bytes(b"\xef\xbb\xbfuri,image_id\r\n" + "\r\n".join(rows).encode() + b"\r\n")
    parts, items = read_all(str(path), 64)
    assert len(parts) > 50 and {p.header for p in parts} == {("uri", "image_id")}
    assert parts[0].first_line == 2
    refs = [i for i in items if isinstance(i, ImageRef)]
    assert sorted(r.image_id for r in refs) == sorted(f"c{n}" for n in range(200) if n != 50)
    assert [f["error"] for f in items if not isinstance(f, ImageRef)] == ["bad_row"]


def test_parquet_manifest_is_one_part_per_row_group_with_exact_row_numbers(tmp_path):
    path = tmp_path / "m.parquet"
    uris = [f"/img/{n}.jpg" for n in range(1000)]
    uris[333] = None
    pq.write_table(pa.table({"uri": uris, "image_id": [f"p{n}" for n in range(1000)]}), path, row_group_size=64)
    parts, items = read_all(str(path), 1)
    assert len(parts) == 16 and all(isinstance(p, RowGroup) for p in parts)
    assert sum(isinstance(i, ImageRef) for i in items) == 999
    assert [f["image_id"] for f in items if not isinstance(f, ImageRef)] == [f"{path}:334"]


def test_a_split_manifest_in_a_pipeline(tmp_path):
    """ListImages with small parts: the parts go through the Reshuffle to ListPart; a row repeated in a later part
    loses to the first (by position in the file), as in one piece."""
    spec = str(tmp_path / "m.jsonl")
    good, _ = jsonl_manifest(tmp_path / "m.jsonl")
    with open(spec, "ab") as f:
        f.write(json.dumps({"uri": "/img/again.jpg", "image_id": "id1"}).encode() + b"\n")
    with BeamTestPipeline() as p:
        out = p | ListImages([spec], split_bytes=512)
        assert_that(out["refs"] | "Ids" >> beam.Map(lambda r: (r.image_id, r.uri)),
                    equal_to([(i, f"/img/{i[2:]}.jpg") for i in good]), label="Ids")
        assert_that(out[FAILED] | "Errors" >> beam.Map(lambda f: f["error"]),
                    equal_to([*KINDS.values(), "duplicate_id"]), label="Errors")


def _listed(spec: str, split_bytes: int) -> list:
    _, items = read_all(spec, split_bytes)
    return [(i.image_id, i.uri, i.order) if isinstance(i, ImageRef) else i["error"] for i in items]


BOUNDARY_MANIFESTS = {
    "quoted_break.csv": b'uri,image_id\n/a.jpg,a\n"/b\nc.jpg",b\n"/e\r\nf\r\ng.jpg",e\n/d.jpg,d\n',
    "quoted_header.csv": b'\xef\xbb\xbf"uri","image_id"\r\n/a.jpg,a\r\n\r\n"/b,c.jpg",b',
    "header_only.csv": b"uri,image_id",
    "no_newline.jsonl": '\ufeff{"uri":"/\u00e9\u4e2d\U0001F600.jpg"}\r\n\n{"uri":"/\u4e2d.jpg"}'.encode(),
}


@pytest.mark.parametrize("name", sorted(BOUNDARY_MANIFESTS))
def test_every_split_point_gives_the_rows_of_one_piece(tmp_path, name):
    """A split at every byte (inside the BOM, between \\r and \\n, inside a multibyte char, at the last byte)
    lists what one piece lists, in the same order, with the same ids; a quoted field holding a line break is
    a failure row per odd-quoted line wherever the split falls (a range cannot see it began in the range before)."""
    data = BOUNDARY_MANIFESTS[name]
    (tmp_path / name).write_bytes(data)
    spec = str(tmp_path / name)
    whole = _listed(spec, 1 << 30)
    for split_bytes in range(1, len(data) + 1):
        assert _listed(spec, split_bytes) == whole, split_bytes
    assert whole == BOUNDARY_LISTED[name]


# what one piece lists (order keys: byte offsets of the rows' lines, the BOM included)
BOUNDARY_LISTED = {
    # the unquoted middle line of a three-line field reads as a row of its own
    "quoted_break.csv": [("a", "/a.jpg", (0, f"{13:015d}")), "bad_row", "bad_row", "bad_row",
                         ("f", "f", (0, f"{40:015d}")), "bad_row", ("d", "/d.jpg", (0, f"{52:015d}"))],
    "quoted_header.csv": [("a", "/a.jpg", (0, f"{21:015d}")), ("b", "/b,c.jpg", (0, f"{33:015d}"))],
    "header_only.csv": [],
    "no_newline.jsonl": [("/\u00e9\u4e2d\U0001F600.jpg", "/\u00e9\u4e2d\U0001F600.jpg", (0, f"{0:015d}")),
                         ("/\u4e2d.jpg", "/\u4e2d.jpg", (0, f"{30:015d}"))],
}
