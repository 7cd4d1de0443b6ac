"""Manifests (CSV, JSONL, Parquet): rows with ``uri`` and optional ``image_id``, read as a stream in bounded
memory. Each bad row is its own failure row naming where it is; the good rows go on."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

import fsspec
import pyarrow.parquet as pq

from core.files import (
    BoundedLines,
    LineTooLong,
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



def read_manifest(spec: str, index: int) -> Iterator[Listed]:
    """Rows with ``uri`` and optional ``image_id`` (.csv, .jsonl, .parquet), read as a stream. Each bad row (no
    uri, not JSON, not an object, a line over ``MAX_MANIFEST_LINE`` bytes) is its own failure row naming its line
    (row, for Parquet); the good rows go on. Relative uris are taken as given."""
    lower = spec.lower()
    with _open_manifest(spec) as f:
        if lower.endswith(".parquet"):
            rows, unit = _parquet_rows(f, spec), "row"
        elif lower.endswith(".csv"):
            rows, unit = _csv_rows(f, spec), "line"
        else:
            rows, unit = _jsonl_rows(f), "line"
        for number, row in rows:
            yield _row_to_ref(spec, index, number, row, unit)


def _open_manifest(spec: str) -> BinaryIO:
    if is_local(spec):
        return open_regular(local_path(spec))
    fs, path = fsspec.core.url_to_fs(spec)
    return fs.open(path, "rb")


class _BadRow:
    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message


def _row_to_ref(spec: str, index: int, number: int, row: Any, unit: str) -> Listed:
    problem = _row_problem(row)
    if problem is not None:
        kind, message = problem
        return list_failure(f"{spec}:{number}", spec, kind, f"{spec} {unit} {number}: {message}")
    uri, image_id = row["uri"], row.get("image_id")
    if is_local(uri):
        uri = local_uri(uri)
    image_id = uri if image_id is None or image_id == "" else str(image_id)
    return ImageRef(printable_id(image_id), uri, (index, f"{number:012d}"))


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


def _jsonl_rows(f: BinaryIO) -> Iterator[tuple[int, Any]]:
    lines = BoundedLines(f, MAX_MANIFEST_LINE)
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except LineTooLong as e:
            yield lines.number, _BadRow("line_too_long", str(e))
            continue
        if not line.strip():
            continue
        try:
            yield lines.number, json.loads(line)
        except ValueError as e:
            yield lines.number, _BadRow("bad_json", f"not JSON: {e}")
        except RecursionError:
            yield lines.number, _BadRow("bad_json", "JSON nested too deeply")


def _csv_rows(f: BinaryIO, spec: str) -> Iterator[tuple[int, Any]]:
    lines = BoundedLines(f, MAX_MANIFEST_LINE)
    reader = csv.reader(lines)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    except (LineTooLong, csv.Error) as e:
        raise ListError("bad_manifest", f"{spec}: unreadable CSV header: {e}") from e
    if "uri" not in header:
        raise ListError("no_uri_column", f"{spec}: the CSV header has no 'uri' column (columns: {header})")
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except LineTooLong as e:
            yield lines.number, _BadRow("line_too_long", str(e))
            continue
        except csv.Error as e:
            yield lines.number, _BadRow("bad_row", f"not CSV: {e}")
            continue
        if not any(field.strip() for field in fields):
            continue
        if len(fields) > len(header):
            yield lines.number, _BadRow("bad_row", f"{len(fields)} fields for {len(header)} columns")
            continue
        yield lines.number, dict(zip(header, fields, strict=False))


def _parquet_rows(f: BinaryIO, spec: str) -> Iterator[tuple[int, Any]]:
    """Row groups one at a time, in batches: a manifest of a million rows that compresses to kilobytes streams
    in bounded memory, and a corrupt row group costs its own rows (one failure row says which)."""
    try:
        pf = pq.ParquetFile(f)
    except Exception as e:  # pyarrow's ArrowInvalid: not a Parquet file, or a truncated footer
        raise ListError("bad_manifest", f"{spec}: not a readable Parquet file: {e}") from e
    names = pf.schema_arrow.names
    if "uri" not in names:
        raise ListError("no_uri_column", f"{spec}: no 'uri' column (columns: {names})")
    columns = [c for c in ("uri", "image_id") if c in names]
    number = 0
    for group in range(pf.num_row_groups):
        group_rows = pf.metadata.row_group(group).num_rows
        start = number
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=columns):
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
        except Exception as e:  # a corrupt page: the rest of this row group is unreadable
            yield number + 1, _BadRow("bad_manifest", f"row group {group} unreadable from here "
                                                      f"({start + group_rows - number} rows lost): {e}")
            number = start + group_rows
