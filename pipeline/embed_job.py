"""The main job: INPUT images (or pre-extracted regions) -> LightningDOT embeddings in Parquet, as one Beam
pipeline, plus ``run.json``. ``run_embed_job`` is what ``ldot index``, ``ldot regions`` (the same pipeline in its
regions-only mode: no encoder) and the nightly job call."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import fsspec

from core.errors import FailureGuardError, UsageError
from encoders.regions.config_files import config_path as detector_config_path
from pipeline.accounting import UNKNOWN, RunCounts
from pipeline.beam_args import pipeline_options, runner_kind, runs_in_process
from pipeline.progress_poll import follow
from transforms.decoding import ALPHA_MODES, DEFAULT_MAX_PIXELS, DecodeImages
from transforms.duplicates import OnePerIdAcross
from transforms.embedding import EmbedRegions
from transforms.incremental import (
    CARRIED,
    STAMPS,
    STAMPS_SCHEMA,
    SplitBySnapshot,
    SplitRefsBySnapshot,
    has_stamps,
    stamp_row,
)
from transforms.listing import ListImages
from transforms.models import DetectorSpec, EncoderSpec
from transforms.progress import EMBEDDED, LIST_FAILED, LISTED, STAGE_FAILED, CountProgress
from transforms.reading import ReadImageBytes
from transforms.records import FAILED
from transforms.regions import ExtractRegions, ReadPrecomputedRegions
from transforms.sources import CAPTIONS_SCHEMA, ReadSources, is_source
from transforms.writing import FAILURES_SCHEMA, WriteRows, embeddings_schema

log = logging.getLogger(__name__)


class JobError(UsageError):
    """The run could not start: a flag, input or model file is wrong (the message says which)."""


class FailureRateError(JobError, FailureGuardError):
    """The run completed, but more inputs failed than ``--max-failure-rate`` allows."""

    exit_code = FailureGuardError.exit_code  # not JobError's (a usage error)


@dataclass
class EmbedJob:
    inputs: list[str]
    output: str
    checkpoint: str | None = None
    encoder_config: str | None = None
    detector_config: str | None = None
    detector_weights: str | None = None
    regions: str | None = None
    keep_regions: bool = False
    regions_only: bool = False  # ``ldot regions``: stop after extraction, write the regions table only
    soft_labels: bool = True  # keep each region's class distribution in the regions table
    regions_per_file: int | None = None  # most rows per regions Parquet file (None: as the runner's bundles fall)
    random_weights: bool = False
    max_failure_rate: float | None = None
    device: str = "auto"
    dtype: str = "float32"
    detector_batch_size: int = 4
    encoder_batch_size: int = 64
    share_models: bool | None = None  # one model copy per GPU for all of a worker's processes (None: on CUDA)
    max_pixels: int = DEFAULT_MAX_PIXELS
    alpha: str = "drop"  # transparency: dropped as the original extraction's cv2.imread, or composited on white
    overwrite: bool = False
    previous: str | None = None  # an earlier embeddings directory: unchanged images are carried over from it
    verify_content: bool = False  # with ``previous``: read and hash every image, even those whose stamp matches
    beam_args: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.regions_only:
            if self.regions is not None or self.previous is not None:
                raise JobError("a regions-only run extracts from images: --regions and --previous do not apply")
            if not self.inputs:
                raise JobError("nothing to extract: give INPUT paths")
        if not self.inputs and not self.regions:
            raise JobError("nothing to index: give INPUT paths or --regions")
        if self.checkpoint is None and not self.random_weights and not self.regions_only:
            raise JobError("no LightningDOT weights: give --checkpoint PATH (e.g. coco-ft.pt), or --random-weights "
                           "for a smoke run")
        if self.regions is None and self.detector_weights is None and not self.random_weights:
            raise JobError("no detector weights: give --detector-weights PATH (a BUTD .pkl/.pth), --regions PATH "
                           "to use pre-extracted features, or --random-weights for a smoke run")
        if self.alpha not in ALPHA_MODES:
            raise JobError(f"--alpha must be one of {', '.join(ALPHA_MODES)}, got {self.alpha!r}")
        if self.max_failure_rate is not None and not 0 <= self.max_failure_rate <= 1:
            raise JobError(f"--max-failure-rate must be within 0..1, got {self.max_failure_rate}")

    @property
    def tables(self) -> tuple[str, ...]:
        """The OUTPUT tables this run writes (and so replaces with ``overwrite``)."""
        return ("regions", "failures") if self.regions_only else ("embeddings", "failures", "regions", "captions",
                                                                   STAMPS)


@dataclass
class Models:
    encoder: EncoderSpec | None  # None in a regions-only run
    detector: DetectorSpec | None  # None with pre-extracted regions
    model_fingerprint: str | None
    detector_fingerprint: str


def prepare_models(job: EmbedJob, workers: int | None = None) -> Models:
    """Load the models once in the launcher: fail fast on bad weights or configs, and fingerprint them.
    ``workers``: local worker processes, each of which then takes its share of the CPU threads."""
    processes = workers if workers and workers > 1 and runner_kind(job.beam_args) == "local" else None
    encoder, model_fp = None, None
    if not job.regions_only:
        from encoders.lightningdot import LightningDOT

        model = LightningDOT.load(job.checkpoint, job.encoder_config, random_weights=job.checkpoint is None)
        encoder = EncoderSpec(config=tuple(sorted(model.config.to_dict().items())), checkpoint=job.checkpoint,
                              device=job.device, dtype=job.dtype, cpu_processes=processes)
        model_fp = model.fingerprint
        del model
    if job.regions is not None:
        return Models(encoder, None, model_fp, "precomputed")
    from encoders.regions import RegionExtractor

    config_path = detector_config_path(job.detector_config)
    extractor = RegionExtractor.from_config(config_path, weights=job.detector_weights, device="cpu")
    # Workers get the merged config (``_BASE_`` resolved), so they need no access to the launcher's files.
    detector = DetectorSpec(config_text=extractor.cfg.dump(), config_name=Path(config_path).name,
                            weights=job.detector_weights, device=job.device, batch_size=job.detector_batch_size,
                            cpu_processes=processes)
    # the pixels the detector sees are part of what its features depend on (incremental runs compare this)
    detector_fp = extractor.fingerprint if job.alpha == "drop" else f"{extractor.fingerprint}+alpha-{job.alpha}"
    return Models(encoder, detector, model_fp, detector_fp)


def build_pipeline(p: beam.Pipeline, job: EmbedJob, models: Models, *,
                   partial_progress: bool) -> dict[str, beam.PCollection]:
    """Assemble the stages; returns the PCollections that were written (for tests and composition).
    ``partial_progress``: the run is not in-process, so each process's progress lines are its share only."""
    run_id = uuid.uuid4().hex
    done_label = "extracted" if job.regions_only else "embedded"
    failures: dict[str, beam.PCollection] = {}  # stage label -> its failure rows
    carried: list[beam.PCollection] = []
    unread: list[beam.PCollection] = []  # carried without reading: their images are not read again

    def count(pcoll: beam.PCollection, label: str, kind: str) -> None:
        pcoll | f"Progress{label}" >> beam.ParDo(CountProgress(run_id, kind, done_label=done_label,
                                                                  partial=partial_progress))

    def split_by_snapshot(items: beam.PCollection) -> beam.PCollection:
        if job.previous is None:
            return items
        split = items | "Incremental" >> SplitBySnapshot(f"{job.previous.rstrip('/')}/*.parquet",
                                                         models.model_fingerprint, models.detector_fingerprint,
                                                         unread[0] if unread else None)
        carried.append(split[CARRIED])
        return split["todo"]

    if job.regions is not None:
        precomputed = p | "PrecomputedRegions" >> ReadPrecomputedRegions(job.regions)
        failures["Regions"] = precomputed[FAILED]
        regions = split_by_snapshot(precomputed["regions"])
    else:
        listed = p | "List" >> ListImages(job.inputs)
        refs = listed["refs"]
        # -- inputs that hold their images (WebDataset shards, inline-bytes Parquet): transforms.sources; an image_id
        # both listed and in a source (or in two sources) is resolved to one by the listing's rule, before the
        # listed files are read --
        source_bytes = None
        if any(is_source(spec) for spec in job.inputs):
            sourced = p | "Sources" >> ReadSources(job.inputs)
            one = (refs, sourced["bytes"]) | "OnePerId" >> OnePerIdAcross()
            refs, source_bytes = one["refs"], one["bytes"]
            failures.update(Sources=sourced[FAILED], Duplicates=one[FAILED])
            sourced["captions"] | "WriteCaptions" >> WriteRows(f"{job.output.rstrip('/')}/captions/part",
                                                               CAPTIONS_SCHEMA)
        # -- end of sources --
        # -- change detection from the listing's metadata: the snapshot's rows of images with its size and stamp
        # are carried unread; every listed image's size and stamp go to stamps/ for the next run --
        (refs | "StampRows" >> beam.Map(stamp_row)
         | "WriteStamps" >> WriteRows(f"{job.output.rstrip('/')}/{STAMPS}/part", STAMPS_SCHEMA))
        if job.previous is not None and not job.verify_content and has_stamps(job.previous):
            pre = refs | "CarryUnread" >> SplitRefsBySnapshot(job.previous, models.model_fingerprint,
                                                              models.detector_fingerprint)
            refs = pre["todo"]
            carried.append(pre[CARRIED])
            unread.append(pre[CARRIED])
        # -- end of change detection --
        read = refs | "Read" >> beam.ParDo(ReadImageBytes()).with_outputs(FAILED, main="ok")
        images = read.ok if source_bytes is None else (read.ok, source_bytes) | "AllImages" >> beam.Flatten()
        todo = split_by_snapshot(images)
        decoded = (todo | "Decode" >> beam.ParDo(DecodeImages(job.max_pixels, job.alpha))
                   .with_outputs(FAILED, main="ok"))
        extracted = decoded.ok | "Extract" >> ExtractRegions(models.detector, job.share_models)
        failures.update(List=listed[FAILED], Read=read[FAILED], Decode=decoded[FAILED], Extract=extracted[FAILED])
        count(listed["refs"], "Listed", LISTED)
        regions = extracted.ok
    out = job.output.rstrip("/")
    written: dict[str, beam.PCollection] = {}
    if job.regions_only:
        count(regions, "Extracted", EMBEDDED)
    else:
        embedded = regions | "Embed" >> EmbedRegions(models.encoder, models.model_fingerprint,
                                                     models.detector_fingerprint, batch_size=job.encoder_batch_size,
                                                     share_across_processes=job.share_models)
        failures["Embed"] = embedded[FAILED]
        count(embedded.ok, "Embedded", EMBEDDED)
        for i, rows_carried in enumerate(carried):
            count(rows_carried, f"Carried{i}", EMBEDDED)
        rows = [embedded.ok, *carried] | "AllEmbeddings" >> beam.Flatten()
        rows | "WriteEmbeddings" >> WriteRows(f"{out}/embeddings/part", embeddings_schema())
        written["embeddings"] = rows
    for label, stage_failures in failures.items():
        count(stage_failures, f"{label}Failed", LIST_FAILED if label == "List" else STAGE_FAILED)
    all_failures = list(failures.values()) | "AllFailures" >> beam.Flatten()
    all_failures | "WriteFailures" >> WriteRows(f"{out}/failures/part", FAILURES_SCHEMA)
    if job.keep_regions or job.regions_only:
        from encoders.regions.formats.regions_table import (
            REGIONS_SCHEMA,
            ROW_GROUP_ROWS,
            regions_to_row,
            rows_to_table,
        )

        soft = job.soft_labels
        # each written table is one row group: ROW_GROUP_ROWS images, so a lookup by image_id decodes no others
        (regions
         | "RegionRows" >> beam.Map(lambda r: regions_to_row(r.image_id, r.uri, r.regions, soft))
         | "WriteRegions" >> WriteRows(f"{out}/regions/part", REGIONS_SCHEMA, batch_size=ROW_GROUP_ROWS,
                                       to_table=rows_to_table, max_rows_per_file=job.regions_per_file))
        written["regions"] = regions
    return {**written, "failures": all_failures}


