"""Shared pieces of the pipeline tests: real photos, hand-made image bytes, and reading the output tables (the
fixtures built from them are in tests/conftest.py)."""

from __future__ import annotations

import glob
import io
import struct
import tarfile
import zlib
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from encoders.config import TINY_CONFIG as ENCODER_TINY
from encoders.regions.config_files import TINY_CONFIG as DETECTOR_TINY

REPO = Path(__file__).resolve().parent.parent
DEMO_IMAGES = REPO / "jobs" / "demo_data" / "images"
TINY_ENCODER = str(ENCODER_TINY)  # the tiny models' configs as command-line and EmbedJob values
TINY_DETECTOR = str(DETECTOR_TINY)


def read_table(directory: Path | str) -> list[dict]:
    rows: list[dict] = []
    for name in sorted(glob.glob(f"{directory}/*.parquet")):
        rows += pq.read_table(name).to_pylist()
    return rows


def photo(name: str = "chelsea.jpg", size: int = 96) -> Image.Image:
    img = Image.open(DEMO_IMAGES / name).convert("RGB")
    img.thumbnail((size, size))
    return img


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, bit_depth: int, color_type: int, scanlines: bytes, extra: bytes = b"") -> bytes:
    """A PNG written by hand (for layouts Pillow cannot save: 2/4-bit grey, 16-bit grey+alpha, tRNS on grey/RGB).
    ``scanlines``: the filtered rows (filter byte 0 + packed samples, big-endian); ``extra``: chunks before IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", zlib.compress(scanlines))
            + png_chunk(b"IEND", b""))


def png_with_declared_size(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height, with almost no pixel data: a decompression bomb shape."""
    return raw_png(width, height, 8, 2, b"\0" * 16)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def write_tar(path: Path | str, members: list[tuple[str, bytes]]) -> None:
    """A tar file with ``members`` (name, bytes) in that order: a WebDataset shard."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
