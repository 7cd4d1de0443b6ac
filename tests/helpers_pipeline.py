"""Shared pieces of the pipeline tests: real photos, odd files, and reading the output tables."""

from __future__ import annotations

import glob
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DEMO_IMAGES = REPO / "jobs" / "demo_data" / "images"
TINY_ENCODER = str(REPO / "encoders" / "configs" / "tiny.json")
TINY_DETECTOR = str(REPO / "encoders" / "regions" / "configs" / "tiny.yaml")


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


def make_odd_corpus(root: Path) -> dict[str, str | None]:
    """Write real photos plus broken/odd files. Returns image_id -> expected failure kind (None: embedded)."""
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}
    for name in ("astronaut.jpg", "coffee.jpg", "rocket.jpg"):
        photo(name).save(root / name, quality=90)
        expected[name] = None
    (root / "zero.jpg").write_bytes(b"")
    expected["zero.jpg"] = "empty_file"
    full = encode(photo("astronaut.jpg"), "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    expected["truncated.jpg"] = "truncated"
    (root / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    expected["notes.jpg"] = "not_an_image"
    (root / "bomb.png").write_bytes(png_with_declared_size(100_000, 100_000))
    expected["bomb.png"] = "too_large"
    photo("coffee.jpg").convert("CMYK").save(root / "cmyk.jpg")
    expected["cmyk.jpg"] = None
    gray16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(gray16).save(root / "gray16.png")
    expected["gray16.png"] = None
    pal = photo("rocket.jpg").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(root / "palette_alpha.png", transparency=0)
    expected["palette_alpha.png"] = None
    frames = [photo("chelsea.jpg"), photo("coffee.jpg").resize(photo("chelsea.jpg").size)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    expected["animated.gif"] = None
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "pixel.png")
    expected["pixel.png"] = None
    rgba = photo("astronaut.jpg").convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "rgba.png")
    expected["rgba.png"] = None
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    photo("rocket.jpg").save(root / "rotated.jpg", exif=exif)
    expected["rotated.jpg"] = None
    (root / "x.jpg").mkdir()  # a directory named like an image: listed through, its files are inputs
    photo("coffee.jpg", 48).save(root / "x.jpg" / "inside.png")
    expected["x.jpg/inside.png"] = None
    (root / "dangling.jpg").symlink_to(root / "no-such-target.jpg")
    expected["dangling.jpg"] = "not_found"
    (root / "README.txt").write_text("not an image extension: not an input")
    return expected
