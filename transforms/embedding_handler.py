"""The LightningDOT image tower as a Beam ``ModelHandler``: region records -> one embedding (or failure) each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import PredictionResult

from transforms.finite import NON_FINITE_EMBEDDING, non_finite_message
from transforms.inference import InferenceFailure, SpecModelHandler, each_or_failure
from transforms.models import EncoderSpec
from transforms.records import RegionRecord

BOX_COUNT_BUCKETS = [16, 32, 48, 64, 80]  # batches of similar box counts: little padding in the image tower


def box_count(record: RegionRecord) -> int:
    return record.regions.num_boxes


def check_regions(record: RegionRecord, feature_dim: int) -> None:
    """Raise ValueError for regions the encoder cannot take (caught per record, before the batch runs)."""
    r = record.regions
    if r.num_boxes < 1:
        raise ValueError("no regions")
    if r.features.shape[1] != feature_dim:
        raise ValueError(f"features are {r.features.shape[1]}-d, the encoder takes {feature_dim}-d")
    if not (np.isfinite(r.features).all() and np.isfinite(r.norm_bb).all()):
        raise ValueError("non-finite values in features or boxes")


class EmbeddingModelHandler(SpecModelHandler[RegionRecord]):
    """Batches bucketed by box count (``encode_regions`` trims each batch to its longest image); records with
    unusable regions fail as ``bad_regions`` without reaching the model, and a NaN/Inf embedding as
    ``non_finite_embedding`` (never an index entry)."""

    def __init__(self, spec: EncoderSpec, max_batch_size: int = 64, max_regions: int = 100,
                 share_across_processes: bool | None = None) -> None:
        super().__init__(spec, share_across_processes, max_batch_size=max_batch_size, batch_length_fn=box_count,
                         batch_bucket_boundaries=BOX_COUNT_BUCKETS)
        self.max_regions = max_regions

    def run_inference(self, batch: Sequence[RegionRecord], model: Any,
                      inference_args: dict[str, Any] | None = None) -> list[PredictionResult]:
        results: dict[int, np.ndarray | InferenceFailure] = {}
        good: list[int] = []
        for i, record in enumerate(batch):
            try:
                check_regions(record, self.spec.feature_dim)
                good.append(i)
            except ValueError as e:
                results[i] = InferenceFailure("bad_regions", str(e))
        n = self.max_regions

        def encode(records: Sequence[RegionRecord]) -> np.ndarray:
            return model.encode_regions([r.regions.features[:n] for r in records],
                                        [r.regions.norm_bb[:n] for r in records], batch_size=len(records))

        if good:
            for i, vector in zip(good, each_or_failure([batch[i] for i in good], encode), strict=True):
                problem = None if isinstance(vector, InferenceFailure) else non_finite_message(vector)
                results[i] = InferenceFailure(NON_FINITE_EMBEDDING, problem) if problem else vector
        return [PredictionResult(record, results[i]) for i, record in enumerate(batch)]

    def get_num_bytes(self, batch: Sequence[RegionRecord]) -> int:
        return sum(r.regions.features.nbytes + r.regions.norm_bb.nbytes for r in batch)

    def get_metrics_namespace(self) -> str:
        return "ldot_encode"
