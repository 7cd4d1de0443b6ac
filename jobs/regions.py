"""``ldot regions``: extract bottom-up-attention region features from images into a regions Parquet table.

    ldot regions INPUT... --output DIR [--detector-config PATH] [--detector-weights PATH | --random-weights]
                 [--batch-size N] [--device auto|cpu|cuda] [--soft-labels/--no-soft-labels] [BEAM FLAGS]

The Beam pipeline of ``ldot index`` in its regions-only mode: the same listing, reading, decoding and
extraction, no encoder. Writes ``DIR/regions/*.parquet`` (schema:
``encoders.regions.formats.regions_table.REGIONS_SCHEMA``, as ``ldot index --keep-regions``),
``DIR/failures/*.parquet`` (``image_id, uri, stage, error, message``) and ``DIR/run.json``, plus the regions
table's image_id map for lookups (``encoders.regions.formats.regions_lookup``); each failure is also printed to
stderr. Exit status 0 when the run completed (even with failures).
"""

from __future__ import annotations

import json

import click

from core.paths import absolute, parquet_files
from jobs.options import alpha_option, local_workers_option
from pipeline.accounting import failure_rows
from pipeline.beam_args import BeamFlagsCommand, split_beam_args
from pipeline.embed_job import EmbedJob, run_embed_job
from pipeline.launch_checks import (
    absolute_model_paths,
    check_worker_paths,
    require_existing,
    warn_if_workers_lack_detectron2,
)


@click.command("regions", cls=BeamFlagsCommand, options_metavar="INPUT... [OPTIONS] [BEAM FLAGS] [-- INPUT...]")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--detector-config", default="butd_r101_c4", show_default=True,
              help="detectron2 YAML of the bottom-up-attention model (a file, or a shipped name: butd_r101_c4, tiny).")
@click.option("--detector-weights", default=None,
              help="Detector weights: a .pkl converted from Caffe or a .pth state dict (local path or fsspec URL).")
@click.option("--random-weights", is_flag=True, help="Use damped random weights (smoke runs and demos only).")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1), help="Images per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@alpha_option()
@click.option("--soft-labels/--no-soft-labels", default=True, show_default=True,
              help="Store the 1601-way class distribution of each region.")
@click.option("--rows-per-file", default=1000, show_default=True, type=click.IntRange(min=1),
              help="At most this many images per regions Parquet file.")
@click.option("--share-models/--no-share-models", default=None,
              help="One detector per GPU for all of a worker's processes. Default: on for CUDA, off on the CPU.")
@local_workers_option
@click.pass_context
def regions_cmd(ctx: click.Context, output: str, detector_config: str, detector_weights: str | None,
                random_weights: bool, batch_size: int, device: str, alpha: str, soft_labels: bool, rows_per_file: int,
                share_models: bool | None, workers: int | None) -> None:
    """Extract bottom-up-attention region features of INPUT images (directories, globs, files, fsspec URLs,
    .csv/.jsonl/.parquet manifests) into Parquet. Any other flag (--runner, ...) is passed to Beam. Local paths are
    taken relative to the current directory (workers get them absolute)."""
    paths, beam_args = split_beam_args(ctx.args)
    inputs = [absolute(p) for p in paths]  # workers run in another working directory
    output = absolute(output)
    if not inputs:
        raise click.UsageError("give at least one INPUT")
    if detector_weights and random_weights:
        raise click.UsageError("give either --detector-weights or --random-weights, not both")
    if not detector_weights and not random_weights:
        raise click.UsageError(
            "no detector weights: give --detector-weights PATH (a detectron2 .pkl converted from Caffe, e.g. "
            "faster_rcnn_from_caffe_attr_original.pkl, or a .pth), or --random-weights for a smoke run"
        )
    models = absolute_model_paths({"detector_config": detector_config, "detector_weights": detector_weights})
    detector_config, detector_weights = models["detector_config"], models["detector_weights"]
    # a missing INPUT is not refused here: like a file gone from a manifest, it becomes a ``read`` failure row
    require_existing("--detector-weights", [detector_weights])
    check_worker_paths(beam_args, {"INPUT": inputs, "--output": output, "--detector-weights": detector_weights})
    warn_if_workers_lack_detectron2(beam_args, extraction=True)
    if random_weights:
        click.echo("warning: --random-weights: the region features are meaningless (smoke run only)", err=True)
    job = EmbedJob(inputs=inputs, output=output, detector_config=detector_config, detector_weights=detector_weights,
                   random_weights=random_weights, regions_only=True, soft_labels=soft_labels,
                   regions_per_file=rows_per_file, device=device, detector_batch_size=batch_size, alpha=alpha,
                   share_models=share_models, overwrite=True, beam_args=beam_args)
    try:
        report = run_embed_job(job, workers=workers)
    except ImportError as exc:  # no detectron2: the message says how to install it
        raise click.ClickException(str(exc)) from exc
    out = output.rstrip("/")
    for row in failure_rows(f"{out}/failures"):
        click.echo(f"failed: {row['image_id']} ({row['stage']}): {row['error']}: {row['message']}", err=True)
    click.echo(json.dumps({"images": report["counts"]["extracted"], "failures": report["counts"]["failed"],
                           "files": parquet_files(f"{out}/regions"), "fingerprint": report["detector"],
                           "seconds": report["seconds"], "output": output}))
