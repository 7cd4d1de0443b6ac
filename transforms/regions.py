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
from transforms.duplicates import KeepFirstPerId
from transforms.inference import SplitResults
from transforms.models import DetectorSpec
from transforms.records import FAILED, DecodedImage, RegionRecord, failure
from transforms.region_handler import RegionModelHandler
from transforms.spread import ExpandThenRead


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


class ExpandRegionParts(beam.DoFn):
    """A feature file path -> its parts (``encoders.regions.formats.region_parts``), or one failure row when it
    cannot be read at all."""

    def process(self, path: str) -> Iterator[Any]:
        from encoders.regions.formats import region_parts

        try:
            yield from region_parts(path)
        except Exception as e:  # not a regions table, an LMDB that does not open, a TSV that is not there
            yield beam.pvalue.TaggedOutput(FAILED, failure(path, path, "read", "bad_regions",
                                                           f"{path}: {type(e).__name__}: {e}"))


class ReadRegionPart(beam.DoFn):
    """A part -> (order, RegionRecord) per record, a failure row per bad record (it costs only itself)."""

    def __init__(self, path: str) -> None:
        self.path = path  # the feature file as given: records are named ``<path>#<image_id>``

    def process(self, part: Any) -> Iterator[Any]:
        from encoders.regions.formats import BadRecord, iter_part_records

        for position, item in enumerate(iter_part_records(part)):
            if isinstance(item, BadRecord):
                Metrics.counter("ldot", "failed_read").inc()
                yield beam.pvalue.TaggedOutput(FAILED, failure(item.image_id, f"{self.path}#{item.image_id}", "read",
                                                               item.error, item.message))
                continue
            image_id, regions = item
            yield (*part.order, position), RegionRecord(image_id, f"{self.path}#{image_id}",
                                                        regions_digest(regions), regions)


class ReadPrecomputedRegions(beam.PTransform):
    """Skip decoding and detection: one RegionRecord per image_id of an existing feature file (``regions``),
    failure rows for bad and repeated records (``failed``). The file is cut into parts read by several workers
    (row groups of a regions table, byte ranges of a BUTD TSV, key ranges of a UNITER DB); of the records of one
    image_id the first in file order is kept, as one reader would."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        read = pbegin | "Parts" >> ExpandThenRead([self.path], ExpandRegionParts(), ReadRegionPart(self.path),
                                                  "records")
        unique = (read["records"]
                  | "ById" >> beam.Map(lambda pair: (pair[1].image_id, pair))
                  | "Group" >> beam.GroupByKey()
                  | "KeepFirst" >> beam.ParDo(KeepFirstPerId("read")).with_outputs(FAILED, main="regions"))
        return {"regions": unique.regions, FAILED: (read[FAILED], unique[FAILED]) | "Failures" >> beam.Flatten()}
