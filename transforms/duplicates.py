"""One input per image_id, by one rule wherever inputs meet (listed files, manifest rows, source samples, feature
records): the first in the order they were given (input position, then path / row / key) wins, every other is a
``duplicate_id`` failure row naming the winner."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.records import FAILED, ImageBytes, failure


class KeepFirstPerId(beam.DoFn):
    """(image_id, [(order, item)]) -> the item of the smallest order (main), the rest ``duplicate_id`` rows.
    Items have ``image_id`` and ``uri``; orders are unique per item."""

    def __init__(self, stage: str = "list") -> None:
        self.stage = stage
        self.duplicates = Metrics.counter("ldot", "failed_duplicate_id")

    def process(self, element: tuple[str, Iterable[tuple[Any, Any]]]) -> Iterator[Any]:
        _, items = element
        first_order, first = min(items, key=lambda p: p[0])  # GroupByKey values can be iterated again
        yield first
        for order, item in items:
            if order == first_order:
                continue
            self.duplicates.inc()
            yield beam.pvalue.TaggedOutput(FAILED, failure(item.image_id, item.uri, self.stage, "duplicate_id",
                                                           f"image_id already taken by {first.uri}"))


class FirstPerId(beam.PTransform):
    """Items -> one per image_id (main) and ``failed`` duplicate rows; ``order(item)`` says which comes first."""

    def __init__(self, order: Callable[[Any], Any], stage: str = "list") -> None:
        super().__init__()
        self.order, self.stage = order, stage

    def expand(self, items: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        order = self.order
        return (items
                | "ById" >> beam.Map(lambda item: (item.image_id, (order(item), item)))
                | "Group" >> beam.GroupByKey()
                | "KeepFirst" >> beam.ParDo(KeepFirstPerId(self.stage)).with_outputs(FAILED, main="unique"))


class OnePerIdAcross(beam.PTransform):
    """(listed ImageRefs, source ImageBytes) -> ``refs`` and ``bytes`` with one input per image_id across both
    (by ``order``: input position first, so a file listed from INPUT 0 beats a shard sample of INPUT 1 and the
    reverse), and ``failed`` duplicate rows. The refs are resolved before they are read: a losing file is never
    opened. (The source bytes cross one shuffle here, as resolving their own duplicates needs anyway.)"""

    def expand(self, pcolls: tuple[beam.PCollection, beam.PCollection]) -> dict[str, beam.PCollection]:
        unique = pcolls | "RefsAndBytes" >> beam.Flatten() | "FirstPerId" >> FirstPerId(lambda item: item.order)
        refs, images = unique.unique | "ByKind" >> beam.Partition(
            lambda item, _: int(isinstance(item, ImageBytes)), 2)
        return {"refs": refs, "bytes": images, FAILED: unique[FAILED]}
