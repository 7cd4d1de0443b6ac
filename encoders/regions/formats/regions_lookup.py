"""Region features served by image_id, for re-ranking: only the requested images' row groups are read.

A regions Parquet directory (``ldot regions``, or the pipeline's ``--keep-regions`` output) gets a map file
``<dir>/_regions_map.arrow`` (Arrow IPC; a leading ``_`` keeps it out of Parquet readers and globs) with one
row per image: ``image_id`` (sorted), ``file`` (index into the map's file list), ``row_group`` and ``row`` (the
row within that group). It is built from the ``image_id`` column only, and it records every table file's name and
size: a map whose file list no longer matches the directory (a rerun, a nightly append) is stale and is rebuilt.

    write_regions_map("out/regions")                 # what the launcher calls after a --keep-regions run
    store = open_region_store("gs://bucket/out/regions")   # or a UNITER image DB directory (LMDB)
    found = store.fetch(["img-1", "img-7"])          # {image_id: Regions}; absent ids are left out

Fetching M candidates reads, per distinct row group, the column chunks of the columns a re-ranker needs
(``soft_labels``, the largest column, is never read), through fsspec, so the cost is set by the table's row
group size: :class:`encoders.regions.formats.regions_table.RegionsWriter` writes small row groups for this reason.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import UsageError
from core.paths import parquet_files
from encoders.regions.formats.regions_table import batch_rows_of, row_to_regions
from encoders.regions.types import Regions

log = logging.getLogger(__name__)

MAP_NAME = "_regions_map.arrow"
MAP_VERSION = "1"
FETCH_COLUMNS = ("image_id", "width", "height", "num_boxes", "features", "norm_bb", "boxes", "conf")


class RegionsLookupError(UsageError):
    """A regions source that cannot serve lookups (no table files, a map that does not match its table)."""


class RegionStore(Protocol):
    source: str  # where the regions come from (directory, URL or image DB), for reports

    def fetch(self, image_ids: Sequence[str]) -> dict[str, Regions]:
        """The regions of every requested image that the store holds; absent ids are left out."""
        ...

    def close(self) -> None:
        ...


def _table_files(directory: str) -> tuple[fsspec.AbstractFileSystem, str, dict[str, int]]:
    """(filesystem, root path, {relative name: size}) of the table's Parquet files, sorted by name."""
    fs, root = fsspec.core.url_to_fs(directory)
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise RegionsLookupError(f"{directory}: not a directory of regions Parquet files")
    paths = [fs._strip_protocol(f) for f in parquet_files(directory, missing=RegionsLookupError)]
    return fs, root, {posixpath.relpath(p, root): int(n) for p, n in zip(paths, fs.sizes(paths), strict=True)}


def build_regions_map(directory: str) -> pa.Table:
    """Scan the ``image_id`` column of every table file (row group by row group) into a lookup table.

    An image_id found twice keeps its first row (files in name order) and is counted in the map's metadata.
    """
    fs, root, files = _table_files(directory)
    ids, file_idx, groups, rows = [], [], [], []
    for f_i, name in enumerate(files):
        with fs.open(f"{root}/{name}", "rb") as fh:
            pf = pq.ParquetFile(fh)
            if "image_id" not in pf.schema_arrow.names:
                raise RegionsLookupError(f"{directory}/{name}: not a regions table (no image_id column)")
            for g in range(pf.metadata.num_row_groups):
                column = pf.read_row_group(g, columns=["image_id"]).column("image_id")
                ids.append(column)
                n = len(column)
                file_idx.append(np.full(n, f_i, np.int32))
                groups.append(np.full(n, g, np.int32))
                rows.append(np.arange(n, dtype=np.int32))
    image_ids = pa.chunked_array(ids, pa.string()).combine_chunks() if ids else pa.array([], pa.string())
    table = pa.table({"image_id": image_ids, "file": np.concatenate(file_idx), "row_group": np.concatenate(groups),
                      "row": np.concatenate(rows)})
    table = table.take(pc.sort_indices(table, [("image_id", "ascending"), ("file", "ascending"),
                                                       ("row_group", "ascending"), ("row", "ascending")]))
    keep = np.ones(table.num_rows, dtype=bool)
    sorted_ids = table.column("image_id").to_numpy(zero_copy_only=False)
    if len(sorted_ids) > 1:
        keep[1:] = sorted_ids[1:] != sorted_ids[:-1]
    duplicates = int((~keep).sum())
    if duplicates:
        log.warning("%s: %d image_id(s) appear in more than one row; the first (by file name) is served",
                    directory, duplicates)
        table = table.filter(pa.array(keep))
    meta = {"version": MAP_VERSION, "files": [{"name": n, "bytes": b} for n, b in files.items()],
            "duplicates": duplicates}
    return table.replace_schema_metadata({b"lightningdot_index.regions_map": json.dumps(meta).encode()})


