"""List inputs (directories, globs, files, fsspec URLs, manifests) into ``ImageRef``s; keep one per image_id.

Listing runs inside the pipeline (one input spec per element), so a corpus of millions of objects is listed
by workers rather than embedded in the job graph.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from fsspec.implementations.local import LocalFileSystem

from transforms.records import FAILED, ImageRef, failure

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".parquet")


def _full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Local paths stay plain paths; anything else keeps its protocol so workers can open it."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _relative(path: str, root: str) -> str:
    rel = posixpath.relpath(path, root) if root else posixpath.basename(path)
    return rel if rel != "." else posixpath.basename(path)


def expand_input(spec: str, index: int) -> Iterator[ImageRef]:
    """Yield the images one INPUT names. image_id = path relative to the input's root (dir or glob prefix)."""
    lower = spec.lower()
    if lower.endswith(MANIFEST_EXTENSIONS) and not lower.endswith(IMAGE_EXTENSIONS):
        yield from read_manifest(spec, index)
        return
    fs, path = fsspec.core.url_to_fs(spec)
    path = path.rstrip("/") or path
    if _has_magic(path):
        root = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
        matches = sorted(p for p in fs.glob(path) if not fs.isdir(p))
    elif fs.isdir(path):
        root = path
        matches = sorted(fs.find(path, withdirs=False))
    else:  # a single file (or a missing one: reading reports it, so the input is not silently lost)
        yield ImageRef(posixpath.basename(path), _full_uri(fs, path), (index, path))
        return
    for match in matches:
        if match.lower().endswith(IMAGE_EXTENSIONS):
            yield ImageRef(_relative(match, root), _full_uri(fs, match), (index, match))


def read_manifest(spec: str, index: int) -> Iterator[ImageRef]:
    """Rows with ``uri`` and optional ``image_id`` (.csv, .jsonl, .parquet); relative uris are taken as given."""
    lower = spec.lower()
    rows: Iterable[dict[str, Any]]
    if lower.endswith(".parquet"):
        with fsspec.open(spec, "rb") as f:
            rows = pq.read_table(io.BytesIO(f.read())).to_pylist()
    else:
        with fsspec.open(spec, "r", encoding="utf-8") as f:
            text = f.read()
        if lower.endswith(".csv"):
            rows = list(csv.DictReader(io.StringIO(text)))
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    for line, row in enumerate(rows):
        uri = row.get("uri")
        if not uri:
            raise ValueError(f"{spec}: row {line + 1} has no 'uri' column (columns: {sorted(row)})")
        image_id = row.get("image_id") or str(uri)
        yield ImageRef(str(image_id), str(uri), (index, f"{line:012d}"))


class ExpandInputs(beam.DoFn):
    """(index, spec) -> ImageRef; a spec that cannot be listed becomes one failure row, not a crashed run."""

    def __init__(self) -> None:
        self.listed = Metrics.counter("ldot", "listed")
        self.failed = Metrics.counter("ldot", "failed_list")

    def process(self, element: tuple[int, str]) -> Iterator[Any]:
        index, spec = element
        try:
            refs = list(expand_input(spec, index))
        except Exception as e:  # a bad manifest or an unreachable bucket
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(FAILED, failure(spec, spec, "list", type(e).__name__, str(e)))
            return
        self.listed.inc(len(refs))
        yield from refs


class KeepFirstPerId(beam.DoFn):
    """Of the inputs sharing an image_id, the first in (input position, path) order wins; the rest fail."""

    def __init__(self) -> None:
        self.duplicates = Metrics.counter("ldot", "failed_duplicate_id")

    def process(self, element: tuple[str, Iterable[ImageRef]]) -> Iterator[Any]:
        _, refs = element
        first, *rest = sorted(refs, key=lambda r: r.order)
        yield first
        for ref in rest:
            self.duplicates.inc()
            message = f"image_id already taken by {first.uri}"
            yield beam.pvalue.TaggedOutput(FAILED, failure(ref.image_id, ref.uri, "list", "duplicate_id", message))


class ListImages(beam.PTransform):
    """INPUT specs -> one ImageRef per distinct image_id (main) and failure rows (``failed``)."""

    def __init__(self, inputs: list[str]) -> None:
        super().__init__()
        self.inputs = inputs

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        listed = (pbegin
                  | "Specs" >> beam.Create(list(enumerate(self.inputs)))
                  | "Expand" >> beam.ParDo(ExpandInputs()).with_outputs(FAILED, main="refs"))
        unique = (listed.refs
                  | "ById" >> beam.Map(lambda r: (r.image_id, r))
                  | "Group" >> beam.GroupByKey()
                  | "KeepFirst" >> beam.ParDo(KeepFirstPerId()).with_outputs(FAILED, main="refs"))
        failed = (listed[FAILED], unique[FAILED]) | "ListFailures" >> beam.Flatten()
        return {"refs": unique.refs, FAILED: failed}
