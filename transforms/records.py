"""The elements that flow between pipeline stages, and the failure row every lost input becomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from encoders.regions.types import Regions

FAILED = "failed"  # tag of every stage's side output of failure rows


@dataclass(frozen=True)
class ImageRef:
    """One listed input. ``order`` (input position, uri) decides which of several same-id inputs wins. ``size`` and
    ``stamp`` (the store's version of the object: mtime, ETag, generation) come from the listing, where it gives
    them: an incremental run carries an image whose id, size and stamp did not change without reading it."""

    image_id: str
    uri: str
    order: tuple[int, str]
    size: int | None = None
    stamp: str | None = None


@dataclass
class ImageBytes:
    """An image's bytes. ``order`` (input position, position inside it), set by the inputs that carry their images
    (``transforms.sources``), decides which of several same-id inputs wins, as ``ImageRef.order`` does."""

    image_id: str
    uri: str
    data: bytes
    sha256: str
    order: tuple[int, str] | None = None


@dataclass
class DecodedImage:
    image_id: str
    uri: str
    sha256: str
    pixels: np.ndarray  # H x W x 3 uint8 RGB, EXIF orientation applied
    width: int
    height: int


@dataclass
class RegionRecord:
    image_id: str
    uri: str
    sha256: str
    regions: Regions


def failure(image_id: str, uri: str, stage: str, error: str, message: str) -> dict[str, Any]:
    """A failures-table row: ``error`` is a short machine-readable kind, ``message`` the human detail."""
    return {"image_id": image_id, "uri": uri, "stage": stage, "error": error, "message": message[:2000]}
