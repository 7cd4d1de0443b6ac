"""Read each image's bytes (local files with the OS, URLs through fsspec) and hash them.

Every read is bounded: only regular files are opened (a FIFO or ``/dev/zero`` is a failure row, never read), at
most ``max_bytes`` are read whatever the file's size claims, and a read that takes longer than ``timeout_s`` stops.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import fsspec
from apache_beam.metrics import Metrics

from core.files import ReadError, is_local, local_path, open_regular, os_error_kind, printable_id, read_at_most
from transforms.records import FAILED, ImageBytes, ImageRef, failure

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_READ_TIMEOUT_S = 300.0


def read_bytes(uri: str, max_bytes: int = DEFAULT_MAX_BYTES, timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> bytes:
    """The bytes of one file; raises ``ReadError`` (or an ``OSError``) with the failure kind."""
    deadline = time.monotonic() + timeout_s
    if is_local(uri):
        with open_regular(local_path(uri)) as f:
            return read_at_most(f, max_bytes, deadline, uri)
    fs, path = fsspec.core.url_to_fs(uri)
    info = fs.info(path)
    if info.get("type") == "directory":
        raise ReadError("is_a_directory", f"{uri} is a directory")
    if info.get("type") != "file":
        raise ReadError("not_a_regular_file", f"{uri} is a {info.get('type')!r} entry, not a file: not opened")
    size = info.get("size")
    if size is not None and size > max_bytes:
        raise ReadError("too_large", f"file of {size} bytes exceeds the {max_bytes}-byte limit")
    with fs.open(path, "rb") as f:
        return read_at_most(f, max_bytes, deadline, uri)


class ReadImageBytes(beam.DoFn):
    """ImageRef -> ImageBytes, or a failure row (missing, directory, not a regular file, unreadable, empty, over
    the size limit, too slow)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.ok = Metrics.counter("ldot", "read")
        self.failed = Metrics.counter("ldot", "failed_read")
        self.bytes_read = Metrics.counter("ldot", "bytes_read")

    def process(self, ref: ImageRef) -> Iterator[Any]:
        try:
            data = read_bytes(ref.uri, self.max_bytes, self.timeout_s)
        except Exception as e:
            yield self._failed(ref, os_error_kind(e), printable_id(str(e)))
            return
        if not data:
            yield self._failed(ref, "empty_file", "0 bytes")
            return
        self.ok.inc()
        self.bytes_read.inc(len(data))
        yield ImageBytes(ref.image_id, ref.uri, data, hashlib.sha256(data).hexdigest())

    def _failed(self, ref: ImageRef, kind: str, message: str) -> beam.pvalue.TaggedOutput:
        self.failed.inc()
        Metrics.counter("ldot", f"failed_read_{kind}").inc()
        return beam.pvalue.TaggedOutput(FAILED, failure(ref.image_id, ref.uri, "read", kind, message))
