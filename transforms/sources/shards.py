"""What both sources share: the reader base (counters; ImageBytes or one failure row per sample) and the
expansion of an INPUT (a file or a glob, local or fsspec) into its files, one element each, so a corpus of
thousands of shards spreads over workers (a Reshuffle follows)."""

from __future__ import annotations

import glob
import hashlib
import posixpath
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow as pa
from apache_beam.metrics import Metrics

from core.files import is_local, local_path, local_uri, open_regular, printable_id
from core.paths import glob_root, relative_to
from transforms.records import FAILED, ImageBytes, failure

CAPTIONS_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("caption", pa.string()),
                             ("metadata", pa.string())])


def source_failure(image_id: str, uri: str, kind: str, message: str) -> dict[str, Any]:
    return failure(printable_id(image_id), printable_id(uri), "read", kind, printable_id(message))


class SampleReader(beam.DoFn):
    """Base of the source readers: each sample or row is one input (counted as ``listed``, as a listed file is)
    that ends as ImageBytes (``accept``) or one failure row (``reject``)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.ok = Metrics.counter("ldot", "read")
        self.failed = Metrics.counter("ldot", "failed_read")
        self.bytes_read = Metrics.counter("ldot", "bytes_read")
        self.listed = Metrics.counter("ldot", "listed")

    def accept(self, image_id: str, uri: str, data: bytes, order: tuple[int, str]) -> ImageBytes:
        self.ok.inc()
        self.listed.inc()
        self.bytes_read.inc(len(data))
        return ImageBytes(image_id, uri, data, hashlib.sha256(data).hexdigest(), order)

    def reject(self, image_id: str, uri: str, kind: str, message: str) -> beam.pvalue.TaggedOutput:
        self.failed.inc()
        self.listed.inc()
        Metrics.counter("ldot", f"failed_read_{kind}").inc()
        return beam.pvalue.TaggedOutput(FAILED, source_failure(image_id, uri, kind, message))


def expand_files(spec: str) -> Iterator[tuple[str, str] | dict[str, Any]]:
    """(uri, name) of each file ``spec`` names, name = its path below the glob's fixed prefix (a single file: its
    base name), sorted; a glob without matches is a failure row. A missing single file is left to the reader."""
    local = is_local(spec)
    if local:
        path = local_path(spec)
        matches = sorted(glob.glob(path, recursive=True)) if glob.has_magic(path) else [path]
        uris = [(m, local_uri(m)) for m in matches]
    else:
        fs, path = fsspec.core.url_to_fs(spec)
        matches = sorted(fs.glob(path)) if glob.has_magic(path) else [path]
        uris = [(m, fs.unstrip_protocol(m)) for m in matches]
    if not uris:
        yield source_failure(spec, spec, "no_match", f"{spec}: the pattern matches no file")
        return
    root = glob_root(path) if glob.has_magic(path) else posixpath.dirname(path)
    for match, uri in uris:
        yield uri, printable_id(relative_to(match, root))


def open_input(uri: str) -> Any:
    """A binary stream of one source file: a local one only if it is a regular file."""
    if is_local(uri):
        return open_regular(local_path(uri))
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.open(path, "rb")