def write_regions_map(directory: str) -> dict:
    """Build the map of a regions directory and write it beside the table (local path or fsspec URL).

    Returns a summary (images, files, duplicates, path) for the run report. Called after a ``--keep-regions``
    run; :func:`open_region_store` also calls it when the map is absent or stale.
    """
    table = build_regions_map(directory)
    fs, root = fsspec.core.url_to_fs(directory)
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    path = f"{root.rstrip('/')}/{MAP_NAME}"
    tmp = f"{path}.tmp"
    with fs.open(tmp, "wb") as f:
        f.write(sink.getvalue())
    fs.mv(tmp, path)
    meta = _map_meta(table)
    return {"path": f"{directory.rstrip('/')}/{MAP_NAME}", "images": table.num_rows, "files": len(meta["files"]),
            "duplicates": meta["duplicates"]}


def _map_meta(table: pa.Table) -> dict:
    raw = (table.schema.metadata or {}).get(b"lightningdot_index.regions_map")
    if raw is None:
        raise RegionsLookupError("not a regions map (no lightningdot_index.regions_map metadata)")
    return json.loads(raw)


def read_regions_map(directory: str) -> pa.Table | None:
    """The map written beside the table, or None when there is none."""
    fs, root = fsspec.core.url_to_fs(directory)
    path = f"{root.rstrip('/')}/{MAP_NAME}"
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return pa.ipc.open_file(pa.BufferReader(f.read())).read_all()


