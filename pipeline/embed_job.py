"""The main job: INPUT images (or pre-extracted regions) -> LightningDOT embeddings in Parquet, as one Beam
pipeline, plus ``run.json``. ``run_embed_job`` is what ``ldot index`` and the nightly job call."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow.parquet as pq

from core.errors import FailureGuardError, UsageError
from encoders.regions.config_files import config_path as detector_config_path
from pipeline.beam_args import pipeline_options
from transforms.decoding import ALPHA_MODES, DEFAULT_MAX_PIXELS, DecodeImages
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
    random_weights: bool = False
    max_failure_rate: float | None = None
    device: str = "auto"
    dtype: str = "float32"
    detector_batch_size: int = 4
    encoder_batch_size: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS
    alpha: str = "drop"  # transparency: dropped as the original extraction's cv2.imread, or composited on white
    overwrite: bool = False
    previous: str | None = None  # an earlier embeddings directory: unchanged images are carried over from it
    verify_content: bool = False  # with ``previous``: read and hash every image, even those whose stamp matches
    beam_args: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not self.inputs and not self.regions:
            raise JobError("nothing to index: give INPUT paths or --regions")
        if self.checkpoint is None and not self.random_weights:
            raise JobError("no LightningDOT weights: give --checkpoint PATH (e.g. coco-ft.pt), or --random-weights "
                           "for a smoke run")
        if self.regions is None and self.detector_weights is None and not self.random_weights:
            raise JobError("no detector weights: give --detector-weights PATH (a BUTD .pkl/.pth), --regions PATH "
                           "to use pre-extracted features, or --random-weights for a smoke run")
        if self.alpha not in ALPHA_MODES:
            raise JobError(f"--alpha must be one of {', '.join(ALPHA_MODES)}, got {self.alpha!r}")
        if self.max_failure_rate is not None and not 0 <= self.max_failure_rate <= 1:
            raise JobError(f"--max-failure-rate must be within 0..1, got {self.max_failure_rate}")


@dataclass
class Models:
    encoder: EncoderSpec
    detector: DetectorSpec | None
    model_fingerprint: str
    detector_fingerprint: str


def prepare_models(job: EmbedJob) -> Models:
    """Load both models once in the launcher: fail fast on bad weights or configs, and fingerprint them."""
    from encoders.lightningdot import LightningDOT

    model = LightningDOT.load(job.checkpoint, job.encoder_config, random_weights=job.checkpoint is None)
    encoder = EncoderSpec(config=tuple(sorted(model.config.to_dict().items())), checkpoint=job.checkpoint,
                          device=job.device, dtype=job.dtype)
    model_fp = model.fingerprint
    del model
    if job.regions is not None:
        return Models(encoder, None, model_fp, "precomputed")
    from encoders.regions import RegionExtractor

    config_path = detector_config_path(job.detector_config)
    extractor = RegionExtractor.from_config(config_path, weights=job.detector_weights, device="cpu")
    # Workers get the merged config (``_BASE_`` resolved), so they need no access to the launcher's files.
    detector = DetectorSpec(config_text=extractor.cfg.dump(), config_name=Path(config_path).name,
                            weights=job.detector_weights, device=job.device, batch_size=job.detector_batch_size)
    # the pixels the detector sees are part of what its features depend on (incremental runs compare this)
    detector_fp = extractor.fingerprint if job.alpha == "drop" else f"{extractor.fingerprint}+alpha-{job.alpha}"
    return Models(encoder, detector, model_fp, detector_fp)


def build_pipeline(p: beam.Pipeline, job: EmbedJob, models: Models) -> dict[str, beam.PCollection]:
    """Assemble the stages; returns the PCollections that were written (for tests and composition)."""
    failures, carried, unread = [], [], []
    run_id = uuid.uuid4().hex

    def count(pcoll: beam.PCollection, label: str, kind: str) -> None:
        pcoll | f"Progress{label}" >> beam.ParDo(CountProgress(run_id, kind))

    def split_by_snapshot(items: beam.PCollection) -> beam.PCollection:
        if job.previous is None:
            return items
        split = items | "Incremental" >> SplitBySnapshot(f"{job.previous.rstrip('/')}/*.parquet",
                                                         models.model_fingerprint, models.detector_fingerprint,
                                                         unread[0] if unread else None)
        carried.append(split[CARRIED])
        return split["todo"]

    if job.regions is not None:
        regions = split_by_snapshot(p | "PrecomputedRegions" >> ReadPrecomputedRegions(job.regions))
    else:
        listed = p | "List" >> ListImages(job.inputs)
        # -- change detection from the listing's metadata: the snapshot's rows of images with its size and stamp
        # are carried unread; every listed image's size and stamp go to stamps/ for the next run --
        refs = listed["refs"]
        if job.previous is not None and not job.verify_content and has_stamps(job.previous):
            pre = refs | "CarryUnread" >> SplitRefsBySnapshot(job.previous, models.model_fingerprint,
                                                              models.detector_fingerprint)
            refs = pre["todo"]
            carried.append(pre[CARRIED])
            unread.append(pre[CARRIED])
        (listed["refs"] | "StampRows" >> beam.Map(stamp_row)
         | "WriteStamps" >> WriteRows(f"{job.output.rstrip('/')}/{STAMPS}/part", STAMPS_SCHEMA))
        # -- end of change detection --
        read = refs | "Read" >> beam.ParDo(ReadImageBytes()).with_outputs(FAILED, main="ok")
        # -- inputs that hold their images (WebDataset shards, inline-bytes Parquet): transforms.sources --
        images = read.ok
        if any(is_source(spec) for spec in job.inputs):
            sourced = p | "Sources" >> ReadSources(job.inputs)
            images = (read.ok, sourced["bytes"]) | "AllImages" >> beam.Flatten()
            failures.append(sourced[FAILED])
            sourced["captions"] | "WriteCaptions" >> WriteRows(f"{job.output.rstrip('/')}/captions/part",
                                                               CAPTIONS_SCHEMA)
        # -- end of sources --
        todo = split_by_snapshot(images)
        decoded = todo | "Decode" >> beam.ParDo(DecodeImages(job.max_pixels, job.alpha)).with_outputs(FAILED, main="ok")
        extracted = (decoded.ok
                     | "BatchImages" >> beam.BatchElements(min_batch_size=1, max_batch_size=job.detector_batch_size)
                     | "Extract" >> beam.ParDo(ExtractRegions(models.detector)).with_outputs(FAILED, main="ok"))
        failures += [listed[FAILED], read[FAILED], decoded[FAILED], extracted[FAILED]]
        count(listed["refs"], "Listed", LISTED)
        count(listed[FAILED], "ListFailed", LIST_FAILED)
        for label, pcoll in (("Read", read), ("Decode", decoded), ("Extract", extracted)):
            count(pcoll[FAILED], f"{label}Failed", STAGE_FAILED)
        regions = extracted.ok
    embedded = (regions
                | "BatchRegions" >> beam.BatchElements(
                    min_batch_size=1, max_batch_size=job.encoder_batch_size,
                    length_fn=lambda r: r.regions.num_boxes, bucket_boundaries=[16, 32, 48, 64, 80])
                | "Embed" >> beam.ParDo(EmbedRegions(models.encoder, models.model_fingerprint,
                                                     models.detector_fingerprint)).with_outputs(FAILED, main="ok"))
    failures.append(embedded[FAILED])
    count(embedded.ok, "Embedded", EMBEDDED)
    count(embedded[FAILED], "EmbedFailed", STAGE_FAILED)
    for i, rows_carried in enumerate(carried):
        count(rows_carried, f"Carried{i}", EMBEDDED)
    all_failures = failures | "AllFailures" >> beam.Flatten()
    out = job.output.rstrip("/")
    rows = [embedded.ok, *carried] | "AllEmbeddings" >> beam.Flatten()
    rows | "WriteEmbeddings" >> WriteRows(f"{out}/embeddings/part", embeddings_schema())
    all_failures | "WriteFailures" >> WriteRows(f"{out}/failures/part", FAILURES_SCHEMA)
    if job.keep_regions:
        from encoders.regions.formats.regions_table import REGIONS_SCHEMA, regions_to_row, rows_to_table

        (regions
         | "RegionRows" >> beam.Map(lambda r: regions_to_row(r.image_id, r.uri, r.regions, True))
         | "WriteRegions" >> WriteRows(f"{out}/regions/part", REGIONS_SCHEMA, batch_size=64, to_table=rows_to_table))
    return {"embeddings": rows, "failures": all_failures}


def _prepare_output(job: EmbedJob) -> None:
    fs, root = fsspec.core.url_to_fs(job.output)
    for sub in ("embeddings", "failures", "regions", "captions", STAMPS):
        path = f"{root.rstrip('/')}/{sub}"
        if fs.exists(path) and fs.ls(path):
            if not job.overwrite:
                raise JobError(f"{job.output}/{sub} already holds files: pass --overwrite or choose another --output")
            fs.rm(path, recursive=True)
    fs.makedirs(root, exist_ok=True)


def count_table(directory: str) -> tuple[int, list[dict[str, Any]]]:
    """Row count of a Parquet directory, and its rows when it is small (the failures table)."""
    fs, path = fsspec.core.url_to_fs(directory)
    files = sorted(fs.glob(f"{path.rstrip('/')}/*.parquet")) if fs.exists(path) else []
    total, rows = 0, []
    for name in files:
        with fs.open(name, "rb") as f:
            table = pq.read_table(f)
        total += table.num_rows
        if "stage" in table.column_names:
            rows += table.to_pylist()
    return total, rows


def _counters(result: Any) -> dict[str, int]:
    """Beam counters of the ``ldot`` namespace (carried/new/changed/dropped, per-stage counts), where the runner
    reports them; summed over steps."""
    try:
        counters = result.metrics().query()["counters"]
    except Exception:  # some runners do not report metrics to the launcher
        return {}
    totals: dict[str, int] = {}
    for c in counters:
        if c.key.metric.namespace == "ldot":
            totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(c.committed or 0)
    return dict(sorted(totals.items()))


def run_embed_job(job: EmbedJob, workers: int | None = None) -> dict[str, Any]:
    """Run to completion and return (and write) the run report; raises JobError on a broken guard."""
    job.validate()
    if job.random_weights:
        log.warning("RANDOM WEIGHTS: embeddings are meaningless; for smoke runs and demos only")
    _prepare_output(job)
    started = time.time()
    models = prepare_models(job)
    options = pipeline_options(job.beam_args, workers)
    p = beam.Pipeline(options=options)
    build_pipeline(p, job, models)
    result = p.run()
    result.wait_until_finish()
    seconds = time.time() - started
    out = job.output.rstrip("/")
    embedded, _ = count_table(f"{out}/embeddings")
    failed, failure_rows = count_table(f"{out}/failures")
    by_stage: dict[str, int] = {}
    by_error: dict[str, int] = {}
    for row in failure_rows:
        by_stage[row["stage"]] = by_stage.get(row["stage"], 0) + 1
        by_error[row["error"]] = by_error.get(row["error"], 0) + 1
    total = embedded + failed
    rate = failed / total if total else 0.0
    report = {
        "inputs": job.inputs, "regions": job.regions, "output": job.output,
        "counts": {"inputs": total, "embedded": embedded, "failed": failed, "failed_by_stage": by_stage,
                   "failed_by_error": by_error},
        "counters": _counters(result),
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
    if job.max_failure_rate is not None and rate > job.max_failure_rate:
        raise FailureRateError(f"failure rate {rate:.1%} ({failed} of {total}) exceeds --max-failure-rate "
                       f"{job.max_failure_rate:.1%}; see {out}/failures/")
    return report
