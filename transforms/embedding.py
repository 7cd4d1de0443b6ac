"""Encode region features into LightningDOT image embeddings (the embeddings-table row), through RunInference."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import RunInference

from transforms.embedding_handler import EmbeddingModelHandler
from transforms.inference import SplitResults
from transforms.models import EncoderSpec
from transforms.records import FAILED, RegionRecord


class EmbeddingRows(SplitResults):
    """Encoder results -> embeddings-table rows (main) or ``encode`` failure rows, with model provenance."""

    def __init__(self, model_fingerprint: str, detector_fingerprint: str, max_regions: int = 100) -> None:
        super().__init__("encode", "encoded", "failed_encode")
        self.model_fingerprint = model_fingerprint
        self.detector_fingerprint = detector_fingerprint
        self.max_regions = max_regions

    def output(self, example: RegionRecord, inference: np.ndarray) -> dict[str, Any]:
        r = example.regions
        return {"image_id": example.image_id, "uri": example.uri, "content_sha256": example.sha256,
                "embedding": np.asarray(inference, dtype=np.float32),
                "num_boxes": min(r.num_boxes, self.max_regions), "width": r.width, "height": r.height,
                "model": self.model_fingerprint, "detector": self.detector_fingerprint}


class EmbedRegions(beam.PTransform):
    """RegionRecord -> embedding row per image (``ok``) and failure rows (``failed``)."""

    def __init__(self, spec: EncoderSpec, model_fingerprint: str, detector_fingerprint: str,
                 batch_size: int = 64, max_regions: int = 100, share_across_processes: bool | None = None) -> None:
        super().__init__()
        self.handler = EmbeddingModelHandler(spec, batch_size, max_regions, share_across_processes)
        self.rows = EmbeddingRows(model_fingerprint, detector_fingerprint, max_regions)

    def expand(self, records: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return (records
                | "Encoder" >> RunInference(self.handler)
                | "Split" >> beam.ParDo(self.rows).with_outputs(FAILED, main="ok"))