class ParquetRegionStore:
    """Lookups in a regions Parquet directory through its map (built, and written if possible, when needed)."""

    def __init__(self, directory: str, table: pa.Table) -> None:
        self.directory = self.source = directory
        self.fs, self.root = fsspec.core.url_to_fs(directory)
        self.root = self.root.rstrip("/")
        meta = _map_meta(table)
        self.files = [f["name"] for f in meta["files"]]
        self._ids = table.column("image_id").combine_chunks()
        self._file = table.column("file").to_numpy()
        self._group = table.column("row_group").to_numpy()
        self._row = table.column("row").to_numpy()
        self._footers: dict[int, pq.FileMetaData] = {}  # read once per file, not once per fetch

    @classmethod
    def open(cls, directory: str, write_map: bool = True) -> ParquetRegionStore:
        directory = str(directory)
        table = read_regions_map(directory)
        _, _, files = _table_files(directory)
        current = [{"name": n, "bytes": b} for n, b in files.items()]
        if table is None or _map_meta(table).get("files") != current:
            why = "no map" if table is None else "the map is stale (the table files changed)"
            log.info("%s: %s; indexing its image_id column", directory, why)
            if write_map:
                try:
                    write_regions_map(directory)
                    table = read_regions_map(directory)
                except OSError as e:  # a read-only location still serves, from a map held in memory
                    log.warning("%s: cannot write %s (%s); using an in-memory map", directory, MAP_NAME, e)
                    table = build_regions_map(directory)
            else:
                table = build_regions_map(directory)
        assert table is not None
        return cls(directory, table)

    def __len__(self) -> int:
        return len(self._ids)

    def _positions(self, image_ids: Sequence[str]) -> np.ndarray:
        """Map row of each id, -1 when absent."""
        if not len(self._ids):
            return np.full(len(image_ids), -1, dtype=np.int64)
        wanted = pa.array(list(image_ids), pa.string())
        return np.asarray(pc.index_in(wanted, value_set=self._ids).fill_null(-1).to_numpy(), dtype=np.int64)

    def __contains__(self, image_id: str) -> bool:
        return bool(self._positions([image_id])[0] >= 0)

    def fetch(self, image_ids: Sequence[str]) -> dict[str, Regions]:
        pos = self._positions(image_ids)
        by_group: dict[tuple[int, int], list[tuple[str, int]]] = defaultdict(list)
        for image_id, p in zip(image_ids, pos, strict=True):
            if p >= 0:
                by_group[(int(self._file[p]), int(self._group[p]))].append((image_id, int(self._row[p])))
        out: dict[str, Regions] = {}
        by_file: dict[int, list[int]] = defaultdict(list)
        for f_i, g in sorted(by_group):
            by_file[f_i].append(g)
        for f_i, groups in by_file.items():
            name = self.files[f_i]
            with self.fs.open(f"{self.root}/{name}", "rb") as fh:
                pf = pq.ParquetFile(fh, metadata=self._footers.get(f_i))
                self._footers[f_i] = pf.metadata
                columns = [c for c in FETCH_COLUMNS if c in pf.schema_arrow.names]
                for g in groups:
                    wanted = by_group[(f_i, g)]
                    table = pf.read_row_group(g, columns=columns).take(pa.array([r for _, r in wanted]))
                    for (image_id, _), row in zip(wanted, batch_rows_of(table), strict=True):
                        if row["image_id"] != image_id:
                            raise RegionsLookupError(
                                f"{self.directory}/{name} row group {g} holds {row['image_id']!r} where the map "
                                f"says {image_id!r}: the map is out of date; delete {MAP_NAME} to rebuild it")
                        out[image_id] = row_to_regions(row)
        return out

    def close(self) -> None:
        """Nothing stays open between fetches."""


class UniterRegionStore:
    """Lookups in a UNITER image DB (LMDB), keyed by the DB's names (the image_ids ``ldot index --regions``
    gives such images). Local paths only: LMDB maps its file into memory."""

    def __init__(self, path: str | Path, conf_th: float = 0.2, max_bb: int = 100, min_bb: int = 10) -> None:
        from encoders.regions.formats.uniter_lmdb import UniterImageDB

        self.db = UniterImageDB(path, conf_th, max_bb, min_bb)
        self.source = str(self.db.path)

    def fetch(self, image_ids: Sequence[str]) -> dict[str, Regions]:
        out = {}
        for image_id in image_ids:
            regions = self.db.get(image_id)
            if regions is not None:
                out[image_id] = regions
        return out

    def close(self) -> None:
        self.db.close()


def open_region_store(path: str | Path, write_map: bool = True) -> RegionStore:
    """A regions Parquet directory (local or fsspec URL) or a UNITER image DB directory."""
    from encoders.regions.formats import detect_format

    text = str(path)
    try:
        fmt = detect_format(text)
    except (FileNotFoundError, ValueError) as e:  # absent, or a directory of neither format
        raise RegionsLookupError(str(e)) from e
    if fmt == "uniter":
        return UniterRegionStore(text.removeprefix("file://"))
    if fmt != "parquet":
        raise RegionsLookupError(f"{path}: re-ranking reads regions Parquet directories or UNITER image DBs, "
                                 f"not {fmt} files (convert with `ldot regions`)")
    return ParquetRegionStore.open(text.removeprefix("file://"), write_map=write_map)
