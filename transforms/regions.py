"""Region-feature stages: run the detector on batches of decoded images, or read features extracted before."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.models import DetectorSpec, SharedModel
from transforms.records import FAILED, DecodedImage, RegionRecord, failure


class ExtractRegions(beam.DoFn):
    """list[DecodedImage] -> RegionRecord per image. The model is loaded once per worker; a batch that fails
    is retried one image at a time, so one bad image costs only itself."""

    def __init__(self, spec: DetectorSpec) -> None:
        self.model = SharedModel(spec)
        self.ok = Metrics.counter("ldot", "extracted")
        self.failed = Metrics.counter("ldot", "failed_extract")
        self.boxes = Metrics.distribution("ldot", "boxes_per_image")

    def setup(self) -> None:
        self.extractor = self.model.get()

    def process(self, batch: list[DecodedImage]) -> Iterator[Any]:
        try:
            results = list(zip(batch, self.extractor.extract([im.pixels for im in batch]), strict=True))
        except Exception:
            results = []
            for im in batch:
                try:
                    results.append((im, self.extractor.extract([im.pixels])[0]))
                except Exception as e:
                    self.failed.inc()
                    yield beam.pvalue.TaggedOutput(
                        FAILED, failure(im.image_id, im.uri, "extract", type(e).__name__, str(e)))
        for im, regions in results:
            self.ok.inc()
            self.boxes.update(regions.num_boxes)
            yield RegionRecord(im.image_id, im.uri, im.sha256, regions)


def regions_digest(regions: Any) -> str:
    """Content hash for inputs that arrive as features (no image bytes): the stored arrays themselves."""
    h = hashlib.sha256()
    for arr in (regions.features.astype("float16"), regions.norm_bb):
        h.update(arr.tobytes())
    return h.hexdigest()


def read_precomputed(path: str) -> Iterator[RegionRecord]:
    """Regions Parquet (ours), UNITER image DB or BUTD TSV -> RegionRecord."""
    from encoders.regions.formats import read_regions

    for image_id, regions, uri in _with_uris(read_regions(path), path):
        yield RegionRecord(image_id, uri, regions_digest(regions), regions)


def _with_uris(items: Iterator[Any], path: str) -> Iterator[tuple[str, Any, str]]:
    for item in items:
        image_id, regions = item[0], item[1]
        uri = item[2] if len(item) > 2 and item[2] else f"{path}#{image_id}"
        yield image_id, regions, uri


class ReadPrecomputedRegions(beam.PTransform):
    """Skip decoding and detection: one RegionRecord per record of an existing feature file."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (pbegin
                | "RegionsPath" >> beam.Create([self.path])
                | "ReadRegions" >> beam.FlatMap(read_precomputed)
                | "Spread" >> beam.Reshuffle())
