"""The listing's pipeline stages: INPUT specs -> one ImageRef per distinct image_id and failure rows, the
INPUTs fanned out over workers (``transforms.listing.fanout``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from core.files import os_error_kind, transportable
from transforms.image_types import IMAGE_EXTENSIONS
from transforms.listing.common import Listed, ListError, list_failure
from transforms.listing.fanout import Prefix, list_prefix, split_input
from transforms.records import FAILED, ImageRef, failure
from transforms.sources.webdataset import is_source

PREFIXES = "prefixes"  # tag of the sub-directories a split INPUT hands to other workers
NONEMPTY = "nonempty"  # tag of the input positions that yielded something (an image or a failure row)


class ExpandInputs(beam.DoFn):
    """(index, spec) -> ImageRef and failure rows, streamed, and the ``Prefix``es of a split directory (listed by
    ``ListPrefix`` on other workers). A spec that cannot be listed is a failure row naming the INPUT; one that
    yields nothing at all (an empty folder, a glob without matches) is found by ``ReportEmptyInputs``."""

    def __init__(self) -> None:
        self.listed = Metrics.counter("ldot", "listed")
        self.failed = Metrics.counter("ldot", "failed_list")

    def process(self, element: tuple[int, str]) -> Iterator[Any]:
        index, spec = element
        yield from _stream(index, spec, lambda: split_input(spec, index), self.listed, self.failed)


class ListPrefix(beam.DoFn):
    """Prefix -> the ImageRefs and failure rows below it."""

    def __init__(self) -> None:
        self.listed = Metrics.counter("ldot", "listed")
        self.failed = Metrics.counter("ldot", "failed_list")

    def process(self, prefix: Prefix) -> Iterator[Any]:
        yield from _stream(prefix.index, prefix.directory, lambda: list_prefix(prefix), self.listed, self.failed)


def _stream(index: int, spec: str, items: Callable[[], Iterator[Listed | Prefix]], listed: Any,
            failed: Any) -> Iterator[Any]:
    """The tagged outputs of one listing element; a ``NONEMPTY`` marker once it yielded anything."""
    count = 0
    try:
        for item in items():
            count += 1
            if isinstance(item, ImageRef):
                listed.inc()
                yield item
            elif isinstance(item, Prefix):
                yield beam.pvalue.TaggedOutput(PREFIXES, item)
                count -= 1  # a sub-directory says nothing yet about whether the INPUT holds images
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


class KeepFirstPerId(beam.DoFn):
    """Of the inputs sharing an image_id, the first in (input position, path) order wins; the rest fail."""

    def __init__(self) -> None:
        self.duplicates = Metrics.counter("ldot", "failed_duplicate_id")

    def process(self, element: tuple[str, Iterable[ImageRef]]) -> Iterator[Any]:
        _, refs = element
        first = min(refs, key=lambda r: r.order)  # GroupByKey values can be iterated again, not sorted in memory
        yield first
        for ref in refs:
            if ref.order == first.order:  # orders are unique: (input position, path or row number)
                continue
            self.duplicates.inc()
            message = f"image_id already taken by {first.uri}"
            yield beam.pvalue.TaggedOutput(FAILED, failure(ref.image_id, ref.uri, "list", "duplicate_id", message))


class ListImages(beam.PTransform):
    """INPUT specs -> one ImageRef per distinct image_id (main) and failure rows (``failed``)."""

    def __init__(self, inputs: list[str]) -> None:
        super().__init__()
        self.inputs = inputs

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        given = [(i, transportable(spec)) for i, spec in enumerate(self.inputs)
                 if not is_source(spec)]  # WebDataset shards, inline-bytes Parquet: read by transforms.sources
        specs = pbegin | "Specs" >> beam.Create(given)
        listed = specs | "Expand" >> beam.ParDo(ExpandInputs()).with_outputs(FAILED, PREFIXES, NONEMPTY, main="refs")
        below = (listed[PREFIXES]
                 | "SpreadPrefixes" >> beam.Reshuffle()
                 | "ListPrefixes" >> beam.ParDo(ListPrefix()).with_outputs(FAILED, NONEMPTY, main="refs"))
        nonempty = ((listed[NONEMPTY], below[NONEMPTY])
                    | "AllNonEmpty" >> beam.Flatten()
                    | "Distinct" >> beam.Distinct()
                    | "NonEmptyByIndex" >> beam.Map(lambda i: (i, True)))
        empty = ({"spec": specs, "nonempty": nonempty}
                 | "JoinNonEmpty" >> beam.CoGroupByKey()
                 | "EmptyInputs" >> beam.ParDo(ReportEmptyInputs()))
        refs = (listed.refs, below.refs) | "AllRefs" >> beam.Flatten()
        unique = (refs
                  | "ById" >> beam.Map(lambda r: (r.image_id, r))
                  | "Group" >> beam.GroupByKey()
                  | "KeepFirst" >> beam.ParDo(KeepFirstPerId()).with_outputs(FAILED, main="refs"))
        failed = (listed[FAILED], below[FAILED], empty, unique[FAILED]) | "ListFailures" >> beam.Flatten()
        return {"refs": unique.refs, FAILED: failed}
