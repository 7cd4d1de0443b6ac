"""The Beam stages of an index build (module-level DoFns, so Beam's pickler ships them by reference).

    work units -> EncodeUnit ──(shard, (unit, rows))──┐
    (s, marker) for every shard ──────────────────────┴─ Flatten -> GroupByKey -> MergeShard ─┐ = BuildShards
    work units -> ExactTopK -> CombineGlobally(TopK) -> WriteGroundTruth ────────────────────┤ = ExactGroundTruth
                                           Flatten -> CombineGlobally(list) -> WriteDone <───┘ = Done

``Done`` is the one step that depends on every branch: it runs once all shards are merged and the ground truth is
written, checks that each is there, and writes the version's ``_done`` record (``index.shards``), which is all
the driver reads back.

Only small records (paths, counts, top-k tables) cross the shuffle: workers read the vectors from the inputs
themselves, and encoded partials go through the staging folder of the version being built (``index.shards``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np

from index import storage
from index.selfcheck import exact_topk, keeps_max, merge_topk, save_topk
from index.shards import done_marker, encode_unit, merge_shard, write_done
from index.source import WorkUnit

TopK = tuple[np.ndarray, np.ndarray]  # (scores [Q, k], faiss ids [Q, k])
SHARD, GROUNDTRUTH = "shard", "groundtruth"  # the branches ``Done`` joins


class EncodeUnit(beam.DoFn):
    """One work unit -> its rows encoded into per-shard partial indexes (in staging)."""

    def __init__(self, trained_url: str, staging: str, n_shards: int, dim: int) -> None:
        self.trained_url, self.staging, self.n_shards, self.dim = trained_url, staging, n_shards, dim
        self.trained: Any = None

    def setup(self) -> None:
        self.trained = storage.read_index(self.trained_url)  # once per DoFn instance, not per unit

    def process(self, unit: WorkUnit) -> Iterator[tuple[int, tuple[int, int]]]:
        yield from encode_unit(unit, self.trained, self.staging, self.n_shards, self.dim)


class MergeShard(beam.DoFn):
    """(shard, its units) -> the shard file and its id map written; its manifest entry (or id error) output."""

    def __init__(self, trained_url: str, staging: str, vdir: str, n_shards: int) -> None:
        self.trained_url, self.staging, self.vdir, self.n_shards = trained_url, staging, vdir, n_shards
        self.trained: Any = None

    def setup(self) -> None:
        self.trained = storage.read_index(self.trained_url)

    def process(self, item: tuple[int, Iterable[tuple[int, int]]]) -> Iterator[dict[str, Any]]:
        shard, units = item
        yield merge_shard(shard, units, self.trained, self.staging, self.vdir, self.n_shards)


class BuildShards(beam.PTransform):
    """Work units -> one merged shard per shard number, each written into the version (empty ones too)."""

    def __init__(self, trained_url: str, staging: str, vdir: str, n_shards: int, dim: int) -> None:
        super().__init__()
        self.trained_url, self.staging, self.vdir, self.n_shards, self.dim = trained_url, staging, vdir, n_shards, dim

    def expand(self, units: beam.PCollection) -> beam.PCollection:
        parts = units | "EncodeUnits" >> beam.ParDo(EncodeUnit(self.trained_url, self.staging, self.n_shards,
                                                               self.dim))
        every = units.pipeline | "AllShards" >> beam.Create([(s, (-1, 0)) for s in range(self.n_shards)])
        return ((parts, every) | "Flatten" >> beam.Flatten() | "ByShard" >> beam.GroupByKey()
                | "MergeShards" >> beam.ParDo(MergeShard(self.trained_url, self.staging, self.vdir, self.n_shards)))


class ExactTopK(beam.DoFn):
    """One work unit -> the exact top-k of the held-out queries among its rows."""

    def __init__(self, queries: np.ndarray, k: int, dim: int, metric: str) -> None:
        self.queries, self.k, self.dim, self.metric = queries, k, dim, metric

    def process(self, unit: WorkUnit) -> Iterator[TopK]:
        yield exact_topk(unit, self.queries, self.k, self.dim, self.metric)


class MergeTopK(beam.CombineFn):
    """Per-unit top-k tables -> the top-k over all rows (accumulators are plain arrays, so they pickle)."""

    def __init__(self, k: int, metric: str) -> None:
        self.k, self.metric = k, metric

    def create_accumulator(self) -> TopK | None:
        return None

    def add_input(self, acc: TopK | None, item: TopK) -> TopK:
        return item if acc is None else merge_topk([acc, item], self.k, keeps_max(self.metric))

    def merge_accumulators(self, accs: Iterable[TopK | None]) -> TopK | None:
        present = [a for a in accs if a is not None]
        return merge_topk(present, self.k, keeps_max(self.metric)) if present else None

    def extract_output(self, acc: TopK | None) -> TopK | None:
        return acc


class ExactGroundTruth(beam.PTransform):
    """Work units -> the exact top-k of ``queries`` over every row, written to ``url`` (``index.selfcheck``)."""

    def __init__(self, queries: np.ndarray, k: int, dim: int, metric: str, url: str) -> None:
        super().__init__()
        self.queries, self.k, self.dim, self.metric, self.url = queries, k, dim, metric, url

    def expand(self, units: beam.PCollection) -> beam.PCollection:
        return (units
                | "ExactTopK" >> beam.ParDo(ExactTopK(self.queries, self.k, self.dim, self.metric))
                | "MergeTopK" >> beam.CombineGlobally(MergeTopK(self.k, self.metric)).without_defaults()
                | "WriteGroundTruth" >> beam.FlatMap(_write_topk, self.url))


def _write_topk(acc: TopK | None, url: str) -> Iterator[str]:
    if acc is not None:
        save_topk(url, *acc)
        yield url


class WriteDone(beam.DoFn):
    """Every branch's outputs, as one list -> the checked ``_done`` record of the version (``index.shards``)."""

    def __init__(self, vdir: str, n_shards: int, rows: int, groundtruth: bool) -> None:
        self.vdir, self.n_shards, self.rows, self.groundtruth = vdir, n_shards, rows, groundtruth

    def process(self, outputs: list[tuple[str, Any]]) -> Iterator[dict[str, Any]]:
        marker = done_marker([v for k, v in outputs if k == SHARD], [v for k, v in outputs if k == GROUNDTRUTH],
                             self.n_shards)
        write_done(self.vdir, marker, self.n_shards, self.rows, self.groundtruth)
        yield marker


class Done(beam.PTransform):
    """{"shard": shard entries, "groundtruth": written ground-truth urls} -> the version's ``_done`` record,
    written once every element of every branch is there (a global combine waits for all of them)."""

    def __init__(self, vdir: str, n_shards: int, rows: int) -> None:
        super().__init__()
        self.vdir, self.n_shards, self.rows = vdir, n_shards, rows

    def expand(self, branches: dict[str, beam.PCollection]) -> beam.PCollection:
        tagged = [pcoll | f"Tag{kind.title()}" >> beam.Map(lambda v, kind=kind: (kind, v))
                  for kind, pcoll in branches.items()]
        return (tagged | "Join" >> beam.Flatten() | "All" >> beam.combiners.ToList()
                | "WriteDone" >> beam.ParDo(WriteDone(self.vdir, self.n_shards, self.rows,
                                                      GROUNDTRUTH in branches)))
