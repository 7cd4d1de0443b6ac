"""Encode batches of region features into LightningDOT image embeddings (the Parquet row of DESIGN.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.models import EncoderSpec, SharedModel
from transforms.records import FAILED, RegionRecord, failure


def check_regions(record: RegionRecord, feature_dim: int) -> None:
    r = record.regions
    if r.num_boxes < 1:
        raise ValueError("no regions")
    if r.features.shape[1] != feature_dim:
        raise ValueError(f"features are {r.features.shape[1]}-d, the encoder takes {feature_dim}-d")
    if not (np.isfinite(r.features).all() and np.isfinite(r.norm_bb).all()):
        raise ValueError("non-finite values in features or boxes")


class EmbedRegions(beam.DoFn):
    """list[RegionRecord] -> embedding rows. Batches arrive bucketed by box count (``BatchElements`` with
    ``length_fn``) and ``encode_regions`` trims each to its longest image."""

    def __init__(self, spec: EncoderSpec, model_fingerprint: str, detector_fingerprint: str,
                 max_regions: int = 100) -> None:
        self.model = SharedModel(spec)
        self.model_fingerprint = model_fingerprint
        self.detector_fingerprint = detector_fingerprint
        self.max_regions = max_regions
        self.ok = Metrics.counter("ldot", "encoded")
        self.failed = Metrics.counter("ldot", "failed_encode")

    def setup(self) -> None:
        self.encoder = self.model.get()

    def process(self, batch: list[RegionRecord]) -> Iterator[Any]:
        good = []
        for record in batch:
            try:
                check_regions(record, self.encoder.config.feature_dim)
                good.append(record)
            except ValueError as e:
                self.failed.inc()
                yield beam.pvalue.TaggedOutput(
                    FAILED, failure(record.image_id, record.uri, "encode", "bad_regions", str(e)))
        if not good:
            return
        try:
            vectors = self._encode(good)
        except Exception:
            vectors = None
        for i, record in enumerate(good):
            if vectors is None:
                try:
                    vector = self._encode([record])[0]
                except Exception as e:
                    self.failed.inc()
                    yield beam.pvalue.TaggedOutput(
                        FAILED, failure(record.image_id, record.uri, "encode", type(e).__name__, str(e)))
                    continue
            else:
                vector = vectors[i]
            self.ok.inc()
            yield self._row(record, vector)

    def _encode(self, records: list[RegionRecord]) -> np.ndarray:
        n = self.max_regions
        return self.encoder.encode_regions([r.regions.features[:n] for r in records],
                                           [r.regions.norm_bb[:n] for r in records], batch_size=len(records))

    def _row(self, record: RegionRecord, vector: np.ndarray) -> dict[str, Any]:
        r = record.regions
        return {"image_id": record.image_id, "uri": record.uri, "content_sha256": record.sha256,
                "embedding": np.asarray(vector, dtype=np.float32), "num_boxes": min(r.num_boxes, self.max_regions),
                "width": r.width, "height": r.height, "model": self.model_fingerprint,
                "detector": self.detector_fingerprint}
