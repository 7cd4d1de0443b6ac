"""Parquet with the image bytes inline (img2dataset's output: columns ``jpg``, ``key``, ``url``) -> ImageBytes.

INPUT form: ``parquet+bytes://PATH[?bytes=COL&id=COL&url=COL]``, PATH a local path or fsspec URL of a file or a
glob. One worker element per (file, row group); each row group is read in batches of the three columns only,
so memory is bounded by a batch. image_id is the id column (or ``<file name>/<row>`` when the file has none);
a row without bytes or id, or over the size limit, is its own failure row; a corrupt row group one row naming
how many rows it lost.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq

from core.files import printable_id
from transforms.reading import DEFAULT_MAX_BYTES
from transforms.records import FAILED
from transforms.sources.shards import SampleReader, expand_files, open_input, source_failure
from transforms.spread import ExpandThenRead

SCHEME = "parquet+bytes://"
BATCH_ROWS = 256  # rows of inline images per batch: ~50 MB at img2dataset's ~200 KB per image


@dataclass(frozen=True)
class Columns:
    bytes: str = "jpg"
    id: str = "key"
    url: str = "url"


def is_inline_parquet(spec: str) -> bool:
    return spec.startswith(SCHEME)


def parse_spec(spec: str) -> tuple[str, Columns]:
    """``parquet+bytes://PATH?bytes=..&id=..&url=..`` -> (PATH, Columns); an unknown option is a ValueError."""
    rest = spec[len(SCHEME):]
    path, _, query = rest.partition("?")
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - {"bytes", "id", "url"}
    if unknown:
        raise ValueError(f"{spec}: unknown option(s) {sorted(unknown)} (known: bytes, id, url)")
    return path, Columns(**options)


class ExpandRowGroups(beam.DoFn):
    """(index, spec) -> (index, file uri, file name, row group, first row number, columns) per row group, or
    failures."""

    def process(self, element: tuple[int, str]) -> Iterator[Any]:
        index, spec = element
        try:
            path, columns = parse_spec(spec)
            items = list(expand_files(path))
        except Exception as e:
            yield beam.pvalue.TaggedOutput(FAILED, source_failure(spec, spec, "bad_input", f"{type(e).__name__}: {e}"))
            return
        for item in items:
            if isinstance(item, dict):
                yield beam.pvalue.TaggedOutput(FAILED, item)
                continue
            uri, name = item
            try:
                with open_input(uri) as f:
                    pf = pq.ParquetFile(f)
                    names = pf.schema_arrow.names
                    groups = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
            except Exception as e:  # not Parquet, a truncated footer, missing
                yield beam.pvalue.TaggedOutput(FAILED, source_failure(name, uri, "bad_manifest",
                                                                      f"{uri}: not a readable Parquet file: {e}"))
                continue
            if columns.bytes not in names:
                yield beam.pvalue.TaggedOutput(FAILED, source_failure(
                    name, uri, "no_bytes_column", f"{uri}: no {columns.bytes!r} column (columns: {names}); "
                                                  f"name it with ?bytes=COLUMN"))
                continue
            if not groups or not sum(groups):
                yield beam.pvalue.TaggedOutput(FAILED, source_failure(name, uri, "no_images", f"{uri}: no rows"))
            first = 0
            for group, rows in enumerate(groups):
                yield index, uri, name, group, first, columns
                first += rows


class ReadRowGroup(SampleReader):
    """One row group -> ImageBytes per good row, a failure row per bad one."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(max_bytes)

    def process(self, element: tuple[int, str, str, int, int, Columns]) -> Iterator[Any]:
        index, uri, name, group, first, columns = element
        number = first
        try:
            with open_input(uri) as f:
                pf = pq.ParquetFile(f)
                names = pf.schema_arrow.names
                wanted = [c for c in (columns.bytes, columns.id, columns.url) if c in names]
                total = pf.metadata.row_group(group).num_rows
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=wanted):
                    for row in batch.to_pylist():
                        yield self._row(row, index, uri, name, number, columns, columns.id in names)
                        number += 1
        except Exception as e:  # a corrupt page: the rest of the row group is unreadable
            yield self.reject(f"{name}/row-group-{group}", uri, "bad_manifest",
                              f"{uri} row group {group} unreadable from row {number} "
                              f"({first + total - number} rows lost): {e}")

    def _row(self, row: dict[str, Any], index: int, uri: str, name: str, number: int, columns: Columns,
             has_id: bool) -> Any:
        key = row.get(columns.id) if has_id else f"{number}"
        url = row.get(columns.url)
        row_uri = url if isinstance(url, str) and url else f"{uri}#row={number}"
        if key is None or key == "":
            return self.reject(f"{name}/row-{number}", row_uri, "missing_id", f"row {number}: empty {columns.id!r}")
        image_id = printable_id(f"{name}/{key}")
        data = row.get(columns.bytes)
        if not data:
            return self.reject(image_id, row_uri, "empty_file", f"row {number}: no bytes in {columns.bytes!r}")
        if not isinstance(data, bytes):
            return self.reject(image_id, row_uri, "bad_row", f"row {number}: {columns.bytes!r} is a "
                                                            f"{type(data).__name__}, not bytes")
        if len(data) > self.max_bytes:
            return self.reject(image_id, row_uri, "too_large",
                              f"row {number}: {len(data)} bytes exceeds the {self.max_bytes}-byte limit")
        return self.accept(image_id, row_uri, data, (index, f"{uri}#{number:012d}"))


class ReadInlineParquet(ExpandThenRead):
    """(index, spec) pairs -> {"bytes", "failed"}, one worker element per row group."""

    def __init__(self, specs: list[tuple[int, str]], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(specs, ExpandRowGroups(), ReadRowGroup(max_bytes), "bytes")
