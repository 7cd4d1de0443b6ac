"""Region-feature files: the regions Parquet table, UNITER image DBs (LMDB) and BUTD TSV files.

:func:`read_regions` reads any of them and yields ``(image_id, Regions)``; it needs no torch or detectron2.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from encoders.regions.formats.regions_table import (
    REGIONS_SCHEMA,
    RegionsWriter,
    read_regions_parquet,
    regions_to_row,
    row_to_regions,
)
from encoders.regions.types import Regions

__all__ = [
    "REGIONS_SCHEMA",
    "Regions",
    "RegionsWriter",
    "detect_format",
    "read_regions",
    "read_regions_parquet",
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
    with open(p, "rb") as f:
        head = f.read(4)
    return "parquet" if head == b"PAR1" else "tsv"


def read_regions(path: str | Path, **kwargs) -> Iterator[tuple[str, Regions]]:
    """Yield ``(image_id, Regions)`` from a regions Parquet file/directory, a UNITER image DB or a BUTD TSV.

    Extra keyword arguments go to the format's reader (``conf_th``, ``max_bb``, ``min_bb`` for UNITER DBs).
    """
    fmt = detect_format(path)
    if fmt == "parquet":
        yield from read_regions_parquet(str(path).removeprefix("file://"), **kwargs)
    elif fmt == "uniter":
        from encoders.regions.formats.uniter_lmdb import read_uniter_db

        yield from read_uniter_db(str(path).removeprefix("file://"), **kwargs)
    else:
        from encoders.regions.formats.butd_tsv import read_butd_tsv

        yield from read_butd_tsv(str(path), **kwargs)
