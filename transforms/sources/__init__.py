"""Inputs that carry their image bytes inside (WebDataset tar shards, Parquet with inline bytes): read straight
into ``ImageBytes``, fanned out per shard / per row group, beside the listing of files and manifests.

Which INPUTs are sources (the rest are listed by ``transforms.listing``):
- ``PATH.tar`` (a shard, or a glob of shards: ``shards/*.tar``; local or fsspec): WebDataset shards;
- ``parquet+bytes://PATH[?bytes=COL&id=COL&url=COL]``: img2dataset-style Parquet (a file or a glob), defaults
  ``bytes=jpg``, ``id=key``, ``url=url``.
"""

from __future__ import annotations

import apache_beam as beam

from core.files import transportable
from transforms.records import FAILED
from transforms.sources.inline_parquet import SCHEME, ReadInlineParquet, is_inline_parquet
from transforms.sources.shards import CAPTIONS_SCHEMA
from transforms.sources.webdataset import ReadWebDataset, is_source, is_webdataset

__all__ = ["CAPTIONS_SCHEMA", "ReadSources", "is_source"]


def _for_workers(spec: str) -> str:
    """A local shard path or Parquet path made absolute here, in the launcher (see ``listing.transportable``)."""
    if is_inline_parquet(spec):
        path, _, query = spec[len(SCHEME):].partition("?")
        return SCHEME + transportable(path) + (f"?{query}" if query else "")
    return transportable(spec)


class ReadSources(beam.PTransform):
    """INPUT specs -> ``bytes`` (ImageBytes, each with its ``order``), ``captions`` (rows of the caption/metadata
    kept beside an image) and ``failed`` rows; specs that are not sources are ignored (the listing takes them).
    An image_id met twice is left to ``OnePerIdAcross``, which resolves it together with the listed files."""

    def __init__(self, inputs: list[str]) -> None:
        super().__init__()
        self.inputs = inputs

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        shards = [(i, _for_workers(s)) for i, s in enumerate(self.inputs) if is_webdataset(s)]
        tables = [(i, _for_workers(s)) for i, s in enumerate(self.inputs) if is_inline_parquet(s)]
        wds = pbegin | "WebDataset" >> ReadWebDataset(shards)
        ipq = pbegin | "InlineParquet" >> ReadInlineParquet(tables)
        return {"bytes": (wds["bytes"], ipq["bytes"]) | "AllBytes" >> beam.Flatten(), "captions": wds["captions"],
                FAILED: (wds[FAILED], ipq[FAILED]) | "SourceFailures" >> beam.Flatten()}
