"""Decode image bytes into RGB uint8 pixels as the original feature extraction read them.

The features LightningDOT (and UNITER) were trained on come from ``generate_tsv.py`` of the original
bottom-up-attention code, which reads images with ``cv2.imread(path)``: 8-bit BGR, alpha DROPPED (the
colour channels kept as stored, transparent or not). The default (``alpha="drop"``) gives, for PNG and JPEG,
exactly ``cv2.imread(path)[..., ::-1]`` (checked pixel for pixel against opencv-python-headless 5.0.0.93 in
the tests). ``alpha="composite"`` instead shows transparency as a viewer does, on white.

=================================  ========================================  ===================================
input                              what ``cv2.imread`` gives                 what we do (default ``drop``)
=================================  ========================================  ===================================
RGB / YCbCr JPEG (any subsampling,  libjpeg-turbo's decode                    Pillow's (the same libjpeg-turbo
progressive)                                                                  decode: identical)
greyscale JPEG / PNG (1-16 bit)    grey copied into the three channels       same
CMYK / YCCK JPEG                   OpenCV's own CMYK->BGR on the raw          the same formula on the raw values
                                   (Adobe-inverted) values                   (Pillow's differs by up to 1)
RGBA / LA PNG                      alpha dropped                             alpha dropped (``composite``: over
                                                                             white)
palette PNG, with or without       palette colours, transparency dropped     same (``composite``: over white)
transparency (tRNS)
16-bit PNG (grey, RGB, RGBA)       high byte kept (libpng ``strip_16``:       high byte kept (``v >> 8``), not
                                   ``v >> 8``)                               rounded
EXIF orientation (JPEG, PNG)       applied                                   applied (OpenCV older than 3.1
                                                                             ignored it)
other formats (WebP, BMP, GIF,     -- not compared (TIFF with alpha:         Pillow's decode, first frame, the
TIFF)                              OpenCV premultiplies)                     same alpha rule
=================================  ========================================  ===================================

The pixel count is checked from the header before any pixel is decoded, so a decompression bomb costs nothing.
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
ALPHA_MODES = ("drop", "composite")  # drop: as cv2.imread (the original extraction); composite: on white
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_WITH_ALPHA = ("RGBA", "LA", "PA", "La", "RGBa")


class DecodeError(ValueError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _cmyk_jpeg_to_rgb(img: Image.Image) -> np.ndarray:
    """OpenCV's CMYK->BGR (``icvCvt_CMYK2BGR_8u_C4C3R``) on libjpeg's raw values; Pillow hands JPEG CMYK back
    inverted (``CMYK;I``), so the raw value is ``255 - v``."""
    raw = 255 - np.asarray(img, dtype=np.int32)
    k = raw[..., 3:]
    return (k - ((255 - raw[..., :3]) * k >> 8)).astype(np.uint8)


def _to_rgb(img: Image.Image, alpha: str) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in _SIXTEEN_BIT or (mode == "I" and img.format == "PNG"):
        gray = (np.asarray(img, dtype=np.int64).clip(0, 65535) >> 8).astype(np.uint8)  # libpng strip_16
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("I", "F"):  # 32-bit TIFF & co: no cv2 reference; scale the range that is used
        arr = np.asarray(img, dtype=np.float64)
        peak = 255.0 if arr.max(initial=0) <= 255 else 65535.0
        gray = np.clip(np.round(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "CMYK" and img.format == "JPEG":
        return _cmyk_jpeg_to_rgb(img)
    if alpha == "composite":
        if mode == "P":
            img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
            mode = img.mode
        if mode in _WITH_ALPHA:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    # drop: Pillow's RGB conversion keeps the colour channels and ignores alpha / tRNS, as libpng's strip_alpha
    return np.asarray(img.convert("RGB"), dtype=np.uint8)  # L, 1, P, LA, RGBA, PA, YCbCr, LAB, HSV, CMYK


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, alpha: str = "drop") -> np.ndarray:
    """bytes -> H x W x 3 uint8 RGB (see the module docstring for each choice). Raises DecodeError with a kind:
    not_an_image, too_large, truncated, corrupt."""
    if alpha not in ALPHA_MODES:
        raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # Pillow's advice for palette transparency; dropping it is the point (see the table above)
        warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
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
            fmt = img.format
            try:
                img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img)
                img.format = fmt  # exif_transpose returns a copy without it
                pixels = _to_rgb(img, alpha)
            except OSError as e:
                kind = "truncated" if "truncated" in str(e) or "broken data stream" in str(e) else "corrupt"
                raise DecodeError(kind, f"{fmt} image: {e}") from e
            except (ValueError, SyntaxError, EOFError, IndexError, TypeError) as e:
                raise DecodeError("corrupt", f"{fmt} image: {type(e).__name__}: {e}") from e
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise DecodeError("corrupt", f"decoded to an array of shape {pixels.shape}")
    return np.ascontiguousarray(pixels)


class DecodeImages(beam.DoFn):
    """ImageBytes -> DecodedImage, or a failure row whose ``error`` is the DecodeError kind."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, alpha: str = "drop") -> None:
        self.max_pixels = max_pixels
        self.alpha = alpha
        self.ok = Metrics.counter("ldot", "decoded")
        self.failed = Metrics.counter("ldot", "failed_decode")

    def process(self, item: ImageBytes) -> Iterator[Any]:
        try:
            pixels = decode_image(item.data, self.max_pixels, self.alpha)
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
