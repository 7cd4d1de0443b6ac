"""Read each image's bytes through fsspec (local, gs://, s3://, memory://) and hash them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import fsspec
from apache_beam.metrics import Metrics

from transforms.records import FAILED, ImageBytes, ImageRef, failure


def read_bytes(uri: str, max_bytes: int) -> bytes:
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.isdir(path):
        raise IsADirectoryError(f"{uri} is a directory")
    size = fs.size(path)
    if size is not None and size > max_bytes:
        raise ValueError(f"file of {size} bytes exceeds the {max_bytes}-byte limit")
    with fs.open(path, "rb") as f:
        return f.read()


class ReadImageBytes(beam.DoFn):
    """ImageRef -> ImageBytes, or a failure row (missing, directory, unreadable, empty, over the size limit)."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.ok = Metrics.counter("ldot", "read")
        self.failed = Metrics.counter("ldot", "failed_read")
        self.bytes_read = Metrics.counter("ldot", "bytes_read")

    def process(self, ref: ImageRef) -> Iterator[Any]:
        try:
            data = read_bytes(ref.uri, self.max_bytes)
        except Exception as e:
            self.failed.inc()
            kind = {"FileNotFoundError": "not_found", "IsADirectoryError": "is_a_directory",
                    "PermissionError": "permission_denied"}.get(type(e).__name__, "read_error")
            Metrics.counter("ldot", f"failed_read_{kind}").inc()
            yield beam.pvalue.TaggedOutput(FAILED, failure(ref.image_id, ref.uri, "read", kind, str(e)))
            return
        if not data:
            self.failed.inc()
            Metrics.counter("ldot", "failed_read_empty_file").inc()
            yield beam.pvalue.TaggedOutput(FAILED, failure(ref.image_id, ref.uri, "read", "empty_file", "0 bytes"))
            return
        self.ok.inc()
        self.bytes_read.inc(len(data))
        yield ImageBytes(ref.image_id, ref.uri, data, hashlib.sha256(data).hexdigest())
