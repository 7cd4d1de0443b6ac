"""What every part of the listing shares: the rows it yields (an ``ImageRef`` or a failure row) and how they are
made, so a file listed by a walk, a fanned-out prefix or a manifest row looks the same downstream."""

from __future__ import annotations

from typing import Any

from core.files import printable_id
from transforms.image_types import IMAGE_EXTENSIONS
from transforms.records import ImageRef, failure

MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".parquet")

Listed = ImageRef | dict[str, Any]  # an input, or a failure row


class ListError(ValueError):
    """An INPUT that cannot be listed at all; ``kind`` is the failure row's ``error``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def list_failure(image_id: str, uri: str, kind: str, message: str) -> dict[str, Any]:
    return failure(printable_id(image_id), printable_id(uri), "list", kind, printable_id(message))


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def make_ref(image_id: str, uri: str, index: int, size: int | None = None, stamp: str | None = None) -> ImageRef:
    """A listed file; ``order`` (input position, uri) decides which of the files sharing an id is kept."""
    return ImageRef(printable_id(image_id), uri, (index, uri), size, stamp)


STAMP_KEYS = ("generation", "ETag", "etag", "VersionId", "mtime", "LastModified", "last_modified", "updated",
              "created")  # what fsspec's info calls an object's version, by store (gcs, s3, local, memory...)


def info_stamp(info: dict[str, Any]) -> str | None:
    """The version stamp of an object from its fsspec ``info``, as ``key:value``; None if the store has none."""
    for key in STAMP_KEYS:
        if info.get(key) is not None:
            return f"{key}:{info[key]}"
    return None