def _prepare_output(job: EmbedJob) -> None:
    fs, root = fsspec.core.url_to_fs(job.output)
    for sub in job.tables:
        path = f"{root.rstrip('/')}/{sub}"
        if fs.exists(path) and fs.ls(path):
            if not job.overwrite:
                raise JobError(f"{job.output}/{sub} already holds files: pass --overwrite or choose another --output")
            fs.rm(path, recursive=True)
    fs.makedirs(root, exist_ok=True)


def run_embed_job(job: EmbedJob, workers: int | None = None) -> dict[str, Any]:
    """Run to completion and return (and write) the run report; raises JobError on a broken guard."""
    job.validate()
    if job.random_weights:
        made = "region features" if job.regions_only else "embeddings"
        log.warning("RANDOM WEIGHTS: %s are meaningless; for smoke runs and demos only", made)
    _prepare_output(job)
    started = time.time()
    models = prepare_models(job, workers)
    options = pipeline_options(job.beam_args, workers)
    p = beam.Pipeline(options=options)
    in_process = runs_in_process(job.beam_args, workers)
    build_pipeline(p, job, models, partial_progress=not in_process)
    result = p.run()
    if in_process:
        result.wait_until_finish()  # the in-process bar (transforms.progress) shows the run
    else:
        follow(result, echo=lambda line: print(line, file=sys.stderr, flush=True))
    seconds = time.time() - started
    out = job.output.rstrip("/")
    done_key, done_table = ("extracted", "regions") if job.regions_only else ("embedded", "embeddings")
    run_counts = RunCounts.of_run(result, out, done_table)  # footers + Beam counters (None = unknown)
    counts = run_counts.report()
    if job.regions_only:
        counts[done_key] = counts.pop("embedded")
    failed, total, rate = counts["failed"], counts["inputs"], counts["failure_rate"]
    regions_map = None
    if job.keep_regions or job.regions_only:  # the image_id -> row group map that serves re-ranking lookups
        from encoders.regions.formats.regions_lookup import write_regions_map

        regions_map = write_regions_map(f"{out}/regions")
    report = {
        "inputs": job.inputs, "regions": job.regions, "output": job.output,
        "counts": counts,
        "counters": UNKNOWN if run_counts.counters is None else run_counts.counters, "regions_map": regions_map,
        "failure_rate": rate, "seconds": round(seconds, 3),
        "images_per_s": round(total / seconds, 3) if seconds > 0 else None,
        "model": models.model_fingerprint, "detector": models.detector_fingerprint,
        "random_weights": job.random_weights,
        "runner": options.get_all_options().get("runner"), "workers": workers,
        "flags": {k: v for k, v in asdict(job).items() if k not in ("inputs",)},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }
    with fsspec.open(f"{out}/run.json", "w") as f:
        json.dump(report, f, indent=2)
    run_counts.check()  # a run whose tables and counters disagree lost data: exit 1, naming the numbers
    if job.max_failure_rate is not None and rate > job.max_failure_rate:
        raise FailureRateError(f"failure rate {rate:.1%} ({failed} of {total}) exceeds --max-failure-rate "
                               f"{job.max_failure_rate:.1%}; see {out}/failures/")
    return report
