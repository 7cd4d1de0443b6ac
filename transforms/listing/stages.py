"""The listing's pipeline stages: INPUT specs -> one ImageRef per distinct image_id and failure rows, the
INPUTs fanned out over workers (``transforms.listing.fanout``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from core.files import os_error_kind, transportable
from transforms.duplicates import FirstPerId
from transforms.image_types import IMAGE_EXTENSIONS
from transforms.listing.common import Listed, ListError, list_failure
from transforms.listing.fanout import Prefix, list_prefix, split_input
from transforms.listing.manifests import SPLIT_BYTES, ManifestPart, RowGroup, TextRange, read_part
from transforms.records import FAILED, ImageRef
from transforms.sources.webdataset import is_source

PARTS = "parts"  # tag of the parts a split INPUT hands to other workers (sub-directories, manifest parts)
NONEMPTY = "nonempty"  # tag of the input positions that yielded something (an image or a failure row)


class ExpandInputs(beam.DoFn):
    """(index, spec) -> ImageRef and failure rows, streamed, and the parts of a split INPUT (``Prefix``es of a
    directory, ``TextRange``s / ``RowGroup``s of a manifest: listed by ``ListPart`` on other workers). A spec that
    cannot be listed is a failure row naming the INPUT; one that yields nothing at all (an empty folder, a glob
    without matches) is found by ``ReportEmptyInputs``."""

    def __init__(self, split_bytes: int = SPLIT_BYTES) -> None:
        self.split_bytes = split_bytes
        self.listed = Metrics.counter("ldot", "listed")
        self.failed = Metrics.counter("ldot", "failed_list")

    def process(self, element: tuple[int, str]) -> Iterator[Any]:
        index, spec = element
        yield from _stream(index, spec, lambda: split_input(spec, index, self.split_bytes), self.listed, self.failed)


class ListPart(beam.DoFn):
    """A part of a split INPUT -> the ImageRefs and failure rows in it."""

    def __init__(self) -> None:
        self.listed = Metrics.counter("ldot", "listed")
        self.failed = Metrics.counter("ldot", "failed_list")

    def process(self, part: Prefix | ManifestPart) -> Iterator[Any]:
        if isinstance(part, Prefix):
            yield from _stream(part.index, part.directory, lambda: list_prefix(part), self.listed, self.failed)
            return
        name = (f"{part.spec}:row-group-{part.group}" if isinstance(part, RowGroup)
                else f"{part.spec}:bytes-{part.start}-{part.end}")
        yield from _stream(part.index, name, lambda: read_part(part), self.listed, self.failed)


def _stream(index: int, spec: str, items: Callable[[], Iterator[Listed | Prefix | ManifestPart]], listed: Any,
            failed: Any) -> Iterator[Any]:
    """The tagged outputs of one listing element; a ``NONEMPTY`` marker once it yielded anything."""
    count = 0
    try:
        for item in items():
            count += 1
            if isinstance(item, ImageRef):
                listed.inc()
                yield item
            elif isinstance(item, Prefix | TextRange | RowGroup):
                yield beam.pvalue.TaggedOutput(PARTS, item)
                count -= 1  # a part to list says nothing yet about whether the INPUT holds images
            else:
                failed.inc()
                yield beam.pvalue.TaggedOutput(FAILED, item)
    except Exception as e:  # a bad manifest or an unreachable bucket
        count += 1
        failed.inc()
        kind = e.kind if isinstance(e, ListError) else os_error_kind(e) if isinstance(e, OSError) else "list_error"
        yield beam.pvalue.TaggedOutput(FAILED, list_failure(spec, spec, kind, f"{type(e).__name__}: {e}"))
    if count:
        yield beam.pvalue.TaggedOutput(NONEMPTY, index)


class ReportEmptyInputs(beam.DoFn):
    """(index, {"spec": [spec], "nonempty": [...]}) -> a ``no_images`` failure row for an INPUT nothing came of."""

    def process(self, element: tuple[int, dict[str, Iterable[Any]]]) -> Iterator[dict[str, Any]]:
        _, groups = element
        if next(iter(groups["nonempty"]), None) is None:
            for spec in groups["spec"]:
                Metrics.counter("ldot", "failed_list").inc()
                yield list_failure(spec, spec, "no_images", f"{spec}: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                                                       "in this INPUT")


class ListImages(beam.PTransform):
    """INPUT specs -> one ImageRef per distinct image_id (main) and failure rows (``failed``)."""

    def __init__(self, inputs: list[str], split_bytes: int = SPLIT_BYTES) -> None:
        super().__init__()
        self.inputs = inputs
        self.split_bytes = split_bytes  # the size of the parts a CSV/JSONL manifest is read in

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        given = [(i, transportable(spec)) for i, spec in enumerate(self.inputs)
                 if not is_source(spec)]  # WebDataset shards, inline-bytes Parquet: read by transforms.sources
        specs = pbegin | "Specs" >> beam.Create(given)
        listed = specs | "Expand" >> beam.ParDo(ExpandInputs(self.split_bytes)).with_outputs(FAILED, PARTS, NONEMPTY,
                                                                                main="refs")
        below = (listed[PARTS]
                 | "SpreadParts" >> beam.Reshuffle()
                 | "ListParts" >> beam.ParDo(ListPart()).with_outputs(FAILED, NONEMPTY, main="refs"))
        nonempty = ((listed[NONEMPTY], below[NONEMPTY])
                    | "AllNonEmpty" >> beam.Flatten()
                    | "Distinct" >> beam.Distinct()
                    | "NonEmptyByIndex" >> beam.Map(lambda i: (i, True)))
        empty = ({"spec": specs, "nonempty": nonempty}
                 | "JoinNonEmpty" >> beam.CoGroupByKey()
                 | "EmptyInputs" >> beam.ParDo(ReportEmptyInputs()))
        refs = (listed.refs, below.refs) | "AllRefs" >> beam.Flatten()
        unique = refs | "FirstPerId" >> FirstPerId(lambda r: r.order)
        failed = (listed[FAILED], below[FAILED], empty, unique[FAILED]) | "ListFailures" >> beam.Flatten()
        return {"refs": unique.unique, FAILED: failed}
