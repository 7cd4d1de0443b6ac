"""The shape every input that is read in parts shares: one worker cuts each spec into work units (WebDataset
shards, Parquet row groups, byte ranges, key ranges), a Reshuffle spreads the units over workers, many read them.
Without the Reshuffle a runner fuses reading into the element that expanded the spec, and one worker reads all."""

from __future__ import annotations

from typing import Any

import apache_beam as beam

from transforms.records import FAILED


class ExpandThenRead(beam.PTransform):
    """``specs`` -> ``{main: what read yields, *outputs: read's other tags, "failed": both stages' failure rows}``.
    ``expand`` yields the units of a spec (and failure rows tagged ``failed``); ``read`` the records of a unit."""

    def __init__(self, specs: list[Any], expand: beam.DoFn, read: beam.DoFn, main: str,
                 outputs: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.specs, self.expand_fn, self.read_fn, self.main, self.outputs = specs, expand, read, main, outputs

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        units = (pbegin
                 | "Specs" >> beam.Create(self.specs)
                 | "Expand" >> beam.ParDo(self.expand_fn).with_outputs(FAILED, main="units"))
        read = (units.units
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(self.read_fn).with_outputs(FAILED, *self.outputs, main=self.main))
        failed = (units[FAILED], read[FAILED]) | "Failures" >> beam.Flatten()
        return {self.main: read[self.main], **{tag: read[tag] for tag in self.outputs}, FAILED: failed}
