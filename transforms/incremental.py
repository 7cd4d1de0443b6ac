"""Carry over embeddings whose (image_id, content hash, model, detector) did not change since a snapshot.

Keyed join (CoGroupByKey) of this run's inputs with the previous embeddings table, so it scales like the
rest of the pipeline. Unchanged images skip decoding, detection and encoding; their rows are copied with
the current uri. Counters: carried, new, changed, dropped (in the snapshot, gone from the inputs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.parquetio import ReadFromParquet
from apache_beam.metrics import Metrics

CARRIED = "carried"
SNAPSHOT_COLUMNS = ["image_id", "uri", "content_sha256", "embedding", "num_boxes", "width", "height", "model",
                    "detector"]


class CarryOrRecompute(beam.DoFn):
    """(image_id, {"cur": [item], "prev": [row]}) -> item to recompute (main) or a carried row (``carried``)."""

    def __init__(self, model_fingerprint: str, detector_fingerprint: str) -> None:
        self.model = model_fingerprint
        self.detector = detector_fingerprint
        self.counters = {k: Metrics.counter("ldot", k) for k in ("carried", "new", "changed", "dropped")}

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        _, groups = element
        current, previous = list(groups["cur"]), list(groups["prev"])
        if not current:
            self.counters["dropped"].inc()
            return
        item = current[0]
        prev = previous[0] if previous else None
        if prev is None:
            self.counters["new"].inc()
            yield item
        elif (prev["content_sha256"] == item.sha256 and prev["model"] == self.model
              and prev.get("detector") == self.detector):
            self.counters["carried"].inc()
            row = dict(prev)
            row["uri"] = item.uri
            row["embedding"] = np.asarray(row["embedding"], dtype=np.float32)
            yield beam.pvalue.TaggedOutput(CARRIED, row)
        else:
            self.counters["changed"].inc()
            yield item


class SplitBySnapshot(beam.PTransform):
    """items (with image_id, sha256, uri) -> {"todo": to recompute, "carried": rows copied from the snapshot}."""

    def __init__(self, snapshot_glob: str, model_fingerprint: str, detector_fingerprint: str) -> None:
        super().__init__()
        self.snapshot_glob = snapshot_glob
        self.model = model_fingerprint
        self.detector = detector_fingerprint

    def expand(self, items: beam.PCollection) -> dict[str, beam.PCollection]:
        previous = (items.pipeline
                    | "ReadSnapshot" >> ReadFromParquet(self.snapshot_glob, columns=SNAPSHOT_COLUMNS)
                    | "SnapshotById" >> beam.Map(lambda row: (row["image_id"], row)))
        current = items | "CurrentById" >> beam.Map(lambda item: (item.image_id, item))
        split = ({"cur": current, "prev": previous}
                 | "Join" >> beam.CoGroupByKey()
                 | "CarryOrRecompute" >> beam.ParDo(CarryOrRecompute(self.model, self.detector)).with_outputs(
                     CARRIED, main="todo"))
        return {"todo": split.todo, CARRIED: split[CARRIED]}
