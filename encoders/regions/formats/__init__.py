"""Region-feature files: the regions Parquet table, UNITER image DBs (LMDB) and BUTD TSV files.

:func:`read_regions` reads any of them and yields ``(image_id, Regions)``; it needs no torch or detectron2.
:func:`region_parts` cuts one into parts that workers read with :func:`iter_part_records` (row groups of a
regions table, byte ranges of a TSV, key ranges of a UNITER DB).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.files import open_regular
from encoders.regions.formats.bad_records import BadRecord, RegionItem, first_per_id, strict
from encoders.regions.formats.regions_table import (
    REGIONS_SCHEMA,
    RegionsWriter,
    iter_regions_parquet,
    read_regions_parquet,
    regions_to_row,
    row_to_regions,
)
from encoders.regions.types import Regions

__all__ = [
    "REGIONS_SCHEMA",
    "BadRecord",
    "RegionPart",
    "Regions",
    "RegionsWriter",
    "detect_format",
    "iter_part_records",
    "iter_region_records",
    "read_regions",
    "read_regions_parquet",
    "region_parts",
    "regions_to_row",
    "row_to_regions",
]


def detect_format(path: str | Path) -> str:
    """``"parquet"``, ``"uniter"`` or ``"tsv"`` for a path (fsspec URLs: parquet or tsv by name/content)."""
    text = str(path)
    if "://" in text and not text.startswith("file://"):
        if text.rstrip("/").endswith(".parquet"):
            return "parquet"
        import fsspec

        fs, root = fsspec.core.url_to_fs(text)
        if fs.isdir(root):
            return "parquet"
        with fs.open(root, "rb") as f:
            return "parquet" if f.read(4) == b"PAR1" else "tsv"
    p = Path(text.removeprefix("file://"))
    if not p.exists():
        raise FileNotFoundError(f"region features not found: {path}")
    if p.is_dir():
        if (p / "data.mdb").is_file() or any((c / "data.mdb").is_file() for c in p.iterdir() if c.is_dir()):
            return "uniter"
        if any(p.rglob("*.parquet")):
            return "parquet"
        raise ValueError(f"{path}: a directory with neither .parquet files nor a UNITER LMDB")
    if p.name == "data.mdb":
        return "uniter"
    with open_regular(str(p)) as f:  # a FIFO or a device is refused, not read
        head = f.read(4)
    return "parquet" if head == b"PAR1" else "tsv"


def iter_region_records(path: str | Path, **kwargs) -> Iterator[RegionItem]:
    """``(image_id, Regions)`` or a :class:`BadRecord` per record of a regions Parquet file/directory, a UNITER
    image DB or a BUTD TSV; each image_id once (the first record wins, later ones are ``duplicate_id``).

    Extra keyword arguments go to the format's reader (``conf_th``, ``max_bb``, ``min_bb`` for UNITER DBs).
    A file that cannot be opened at all raises.
    """
    yield from first_per_id(_records(path, **kwargs), str(path))


def read_regions(path: str | Path, **kwargs) -> Iterator[tuple[str, Regions]]:
    """Every record as stored, raising ``ValueError`` at the first malformed one."""
    yield from strict(_records(path, **kwargs))


def _records(path: str | Path, **kwargs) -> Iterator[RegionItem]:
    fmt = detect_format(path)
    local = str(path).removeprefix("file://")
    if fmt == "parquet":
        return iter_regions_parquet(local, **kwargs)
    if fmt == "uniter":
        from encoders.regions.formats.uniter_lmdb import iter_uniter_db

        return iter_uniter_db(local, **kwargs)
    from encoders.regions.formats.butd_tsv import iter_butd_tsv

    return iter_butd_tsv(str(path), **kwargs)


@dataclass(frozen=True)
class RegionPart:
    """A part of a feature file, read by one worker. ``span``: regions table ``(first row group, end row group,
    rows before)`` of ``path`` (one file of the table); TSV ``(start byte, end byte or None)``; UNITER DB
    ``(low key or None, high key or None)``. ``options``: the reader's keyword arguments."""

    fmt: str
    path: str
    span: tuple[Any, ...]
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def order(self) -> tuple[str, Any]:
        """Sorts the parts of one feature file in file order (which record of a repeated id comes first)."""
        return self.path, self.span[0] if self.span[0] is not None else b""


def region_parts(path: str | Path, **kwargs) -> Iterator[RegionPart]:
    """The parts of a regions table file/directory, UNITER image DB or BUTD TSV; a file that cannot be opened (or
    is not of its format) raises. Keyword arguments as for :func:`iter_region_records`."""
    fmt = detect_format(path)
    local = str(path).removeprefix("file://")
    options = tuple(sorted(kwargs.items()))
    if fmt == "parquet":
        from encoders.regions.formats.regions_table import regions_parquet_parts

        for file, *span in regions_parquet_parts(local, **kwargs):
            yield RegionPart(fmt, file, tuple(span))
    elif fmt == "uniter":
        from encoders.regions.formats.uniter_lmdb import UniterImageDB

        with UniterImageDB(local, **kwargs) as db:  # closed before the first part is yielded: LMDB refuses a
            spans = list(db.key_ranges())  # second open of one DB in a process, which reading a part makes
        for span in spans:
            yield RegionPart(fmt, local, span, options)
    else:
        from encoders.regions.formats.butd_tsv import butd_tsv_ranges

        for span in butd_tsv_ranges(str(path)):
            yield RegionPart(fmt, str(path), span)


def iter_part_records(part: RegionPart) -> Iterator[RegionItem]:
    """The records of one part, in file order; a bad record is a ``BadRecord`` and reading goes on."""
    if part.fmt == "parquet":
        from encoders.regions.formats.regions_table import iter_regions_row_groups

        yield from iter_regions_row_groups(part.path, *part.span)
    elif part.fmt == "uniter":
        from encoders.regions.formats.uniter_lmdb import UniterImageDB

        with UniterImageDB(part.path, **dict(part.options)) as db:
            yield from db.records(*part.span)
    else:
        from encoders.regions.formats.butd_tsv import iter_butd_tsv

        yield from iter_butd_tsv(part.path, *part.span)
