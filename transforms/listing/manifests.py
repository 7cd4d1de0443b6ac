"""Manifests (CSV, JSONL, Parquet): rows with ``uri`` and optional ``image_id``, cut into parts that workers read
in parallel, each part streamed in bounded memory. Each bad row is its own failure row naming where it is; the
good rows go on. Relative uris are taken as given.

A manifest is split where it is named (its size, CSV header or Parquet footer read once) into ``TextRange``s of
``SPLIT_BYTES`` (CSV/JSONL; a line belongs to the range its first byte is in, as in Beam's textio) or one
``RowGroup`` per Parquet row group; the Reshuffle after the split spreads them over workers. Not Beam's
``ReadFromText``/``ReadFromParquet``: they fail the whole pipeline at a bad row or row group, and give neither a
row's position nor a bound on a line's length. A row of a Parquet manifest is named by its row number. A CSV/JSONL
row in the first range is named by its line number (``FILE:LINE``, "line N"); past the first range line numbers
are not known without reading everything before, so rows there are named by the byte offset their line starts at
(``FILE:byte-OFFSET``, "line at byte OFFSET"). A CSV record is one line, as in textio: a range cannot tell a line
that continues a quoted field begun in the range before from a row, so a quoted field holding a line break is a
failure row (each of its lines with an odd number of quotes) wherever the split falls, the same in one piece.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
import pyarrow.parquet as pq

from core.files import (
    BoundedLines,
    LineTooLong,
    align_to_line,
    is_local,
    is_utf8,
    local_path,
    local_uri,
    open_regular,
    printable_id,
)
from transforms.listing.common import Listed, ListError, list_failure
from transforms.records import ImageRef

MAX_MANIFEST_LINE = 1 << 20  # bytes; a longer CSV/JSONL line is a failure row, not a memory blow-up
PARQUET_BATCH_ROWS = 8192  # rows per batch: memory stays bounded however many rows a manifest holds
SPLIT_BYTES = 32 << 20  # a CSV/JSONL manifest is read in ranges of this size (~250k rows of ~130 bytes) by workers


@dataclass(frozen=True)
class TextRange:
    """The rows of a CSV/JSONL manifest whose line starts in bytes [start, end). ``header``: the CSV's column names
    (read when the manifest was split); ``first_line``: the line number at ``start`` where known (the first range)."""

    spec: str
    index: int
    start: int
    end: int
    header: tuple[str, ...] | None = None
    first_line: int | None = None


@dataclass(frozen=True)
class RowGroup:
    """One row group of a Parquet manifest; ``first_row``: the number of the row before it (rows count from 1)."""

    spec: str
    index: int
    group: int
    first_row: int
    rows: int
    columns: tuple[str, ...]


ManifestPart = TextRange | RowGroup


def read_manifest(spec: str, index: int) -> Iterator[Listed]:
    """Every row of a manifest, its parts read one after the other (in one element: see ``split_manifest``)."""
    for part in split_manifest(spec, index):
        yield from read_part(part)


def split_manifest(spec: str, index: int, split_bytes: int = SPLIT_BYTES) -> Iterator[ManifestPart]:
    """The parts of one manifest; a manifest that cannot be read at all (not there, not a regular file, not
    Parquet, no ``uri`` column, an unreadable CSV header) raises ``ListError``/``OSError``."""
    with _open_manifest(spec) as f:
        if spec.lower().endswith(".parquet"):
            yield from _row_groups(f, spec, index)
            return
        size = _size(f, spec)
        start, header, first_line = 0, None, 1
        if spec.lower().endswith(".csv"):
            lines = BoundedLines(f, MAX_MANIFEST_LINE)
            header = _csv_header(lines, spec)
            start, first_line = lines.position, lines.number + 1
    for begin in range(start, size, max(1, split_bytes)):
        yield TextRange(spec, index, begin, min(size, begin + split_bytes), header,
                        first_line if begin == start else None)


def read_part(part: ManifestPart) -> Iterator[Listed]:
    """The ImageRefs and failure rows of one part."""
    if isinstance(part, RowGroup):
        yield from _read_row_group(part)
        return
    with _open_manifest(part.spec) as f:
        lines = BoundedLines(f, MAX_MANIFEST_LINE, align_to_line(f, part.start, MAX_MANIFEST_LINE), part.end)
        rows = _jsonl_rows(lines) if part.header is None else _csv_rows(lines, list(part.header))
        for row in rows:
            if part.first_line is not None:
                number = part.first_line + lines.number - 1
                where, name = f"line {number}", f"{part.spec}:{number}"
            else:
                where, name = f"line at byte {lines.offset}", f"{part.spec}:byte-{lines.offset}"
            yield _row_to_ref(part.spec, part.index, row, where, name, f"{lines.offset:015d}")


def _open_manifest(spec: str) -> BinaryIO:
    if is_local(spec):
        return open_regular(local_path(spec))
    fs, path = fsspec.core.url_to_fs(spec)
    return fs.open(path, "rb")


def _size(f: BinaryIO, spec: str) -> int:
    if is_local(spec):
        return os.fstat(f.fileno()).st_size
    fs, path = fsspec.core.url_to_fs(spec)
    return int(fs.size(path))


class _BadRow:
    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message


def _row_to_ref(spec: str, index: int, row: Any, where: str, name: str, order: str) -> Listed:
    problem = _row_problem(row)
    if problem is not None:
        kind, message = problem
        return list_failure(name, spec, kind, f"{spec} {where}: {message}")
    uri, image_id = row["uri"], row.get("image_id")
    if is_local(uri):
        uri = local_uri(uri)
    image_id = uri if image_id is None or image_id == "" else str(image_id)
    return ImageRef(printable_id(image_id), uri, (index, order))


def _row_problem(row: Any) -> tuple[str, str] | None:
    """(kind, message) of a manifest row that names no image, else None."""
    if isinstance(row, _BadRow):
        return row.kind, row.message
    if not isinstance(row, dict):
        return "bad_row", f"a JSON {type(row).__name__}, not an object with a 'uri'"
    uri, image_id = row.get("uri"), row.get("image_id")
    if uri is None or (isinstance(uri, str) and not uri.strip()):
        return "missing_uri", "empty or missing 'uri'"
    if not isinstance(uri, str):
        return "bad_row", f"'uri' is a {type(uri).__name__}, not a string"
    if image_id is not None and not isinstance(image_id, str | int):
        return "bad_row", f"'image_id' is a {type(image_id).__name__}, not a string"
    if not is_local(uri) and not is_utf8(uri):
        return "bad_row", f"'uri' {printable_id(uri)} is not valid UTF-8"
    return None


def _lines(lines: BoundedLines) -> Iterator[str | _BadRow]:
    """Each line, or a ``line_too_long`` row in place of one over the bound (reading goes on after it)."""
    while True:
        try:
            yield next(lines)
        except StopIteration:
            return
        except LineTooLong as e:
            yield _BadRow("line_too_long", str(e))


def _jsonl_rows(lines: BoundedLines) -> Iterator[Any]:
    for line in _lines(lines):
        if isinstance(line, _BadRow):
            yield line
            continue
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except ValueError as e:
            yield _BadRow("bad_json", f"not JSON: {e}")
        except RecursionError:
            yield _BadRow("bad_json", "JSON nested too deeply")


def _csv_header(lines: BoundedLines, spec: str) -> tuple[str, ...]:
    try:
        header = [name.strip() for name in next(csv.reader(lines))]
    except StopIteration:
        return ()
    except (LineTooLong, csv.Error) as e:
        raise ListError("bad_manifest", f"{spec}: unreadable CSV header: {e}") from e
    if "uri" not in header:
        raise ListError("no_uri_column", f"{spec}: the CSV header has no 'uri' column (columns: {header})")
    return tuple(header)


def _csv_rows(lines: BoundedLines, header: list[str]) -> Iterator[Any]:
    for line in _lines(lines):
        if isinstance(line, _BadRow):
            yield line
            continue
        if line.count('"') % 2:
            yield _BadRow("bad_row", "an unclosed quote: a quoted field holding a line break is not read (each "
                                     "line of a CSV manifest is one row, whatever the workers split it into)")
            continue
        try:
            fields = next(csv.reader([line]), [])
        except csv.Error as e:
            yield _BadRow("bad_row", f"not CSV: {e}")
            continue
        if not any(field.strip() for field in fields):
            continue
        if len(fields) > len(header):
            yield _BadRow("bad_row", f"{len(fields)} fields for {len(header)} columns")
            continue
        yield dict(zip(header, fields, strict=False))


def _row_groups(f: BinaryIO, spec: str, index: int) -> Iterator[RowGroup]:
    try:
        pf = pq.ParquetFile(f)
    except Exception as e:  # pyarrow's ArrowInvalid: not a Parquet file, or a truncated footer
        raise ListError("bad_manifest", f"{spec}: not a readable Parquet file: {e}") from e
    names = pf.schema_arrow.names
    if "uri" not in names:
        raise ListError("no_uri_column", f"{spec}: no 'uri' column (columns: {names})")
    columns = tuple(c for c in ("uri", "image_id") if c in names)
    first = 0
    for group in range(pf.num_row_groups):
        rows = pf.metadata.row_group(group).num_rows
        yield RowGroup(spec, index, group, first, rows, columns)
        first += rows


def _read_row_group(part: RowGroup) -> Iterator[Listed]:
    """One row group in batches: a manifest of a million rows that compresses to kilobytes streams in bounded
    memory, and a corrupt row group costs its own rows (one failure row says which)."""
    number = part.first_row
    try:
        with _open_manifest(part.spec) as f:
            batches = pq.ParquetFile(f).iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[part.group],
                                                     columns=list(part.columns))
            for batch in batches:
                for row in batch.to_pylist():
                    number += 1
                    yield _row_to_ref(part.spec, part.index, row, f"row {number}", f"{part.spec}:{number}",
                                      f"{number:015d}")
    except Exception as e:  # a corrupt page: the rest of this row group is unreadable
        lost = part.first_row + part.rows - number
        yield _row_to_ref(part.spec, part.index, _BadRow(
            "bad_manifest", f"row group {part.group} unreadable from here ({lost} rows lost): {e}"),
            f"row {number + 1}", f"{part.spec}:{number + 1}", f"{number + 1:015d}")
