"""The Beam stages of ``build_index`` (module-level DoFns, so Beam's pickler ships them by reference).

    Create(work units) -> Reshuffle -> EncodeUnit ──(shard, (unit, rows))──┐
    Create((s, marker) for every shard) ───────────────────────────────────┴─ Flatten -> GroupByKey -> MergeShard
    work units -> ExactTopK -> CombineGlobally(TopK) -> WriteGroundTruth

Only small records (paths, counts, top-k tables) cross the shuffle; vectors are read by the workers from the inputs
and encoded partials go through the staging directory of the version being built.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import apache_beam as beam
import numpy as np

from index import storage
from index.build import _load_index, encode_unit, exact_topk_unit, merge_shard, merge_topk
from index.source import WorkUnit
from pipeline.beam_args import pipeline_options


class EncodeUnit(beam.DoFn):
    def __init__(self, trained_url: str, staging: str, n_shards: int, dim: int) -> None:
        self.trained_url, self.staging, self.n_shards, self.dim = trained_url, staging, n_shards, dim
        self.trained = None

    def setup(self) -> None:
        self.trained = _load_index(self.trained_url)

    def process(self, unit: WorkUnit):
        yield from encode_unit(unit, self.trained, self.staging, self.n_shards, self.dim)


class MergeShard(beam.DoFn):
    def __init__(self, trained_url: str, staging: str, vdir: str, n_shards: int) -> None:
        self.trained_url, self.staging, self.vdir, self.n_shards = trained_url, staging, vdir, n_shards
        self.trained = None

    def setup(self) -> None:
        self.trained = _load_index(self.trained_url)

    def process(self, item):
        shard, units = item
        info = merge_shard(shard, units, self.trained, self.staging, self.vdir, self.n_shards)
        storage.write_text(storage.join(self.staging, "info", f"{shard:05d}.json"), json.dumps(info))
        yield info


class ExactTopK(beam.DoFn):
    def __init__(self, queries: np.ndarray, k: int, dim: int) -> None:
        self.queries, self.k, self.dim = queries, k, dim

    def process(self, unit: WorkUnit):
        yield exact_topk_unit(unit, self.queries, self.k, self.dim)


class TopK(beam.CombineFn):
    def __init__(self, k: int) -> None:
        self.k = k

    def create_accumulator(self):
        return None

    def add_input(self, acc, item):
        return item if acc is None else merge_topk([acc, item], self.k)

    def merge_accumulators(self, accs):
        accs = [a for a in accs if a is not None]
        return merge_topk(accs, self.k) if accs else None

    def extract_output(self, acc):
        return acc


class WriteGroundTruth(beam.DoFn):
    def __init__(self, url: str) -> None:
        self.url = url

    def process(self, acc):
        if acc is None:
            return
        buf = io.BytesIO()
        np.savez(buf, scores=acc[0], ids=acc[1])
        storage.write_bytes(self.url, buf.getvalue())
        yield self.url


def run_shard_pipeline(units: list[WorkUnit], trained_url: str, staging: str, vdir: str, n_shards: int, dim: int,
                       queries: np.ndarray, k: int, beam_args: Sequence[str] | None) -> None:
    with beam.Pipeline(options=pipeline_options(list(beam_args or []))) as p:
        work = p | "Units" >> beam.Create(units) | "Spread" >> beam.Reshuffle()
        parts = work | "EncodeUnits" >> beam.ParDo(EncodeUnit(trained_url, staging, n_shards, dim))
        every = p | "AllShards" >> beam.Create([(s, (-1, 0)) for s in range(n_shards)])
        _ = ((parts, every) | "Flatten" >> beam.Flatten() | "ByShard" >> beam.GroupByKey()
             | "MergeShards" >> beam.ParDo(MergeShard(trained_url, staging, vdir, n_shards)))
        if len(queries):
            _ = (work | "ExactTopK" >> beam.ParDo(ExactTopK(queries, k, dim))
                 | "MergeTopK" >> beam.CombineGlobally(TopK(k)).without_defaults()
                 | "WriteGroundTruth" >> beam.ParDo(WriteGroundTruth(storage.join(staging, "groundtruth.npz"))))
