"""The detector as a Beam ``ModelHandler``: batches of decoded images -> one ``Regions`` (or failure) each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from apache_beam.ml.inference.base import PredictionResult

from transforms.inference import SpecModelHandler, each_or_failure
from transforms.models import DetectorSpec
from transforms.records import DecodedImage


class RegionModelHandler(SpecModelHandler[DecodedImage]):
    """Batches of at most the detector's batch size; images of one batch that share a resized size share
    forward passes, and an image's result does not depend on its batch-mates (``RegionExtractor``)."""

    def __init__(self, spec: DetectorSpec, share_across_processes: bool | None = None) -> None:
        super().__init__(spec, share_across_processes, max_batch_size=spec.batch_size)

    def run_inference(self, batch: Sequence[DecodedImage], model: Any,
                      inference_args: dict[str, Any] | None = None) -> list[PredictionResult]:
        regions = each_or_failure(batch, lambda images: model.extract([im.pixels for im in images]))
        return [PredictionResult(im, r) for im, r in zip(batch, regions, strict=True)]

    def get_num_bytes(self, batch: Sequence[DecodedImage]) -> int:
        """Pixel bytes (Beam's default pickles the whole batch again just to measure it)."""
        return sum(im.pixels.nbytes for im in batch)

    def get_metrics_namespace(self) -> str:
        return "ldot_extract"
