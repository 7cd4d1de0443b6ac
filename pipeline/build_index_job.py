"""``build_index``: embeddings Parquet -> a published, self-checked, sharded FAISS index version.

    step                                                           where it runs   code
    scan footers (rows, dim, one model fingerprint)                driver          index.source
    choose the factory (auto: measured on a sample; reasons        driver          index.chooser
      printed and recorded)
    seeded random sample -> train ONE empty index (trained.index)  driver          index.train
    per work unit: encode rows into per-shard partials, and the    Beam workers    transforms.index_shards,
      exact top-k of the held-out queries                                          index.shards, index.selfcheck
    per shard (GroupByKey): merge partials in unit order, check    Beam workers    transforms.index_shards,
      ids, write the shard and its id map                                          index.shards
    last step, after every branch: check every shard and the       one Beam        transforms.index_shards,
      ground truth are there, write <version>/_done                  worker          index.shards
    read _done, check it again (missing or wrong: refused)         driver          index.shards
    operating points, nprobe (unless given), recall@k vs exact     driver          index.selfcheck
    manifest.json last in the version; then (settings.publish)     driver          index.layout
      CURRENT -> version, and retention

``ldot build-index`` and the nightly job both call ``build_index``; a build that raises removes the version it
left incomplete (``index.discard``). ``on_point`` lets a caller act at named points of the build (the nightly
job's fault injection), see ``POINTS``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from index import layout, storage
from index.chooser import Choice, choose_for_source, exact_fits
from index.discard import discard_incomplete_version
from index.errors import RecallBelowFloorError
from index.factory import FactoryChoice, choose_factory, describe_factory, fmt_bytes, parse_memory
from index.memory import release_freed
from index.selfcheck import SELFCHECK_K, groundtruth_url, run_selfcheck
from index.settings import BuildSettings
from index.shards import read_done, staging_dir
from index.source import EmbeddingSource, WorkUnit, read_rows
from index.train import Sample, can_train_from, train_index

log = logging.getLogger(__name__)

# named points of a build, in order, passed to ``on_point``:
#   "trained": <version>/trained.index is written and no shard is (the version folder is half-written)
#   "pipeline": the Beam pipeline has ended; the driver has not read its _done record yet (no manifest)
POINTS = ("trained", "pipeline")


@dataclasses.dataclass
class BuildResult:
    version: str
    path: str                       # versions/<version> URL
    manifest: dict[str, Any]
    published: bool

    @property
    def recall(self) -> float | None:
        return self.manifest.get("selfcheck", {}).get("recall_at_k")


def build_index(inputs: Sequence[str] | str, output: str, settings: BuildSettings | None = None, *,
                beam_args: Sequence[str] | None = None, version: str | None = None,
                echo: Callable[[str], None] | None = None,
                on_point: Callable[[str], None] | None = None) -> BuildResult:
    """Build a new version of the index at ``output`` from embedding Parquet ``inputs``.

    With ``settings.publish`` False it builds and self-checks a complete version without touching ``CURRENT``
    (publish it later with ``index.layout.publish``). With ``settings.min_recall``, a version whose recall@10
    self-check is below the floor is left unpublished and ``RecallBelowFloorError`` (carrying the version and
    manifest) is raised. ``version`` names the version (default: a new timestamped name).
    """
    settings = settings or BuildSettings()
    say = echo or (lambda msg: log.info("%s", msg))
    reached = on_point or (lambda point: None)
    t_start = time.time()
    timings: dict[str, float] = {}
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)

    t0 = time.time()
    source = EmbeddingSource.open(inputs)
    n, d = source.rows, source.dim
    timings["scan"] = time.time() - t0
    say(f"{len(source.files)} embedding file(s), {n:,} rows, dim {d}, model {source.model}")
    choice, shards, chooser, chooser_sample = _choose(settings, source, say)
    for line in choice.reasoning:
        say(f"  {line}")
    say(f"factory: {choice.factory}")

    version = version or layout.new_version_name()
    vdir = layout.version_dir(output, version)
    staging = staging_dir(vdir)

    with discard_incomplete_version(output, version):  # a build that raises leaves no half-written version
        t0 = time.time()
        trained, train_rows, query_rows = train_index(choice.factory, source, choice.train_size,
                                                      settings.selfcheck_queries, settings.metric, settings.seed,
                                                      reuse=chooser_sample)
        del chooser_sample
        release_freed()  # the sample and training's work space, before the shard pipeline
        held_out = read_rows(source, query_rows, ("embedding", "image_id")) if len(query_rows) else None
        queries = held_out["embedding"] if held_out else np.zeros((0, d), np.float32)
        trained_url = storage.join(vdir, "trained.index")
        trained_sha, trained_bytes = storage.write_index(trained, trained_url)
        timings["train"] = time.time() - t0
        say(f"trained on {len(train_rows):,} sampled rows in {timings['train']:.1f}s -> {version}")
        reached("trained")

        t0 = time.time()
        units = source.work_units(settings.rows_per_unit)
        run_shard_pipeline(units, trained_url, vdir, shards, d, queries, settings.metric, beam_args)
        reached("pipeline")
        release_freed()
        infos = read_done(vdir, shards, n, groundtruth=bool(len(queries)))  # what the workers wrote, all of it
        timings["shards"] = time.time() - t0
        say(f"built {shards} shard(s) from {len(units)} work unit(s) in {timings['shards']:.1f}s")

        manifest = _manifest(version, choice, source, settings, train_rows, infos,
                             {"path": "trained.index", "sha256": trained_sha, "bytes": trained_bytes})
        t0 = time.time()
        query_ids = held_out["image_id"] if held_out else []
        manifest["nprobe"], manifest["selfcheck"] = run_selfcheck(output, manifest, staging, queries, query_ids,
                                                                  settings)
        timings["selfcheck"] = time.time() - t0
        sc = manifest["selfcheck"]
        manifest["operating_points"] = sc.pop("operating_points", None)
        say(f"self-check: recall@{SELFCHECK_K} = {sc['recall_at_k']:.4f} vs exact on {sc['queries']} held-out "
            f"queries at nprobe={manifest['nprobe']}")
        storage.rm(staging)
        timings["total"] = time.time() - t_start
        manifest.update(build_seconds=timings["total"], timings=timings, software=_software_versions(),
                        beam_args=list(beam_args or []))
        if chooser is not None:
            manifest["chooser"] = {**chooser.to_dict(), "fraction_of_build": chooser.seconds / timings["total"]}
            say(f"auto choice cost {chooser.seconds:.0f}s = {manifest['chooser']['fraction_of_build']:.2f} of the "
                "build")
        layout.write_manifest(output, version, manifest)  # last file of the version: it is now complete
        say(f"wrote {vdir} ({fmt_bytes(manifest['index_bytes'])}, {manifest['bytes_per_vector']:.1f} B/vector) "
            f"in {timings['total']:.1f}s")

        if not sc["passed"]:
            raise RecallBelowFloorError(
                f"recall@{SELFCHECK_K} self-check {sc['recall_at_k']:.4f} is below the floor {settings.min_recall}: "
                f"version {version} was built but NOT published; {layout.read_current(output) or 'nothing'} stays live",
                version=version, manifest=manifest)
        if settings.publish:
            layout.publish(output, version, keep_versions=settings.keep_versions)
            say(f"published {version} -> {storage.join(output, layout.CURRENT)}")
        return BuildResult(version=version, path=vdir, manifest=manifest, published=settings.publish)


def run_shard_pipeline(units: list[WorkUnit], trained_url: str, vdir: str, n_shards: int, dim: int,
                       queries: np.ndarray, metric: str, beam_args: Sequence[str] | None) -> None:
    """The Beam part: shards and (with held-out queries) their exact ground truth, from the same work units,
    ending in the one step that joins both and writes ``<vdir>/_done``.

    Beam is imported here, not with the module: its import holds ~85 MB that the choice and the training do not
    need (measured, MiniLM 20k x 384 auto build: training peaked at 327 MB with Beam loaded, 264 MB without; this
    pipeline is now the build's peak, ~310 MB)."""
    import apache_beam as beam

    from pipeline.beam_args import pipeline_options
    from transforms.index_shards import GROUNDTRUTH, SHARD, BuildShards, Done, ExactGroundTruth

    staging = staging_dir(vdir)
    rows = sum(u.rows for u in units)
    with beam.Pipeline(options=pipeline_options(list(beam_args or []))) as p:
        work = p | "Units" >> beam.Create(units) | "Spread" >> beam.Reshuffle()
        branches = {SHARD: work | "BuildShards" >> BuildShards(trained_url, staging, vdir, n_shards, dim)}
        if len(queries):
            branches[GROUNDTRUTH] = work | "GroundTruth" >> ExactGroundTruth(queries, SELFCHECK_K, dim, metric,
                                                                             groundtruth_url(staging))
        _ = branches | "Done" >> Done(vdir, n_shards, rows)


def _choose(settings: BuildSettings, source: EmbeddingSource,
            say: Callable[[str], None]) -> tuple[FactoryChoice, int, Choice | None, Sample | None]:
    """The factory (auto: measured on a sample, ``index.chooser``, unless exact search fits) and the shard count,
    with the reasons for both; and the chooser's record and, when it can train the index, its sample."""
    n, d = source.rows, source.dim
    chooser = sample = None
    budget = parse_memory(settings.max_memory)
    if settings.factory in (None, "", "auto") and not exact_fits(n, d, budget):
        chooser, sample = choose_for_source(source, budget, settings.max_query_ms,
                                            train_per_list=settings.train_per_list, metric=settings.metric,
                                            seed=settings.seed, echo=say)
        choice = chooser.factory
        if not can_train_from(sample, source, choice.train_size, settings.selfcheck_queries):
            # too few rows to train from: freed here, before the larger training sample is read, not held beside
            # it (measured, 300k x 768: peak 996 -> 853 MB)
            sample = None
        release_freed()  # the candidates' indexes and work space
    elif settings.factory in (None, "", "auto"):
        choice = choose_factory(n, d, settings.max_memory, train_per_list=settings.train_per_list)
    else:
        choice = describe_factory(settings.factory, n, d, settings.train_per_list)
    shards = settings.shards
    if shards is None:
        shards = max(1, math.ceil(n / 1_000_000))
        choice.reasoning.append(f"{shards} shard(s): one per started million vectors (override with --shards)")
    else:
        choice.reasoning.append(f"{shards} shard(s) as requested")
    return choice, shards, chooser, sample


def _manifest(version: str, choice: FactoryChoice, source: EmbeddingSource, settings: BuildSettings,
              train_rows: np.ndarray, infos: list[dict[str, Any]], trained: dict[str, Any]) -> dict[str, Any]:
    """Everything a reader needs to trust and search the version (self-check and timings are added later)."""
    n = source.rows
    index_bytes = sum(i["bytes"] for i in infos)
    return {
        "format": layout.FORMAT,
        "version": version,
        "created": dt.datetime.now(dt.UTC).isoformat(),
        "factory": choice.factory,
        "factory_choice": choice.to_dict(),
        "dim": source.dim,
        "metric": "inner_product" if settings.metric == "ip" else settings.metric,
        "nprobe": None,
        "count": n,
        "n_shards": len(infos),
        "ids": {"hash": "blake2b(image_id utf-8, digest 8 bytes, person 'ldot-faiss-id') & (2**63-1)",
                "shard": "faiss_id % n_shards"},
        "model": source.model,
        "sources": source.describe(),
        "seed": settings.seed,
        "train_size": len(train_rows),
        "trained": trained,
        "shards": sorted(infos, key=lambda i: i["shard"]),
        "index_bytes": index_bytes,
        "bytes_per_vector": index_bytes / max(n, 1),
        "code_bytes_per_vector": choice.bytes_per_vector,
    }


def _software_versions() -> dict[str, str]:
    import apache_beam as beam
    import faiss

    return {"faiss": faiss.__version__, "numpy": np.__version__, "pyarrow": pa.__version__,
            "apache_beam": beam.__version__}
