"""Decode image bytes into RGB uint8 pixels the way a photo viewer shows them.

EXIF orientation is applied; grayscale, palette, CMYK, 16-bit and alpha images are converted (transparent
areas composited on white, as viewers show them); animated images use their first frame. The pixel count
is checked from the header before any pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from PIL import Image, ImageOps, UnidentifiedImageError

from transforms.records import FAILED, DecodedImage, ImageBytes, failure

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own warning threshold (~ 9459 x 9459)


class DecodeError(ValueError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """bytes -> H x W x 3 uint8 RGB. Raises DecodeError with a kind: not_an_image, too_large, truncated, corrupt."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # we check the limit ourselves
        try:
            try:
                img = Image.open(io.BytesIO(data))
            except UnidentifiedImageError as e:
                raise DecodeError("not_an_image", f"not a recognised image format: {e}") from e
            width, height = img.size
            if width <= 0 or height <= 0:
                raise DecodeError("corrupt", f"declared size {width}x{height}")
            if width * height > max_pixels:
                raise DecodeError("too_large", f"declared size {width}x{height} exceeds {max_pixels} pixels")
            try:
                img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
                pixels = np.asarray(rgb, dtype=np.uint8)
            except OSError as e:
                kind = "truncated" if "truncated" in str(e) or "broken data stream" in str(e) else "corrupt"
                raise DecodeError(kind, f"{img.format} image: {e}") from e
            except (ValueError, SyntaxError, EOFError, IndexError, TypeError) as e:
                raise DecodeError("corrupt", f"{img.format} image: {type(e).__name__}: {e}") from e
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise DecodeError("corrupt", f"decoded to an array of shape {pixels.shape}")
    return np.ascontiguousarray(pixels)


class DecodeImages(beam.DoFn):
    """ImageBytes -> DecodedImage, or a failure row whose ``error`` is the DecodeError kind."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.max_pixels = max_pixels
        self.ok = Metrics.counter("ldot", "decoded")
        self.failed = Metrics.counter("ldot", "failed_decode")

    def process(self, item: ImageBytes) -> Iterator[Any]:
        try:
            pixels = decode_image(item.data, self.max_pixels)
        except DecodeError as e:
            self.failed.inc()
            Metrics.counter("ldot", f"failed_decode_{e.kind}").inc()
            yield beam.pvalue.TaggedOutput(FAILED, failure(item.image_id, item.uri, "decode", e.kind, str(e)))
            return
        except Exception as e:  # anything Pillow raises that we did not foresee still loses nothing
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(
                FAILED, failure(item.image_id, item.uri, "decode", "corrupt", f"{type(e).__name__}: {e}"))
            return
        self.ok.inc()
        h, w = pixels.shape[:2]
        yield DecodedImage(item.image_id, item.uri, item.sha256, pixels, w, h)
