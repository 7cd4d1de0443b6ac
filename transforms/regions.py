"""Region-feature stages: run the detector on decoded images (Beam's RunInference), or read features extracted
before."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from encoders.regions.types import Regions
from transforms.inference import SplitResults
from transforms.models import DetectorSpec
from transforms.records import FAILED, DecodedImage, RegionRecord
from transforms.region_handler import RegionModelHandler


class RegionRecords(SplitResults):
    """Extraction results -> RegionRecord (main) or an ``extract`` failure row; boxes per image as a metric."""

    def __init__(self) -> None:
        super().__init__("extract", "extracted", "failed_extract")
        self.boxes = Metrics.distribution("ldot", "boxes_per_image")

    def output(self, example: DecodedImage, inference: Regions) -> RegionRecord:
        self.boxes.update(inference.num_boxes)
        return RegionRecord(example.image_id, example.uri, example.sha256, inference)


class ExtractRegions(beam.PTransform):
    """DecodedImage -> RegionRecord per image (``ok``) and failure rows (``failed``), through ``RunInference``."""

    def __init__(self, spec: DetectorSpec, share_across_processes: bool | None = None) -> None:
        super().__init__()
        self.handler = RegionModelHandler(spec, share_across_processes)

    def expand(self, images: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return (images
                | "Detector" >> RunInference(self.handler)
                | "Split" >> beam.ParDo(RegionRecords()).with_outputs(FAILED, main="ok"))


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
