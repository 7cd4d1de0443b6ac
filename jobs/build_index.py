"""``ldot build-index``: embeddings Parquet -> a published version of a sharded FAISS index
(see pipeline.build_index_job)."""

from __future__ import annotations

import json

import click

from index.operating_points import DEFAULT_MAX_QUERY_MS


@click.command("build-index", context_settings=dict(ignore_unknown_options=True, allow_extra_args=True),
               options_metavar="EMBEDDINGS... [OPTIONS] [BEAM FLAGS]")
@click.option("--output", "-o", required=True, help="Index root (local path or fsspec URL).")
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Number of shards (default: one per started million vectors).")
@click.option("--factory", default="auto", show_default=True,
              help="FAISS factory string, or 'auto' to measure candidates within --max-memory and --max-query-ms.")
@click.option("--max-memory", default="4G", show_default=True,
              help="Memory budget of the whole index when served (e.g. 512M, 4G); guides 'auto'.")
@click.option("--max-query-ms", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_MAX_QUERY_MS,
              show_default=True,
              help="Batch-1 single-thread p50 latency target: 'auto' picks the best recall within it, and the "
                   "served nprobe stays within it.")
@click.option("--nprobe", type=click.IntRange(min=1), default=None,
              help="IVF lists probed per query (default: picked from the operating points measured on held-out "
                   "queries).")
@click.option("--keep-versions", type=click.IntRange(min=1), default=3, show_default=True,
              help="Versions kept after publishing (the live one is never deleted).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the training/query sample.")
@click.option("--queries", "selfcheck_queries", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Held-out queries for the recall self-check.")
@click.option("--train-per-list", type=click.IntRange(min=1), default=64, show_default=True,
              help="Training vectors per IVF list (30-256 is the usual range).")
@click.option("--target-recall", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="Recall@10 that nprobe tuning aims for.")
@click.option("--min-recall", type=click.FloatRange(0, 1), default=None,
              help="Refuse to publish a version whose recall@10 self-check is below this floor (exit code 3).")
@click.option("--no-publish", is_flag=True, help="Build and self-check, but leave CURRENT as it is.")
@click.option("--rows-per-unit", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Rows per parallel work unit (row groups are never split).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON at the end.")
@click.pass_context
def build_index_cmd(ctx: click.Context, output: str, no_publish: bool, as_json: bool, **settings: object) -> None:
    """Build sharded FAISS indexes from EMBEDDINGS (Parquet files, directories or globs) and publish them under
    OUTPUT/versions/<version>/, switching OUTPUT/CURRENT last. Unknown options are passed to Beam
    (default --runner=FnApiRunner)."""
    from core.paths import absolute
    from index.settings import BuildSettings
    from pipeline.beam_args import split_beam_args
    from pipeline.build_index_job import build_index
    from pipeline.launch_checks import check_worker_paths, require_existing

    embeddings, beam_args = split_beam_args(ctx.args)  # positionals and unknown flags, in command-line order
    if not embeddings:
        raise click.UsageError("give at least one EMBEDDINGS input")
    embeddings, output = [absolute(p) for p in embeddings], absolute(output)  # workers run in another directory
    require_existing("EMBEDDINGS", embeddings)
    check_worker_paths(beam_args, {"EMBEDDINGS": embeddings, "--output": output})
    build = BuildSettings(publish=not no_publish, **settings)  # the flags are named after its fields
    echo = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    result = build_index(embeddings, output, build, beam_args=beam_args, echo=echo)
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2))
    elif not result.published:
        click.echo(f"built {result.version} (not published; publish with index.layout.publish)")
