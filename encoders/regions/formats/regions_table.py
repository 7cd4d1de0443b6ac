"""The regions table: region features in Parquet, one row per image.

Written by ``ldot regions`` and by the indexing pipeline with ``--keep-regions``; read back by
:func:`encoders.regions.formats.read_regions`. ``features`` and ``soft_labels`` are flattened row-major and
stored as fp16 (as UNITER stores them); ``num_boxes`` gives the row count, the feature size is
``len(features) / num_boxes``. ``attr_ids`` / ``attr_conf`` (optional, version 2): each region's attribute in
the original Caffe order (see :class:`encoders.regions.Regions`); files without them (version 1) read the same,
with no attributes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.files import printable_id
from core.paths import parquet_files
from encoders.regions.formats.bad_records import BAD_RECORD, BadRecord, RegionItem, strict
from encoders.regions.types import Regions

REGIONS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("num_boxes", pa.int32(), nullable=False),
        pa.field("features", pa.list_(pa.float16()), nullable=False),
        pa.field("norm_bb", pa.list_(pa.float32()), nullable=False),
        pa.field("boxes", pa.list_(pa.float32()), nullable=False),
        pa.field("conf", pa.list_(pa.float32()), nullable=False),
        pa.field("soft_labels", pa.list_(pa.float16())),
        pa.field("attr_ids", pa.list_(pa.int16())),
        pa.field("attr_conf", pa.list_(pa.float32())),
    ],
    metadata={b"lightningdot_index.table": b"regions", b"lightningdot_index.regions_version": b"2"},
)


def regions_to_row(image_id: str, uri: str | None, regions: Regions, with_soft_labels: bool = True) -> dict:
    """One table row (plain Python/numpy values) for :data:`REGIONS_SCHEMA`."""
    soft = None
    if with_soft_labels and regions.soft_labels is not None:
        soft = regions.soft_labels.astype(np.float16).reshape(-1)
    return {
        "image_id": str(image_id),
        "uri": None if uri is None else str(uri),
        "width": int(regions.width),
        "height": int(regions.height),
        "num_boxes": int(regions.num_boxes),
        "features": regions.features.astype(np.float16).reshape(-1),
        "norm_bb": regions.norm_bb.astype(np.float32).reshape(-1),
        "boxes": regions.boxes.astype(np.float32).reshape(-1),
        "conf": regions.conf.astype(np.float32).reshape(-1),
        "soft_labels": soft,
        "attr_ids": None if regions.attr_ids is None else regions.attr_ids.astype(np.int16),
        "attr_conf": None if regions.attr_conf is None else regions.attr_conf.astype(np.float32),
    }


def _as_array(value, dtype) -> np.ndarray:
    if value is None:
        return None
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return value.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return np.asarray(value, dtype=dtype)


def row_to_regions(row: dict) -> Regions:
    """Inverse of :func:`regions_to_row` (fp16 columns come back as float32)."""
    n = int(row["num_boxes"])
    feats = _as_array(row["features"], np.float32)
    if n == 0:
        feats = feats.reshape(0, 2048 if feats.size == 0 else -1)
    else:
        if feats.size % n:
            raise ValueError(f"{row.get('image_id')}: {feats.size} feature values do not split into {n} boxes")
        feats = feats.reshape(n, -1)
    soft = _as_array(row.get("soft_labels"), np.float32)
    if soft is not None:
        soft = soft.reshape(n, -1) if n else soft.reshape(0, 1601)
    return Regions(
        features=feats,
        boxes=_as_array(row["boxes"], np.float32).reshape(n, 4),
        norm_bb=_as_array(row["norm_bb"], np.float32).reshape(n, 6),
        conf=_as_array(row["conf"], np.float32).reshape(n),
        soft_labels=soft,
        width=int(row["width"]),
        height=int(row["height"]),
        attr_ids=_as_array(row.get("attr_ids"), np.int32),
        attr_conf=_as_array(row.get("attr_conf"), np.float32),
    )


def rows_to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=REGIONS_SCHEMA)


# Rows per Parquet row group. A re-ranker fetching one image (regions_lookup) decodes its whole row group's
# feature chunk (up to 400 KB of fp16 per image), so each image is its own group: measured fetching 20 of 300
# images (10..100 boxes), 1 row per group took 207 ms, 4 rows 724 ms, 16 rows 1755 ms, with full scans
# unchanged (2.1 s vs 2.6 s at 16) for ~9% more bytes and ~1 KB of footer per row (read once per file).
ROW_GROUP_ROWS = 1


class RegionsWriter:
    """Writes ``<dir>/<prefix>-00000.parquet``, ``-00001`` ... with at most ``rows_per_file`` rows each, in row
    groups of :data:`ROW_GROUP_ROWS`, and on close the image_id map that serves lookups
    (:mod:`encoders.regions.formats.regions_lookup`)."""

    def __init__(self, directory: str | Path, prefix: str = "regions", rows_per_file: int = 1000,
                 with_soft_labels: bool = True):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.rows_per_file = max(1, int(rows_per_file))
        self.with_soft_labels = with_soft_labels
        self._rows: list[dict] = []
        self.files: list[Path] = []
        self.count = 0

    def write(self, image_id: str, uri: str | None, regions: Regions) -> None:
        self._rows.append(regions_to_row(image_id, uri, regions, self.with_soft_labels))
        self.count += 1
        if len(self._rows) >= self.rows_per_file:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        path = self.directory / f"{self.prefix}-{len(self.files):05d}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(rows_to_table(self._rows), tmp, row_group_size=ROW_GROUP_ROWS)
        tmp.replace(path)
        self.files.append(path)
        self._rows = []

    def close(self) -> None:
        self.flush()
        if self.files:
            from encoders.regions.formats.regions_lookup import write_regions_map

            write_regions_map(str(self.directory))

    def __enter__(self) -> RegionsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


PART_ROWS = 256  # rows of a regions table read by one worker (row groups are single rows: see ROW_GROUP_ROWS)
REGIONS_COLUMNS = {"image_id", "num_boxes", "features", "norm_bb", "boxes", "conf", "width", "height"}


def regions_parquet_parts(path: str | Path, part_rows: int | None = None) -> Iterator[tuple[str, int, int, int]]:
    """``(file, first row group, end row group, rows before it)`` per run of row groups of about ``part_rows``
    (``PART_ROWS``) rows, for a file or a directory of parts: each read by a worker. A file that is not a regions
    table raises."""
    import fsspec

    part_rows = part_rows or PART_ROWS
    for file in parquet_files(str(path)):
        with fsspec.open(file, "rb") as f:
            pf = pq.ParquetFile(f)
            missing = REGIONS_COLUMNS - set(pf.schema_arrow.names)
            if missing:
                raise ValueError(f"{file}: not a regions table (missing columns {sorted(missing)})")
            first_group, first_row, rows = 0, 0, 0
            for group in range(pf.num_row_groups):
                rows += pf.metadata.row_group(group).num_rows
                if rows - first_row >= part_rows or group == pf.num_row_groups - 1:
                    yield file, first_group, group + 1, first_row
                    first_group, first_row = group + 1, rows


def iter_regions_row_groups(file: str, first_group: int, end_group: int, first_row: int = 0,
                            batch_rows: int = 64) -> Iterator[RegionItem]:
    """The records of row groups ``[first_group, end_group)`` of one regions table file; ``first_row``: the rows
    before them (records are named by row number)."""
    import fsspec

    with fsspec.open(file, "rb") as f:
        pf = pq.ParquetFile(f)
        start = first_row
        for group in range(first_group, end_group):
            row_number = start
            try:
                for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group]):
                    for row in batch_rows_of(batch):
                        row_number += 1
                        yield _row_item(row, f"{file} row {row_number}")
            except Exception as exc:  # a corrupt page: the rest of this row group is lost, and said so
                yield BadRecord(f"{file}:row-group-{group}", BAD_RECORD,
                                f"{file} row group {group} unreadable after row {row_number}: {exc}")
            start += pf.metadata.row_group(group).num_rows


def iter_regions_parquet(path: str | Path, batch_rows: int = 64) -> Iterator[RegionItem]:
    """``(image_id, Regions)`` from a regions table file or a directory of parts (sorted by name), one row group
    at a time; a row that does not make Regions, or a row group that cannot be read, is a ``BadRecord`` and
    reading goes on. (A file that is not a regions table is an error.)"""
    for file, first_group, end_group, first_row in regions_parquet_parts(path):
        yield from iter_regions_row_groups(file, first_group, end_group, first_row, batch_rows)


def batch_rows_of(batch: pa.RecordBatch | pa.Table) -> Iterator[dict]:
    """Rows as dicts for :func:`row_to_regions`: list columns stay Arrow arrays (no Python float lists)."""
    cols = {name: batch.column(name) for name in batch.schema.names}
    for i in range(batch.num_rows):
        row = {}
        for name, col in cols.items():
            scalar = col[i]
            if isinstance(scalar, (pa.ListScalar, pa.LargeListScalar, pa.FixedSizeListScalar)):
                row[name] = scalar.values if scalar.is_valid else None
            else:
                row[name] = scalar.as_py()
        yield row


def _row_item(row: dict, where: str) -> RegionItem:
    image_id = row.get("image_id")
    if not isinstance(image_id, str) or not image_id:
        return BadRecord(where, BAD_RECORD, f"{where}: image_id is {image_id!r}")
    try:
        return printable_id(image_id), row_to_regions(row)
    except Exception as exc:  # a null array, counts that do not split, a wrong type
        return BadRecord(printable_id(image_id), BAD_RECORD, f"{where}: {type(exc).__name__}: {exc}")


def read_regions_parquet(path: str | Path, batch_rows: int = 64) -> Iterator[tuple[str, Regions]]:
    """Like :func:`iter_regions_parquet`, raising ``ValueError`` (naming the row) at the first bad row."""
    yield from strict(iter_regions_parquet(path, batch_rows))
