"""Carry over embeddings whose (image_id, content hash, model, detector) did not change since a snapshot.

Keyed join (CoGroupByKey) of this run's inputs with the previous embeddings table, so it scales like the
rest of the pipeline. Unchanged images skip decoding, detection and encoding; their rows are copied with
the current uri. Counters: carried, new, changed, dropped (in the snapshot, gone from the inputs).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import fsspec
import numpy as np
import pyarrow as pa
from apache_beam.io.parquetio import ReadFromParquet
from apache_beam.metrics import Metrics

from transforms.records import ImageRef

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
        if next(iter(groups.get("unread", ())), None) is not None:
            return  # carried before reading (SplitRefsBySnapshot), counted there
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

    def __init__(self, snapshot_glob: str, model_fingerprint: str, detector_fingerprint: str,
                 unread: beam.PCollection | None = None) -> None:
        super().__init__()
        self.snapshot_glob = snapshot_glob
        self.model = model_fingerprint
        self.detector = detector_fingerprint
        self.unread = unread  # rows SplitRefsBySnapshot carried already: neither dropped nor carried again

    def expand(self, items: beam.PCollection) -> dict[str, beam.PCollection]:
        previous = (items.pipeline
                    | "ReadSnapshot" >> ReadFromParquet(self.snapshot_glob, columns=SNAPSHOT_COLUMNS)
                    | "SnapshotById" >> beam.Map(lambda row: (row["image_id"], row)))
        current = items | "CurrentById" >> beam.Map(lambda item: (item.image_id, item))
        groups = {"cur": current, "prev": previous}
        if self.unread is not None:
            groups["unread"] = self.unread | "UnreadById" >> beam.Map(lambda row: (row["image_id"], True))
        split = (groups
                 | "Join" >> beam.CoGroupByKey()
                 | "CarryOrRecompute" >> beam.ParDo(CarryOrRecompute(self.model, self.detector)).with_outputs(
                     CARRIED, main="todo"))
        return {"todo": split.todo, CARRIED: split[CARRIED]}


# ---- carrying over without reading: change detection from the listing's metadata -----------------------------------

STAMPS = "stamps"  # the table beside embeddings/ with each listed image's size and version stamp
STAMPS_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("size", pa.int64()),
                           ("stamp", pa.string())])


def stamp_row(ref: ImageRef) -> dict[str, Any]:
    return {"image_id": ref.image_id, "uri": ref.uri, "size": ref.size, "stamp": ref.stamp}


class CarryUnread(beam.DoFn):
    """(image_id, {"cur": [ref], "prev": [row], "stamp": [row]}) -> the ref to read (main), or the snapshot's row
    (``carried``) when size and stamp are those the snapshot's image was listed with, and model and detector match.
    A ref without a stamp (a store that gives none) is always read."""

    def __init__(self, model_fingerprint: str, detector_fingerprint: str) -> None:
        self.model = model_fingerprint
        self.detector = detector_fingerprint
        self.carried = Metrics.counter("ldot", "carried_unread")

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        _, groups = element
        current = list(groups["cur"])
        if not current:
            return  # gone from the inputs: SplitBySnapshot counts it as dropped
        ref = current[0]
        prev = next(iter(groups["prev"]), None)
        stamp = next(iter(groups["stamp"]), None)
        if (prev is not None and stamp is not None and ref.stamp is not None and ref.size is not None
                and stamp["stamp"] == ref.stamp and stamp["size"] == ref.size
                and prev["model"] == self.model and prev.get("detector") == self.detector):
            self.carried.inc()
            Metrics.counter("ldot", "carried").inc()
            row = dict(prev)
            row["uri"] = ref.uri
            row["embedding"] = np.asarray(row["embedding"], dtype=np.float32)
            yield beam.pvalue.TaggedOutput(CARRIED, row)
        else:
            yield ref


class SplitRefsBySnapshot(beam.PTransform):
    """refs -> {"todo": refs to read, "carried": rows copied from the snapshot, unread}. ``previous``: the snapshot's
    embeddings directory; its stamps table is the sibling ``stamps/`` directory."""

    def __init__(self, previous: str, model_fingerprint: str, detector_fingerprint: str) -> None:
        super().__init__()
        self.previous = previous.rstrip("/")
        self.model = model_fingerprint
        self.detector = detector_fingerprint

    def expand(self, refs: beam.PCollection) -> dict[str, beam.PCollection]:
        p = refs.pipeline
        previous = (p
                    | "ReadSnapshot" >> ReadFromParquet(f"{self.previous}/*.parquet", columns=SNAPSHOT_COLUMNS)
                    | "SnapshotById" >> beam.Map(lambda row: (row["image_id"], row)))
        stamps = (p
                  | "ReadStamps" >> ReadFromParquet(f"{stamps_dir(self.previous)}/*.parquet",
                                                    columns=["image_id", "size", "stamp"])
                  | "StampsById" >> beam.Map(lambda row: (row["image_id"], row)))
        current = refs | "CurrentById" >> beam.Map(lambda ref: (ref.image_id, ref))
        split = ({"cur": current, "prev": previous, "stamp": stamps}
                 | "Join" >> beam.CoGroupByKey()
                 | "CarryUnread" >> beam.ParDo(CarryUnread(self.model, self.detector)).with_outputs(
                     CARRIED, main="todo"))
        return {"todo": split.todo, CARRIED: split[CARRIED]}


def stamps_dir(embeddings_dir: str) -> str:
    return f"{posixpath.dirname(embeddings_dir.rstrip('/'))}/{STAMPS}"


def has_stamps(embeddings_dir: str) -> bool:
    """Whether a snapshot has a stamps table (one written before metadata change detection has none: read all)."""
    fs, path = fsspec.core.url_to_fs(stamps_dir(embeddings_dir))
    return bool(fs.exists(path) and fs.glob(f"{path}/*.parquet"))
