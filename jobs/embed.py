"""``ldot index``: embed images into Parquet with the Beam pipeline (unknown flags go to Beam)."""

from __future__ import annotations

import json

import click

from core.paths import absolute
from jobs.options import alpha_option, detector_config_option, encoder_config_option, local_workers_option
from pipeline.beam_args import BeamFlagsCommand, split_beam_args
from pipeline.embed_job import EmbedJob, run_embed_job
from pipeline.launch_checks import absolute_model_paths, check_embed_launch


@click.command(cls=BeamFlagsCommand, options_metavar="INPUT... [OPTIONS] [BEAM FLAGS] [-- INPUT...]")
@click.option("--output", "-o", required=True, help="Output directory (local path or fsspec URL).")
@click.option("--checkpoint", help="LightningDOT checkpoint (coco-ft.pt, flickr-ft.pt, LightningDot.pt, ours).")
@encoder_config_option
@click.option("--detector-weights", help="Bottom-up-attention detector weights (.pkl converted from Caffe, or .pth).")
@detector_config_option
@click.option("--regions", help="Skip detection: read region features (regions Parquet, UNITER LMDB or BUTD TSV).")
@click.option("--keep-regions", is_flag=True, help="Also write the region features to OUTPUT/regions/.")
@alpha_option()
@click.option("--random-weights", is_flag=True, help="Random weights for both models: smoke runs and demos only.")
@click.option("--max-failure-rate", type=float, help="Exit non-zero when more than this fraction of inputs fail.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, or auto (CUDA when the worker has it).")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--detector-batch-size", default=4, show_default=True, help="Images per detector forward pass.")
@click.option("--encoder-batch-size", default=64, show_default=True, help="Images per encoder forward pass.")
@click.option("--share-models/--no-share-models", default=None,
              help="One copy of each model per GPU for all of a worker's processes. Default: on for CUDA.")
@local_workers_option
@click.option("--overwrite", is_flag=True, help="Replace the tables of an earlier run in OUTPUT.")
@click.pass_context
def index_cmd(ctx: click.Context, workers: int | None, **options: object) -> None:
    """Embed INPUT images (directories, globs, files, fsspec URLs, .csv/.jsonl/.parquet manifests).

    Writes OUTPUT/embeddings/*.parquet, OUTPUT/failures/*.parquet and OUTPUT/run.json. Any other flag
    (--runner, --project, --region, --setup_file, --temp_location, ...) is passed to Beam. Local paths are
    taken relative to the current directory (workers get them absolute).
    """
    paths, beam_args = split_beam_args(ctx.args)  # positionals and unknown flags, in command-line order
    inputs = [absolute(p) for p in paths]  # workers run in another working directory
    options = {**absolute_model_paths(options), "output": absolute(options["output"])}  # type: ignore[arg-type]
    check_embed_launch(beam_args, inputs, {"--output": options["output"]}, options)  # type: ignore[arg-type]
    job = EmbedJob(inputs=inputs, beam_args=beam_args, **options)  # type: ignore[arg-type]
    report = run_embed_job(job, workers=workers)
    counts = report["counts"]
    click.echo(json.dumps({"embedded": counts["embedded"], "failed": counts["failed"],
                           "failed_by_error": counts["failed_by_error"], "seconds": report["seconds"],
                           "images_per_s": report["images_per_s"], "model": report["model"],
                           "output": report["output"]}, indent=2))
