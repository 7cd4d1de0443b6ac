"""``ldot nightly``: the incremental, crash-safe rebuild for cron (see the pipeline.nightly package for how it works).

Exit codes: 0 ok (published, or nothing changed), 1 the run broke or passed its deadline, 2 bad settings, 3 recall
guard (built, not published), 4 failure-rate or vanished-share guard (not built, not published), 75 another run
holds the lock (did nothing).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import click
from click.core import ParameterSource

from jobs.options import detector_config_option, encoder_config_option

EPILOG = ("Exit codes: 0 ok (published, or nothing changed); 1 the run broke, or passed --deadline; 2 bad settings; "
          "3 recall below --min-recall (built, not published); 4 failure rate above --max-failure-rate, or more of "
          "the last snapshot missing than --max-vanished-rate (not published); 75 another run holds the lock. In "
          "every non-zero case the live index is left as it was.")

# flag name -> NightlyConfig field
_OPTIONS = ("work_dir", "index_root", "checkpoint", "encoder_config", "detector_config", "detector_weights", "regions",
            "random_weights", "device", "max_failure_rate", "max_vanished_rate", "min_recall", "keep", "shards",
            "factory", "max_memory", "nprobe", "seed", "selfcheck_queries", "workers", "lock_file", "report",
            "force_build", "deadline", "verify_content")


@click.command("nightly", context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
               options_metavar="[INPUT]... [OPTIONS] [BEAM FLAGS]", epilog=EPILOG)
@click.option("--config", "-c", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file with any of the settings below (flags given here override it). Relative paths in it "
                   "are taken relative to the file.")
@click.option("--work-dir", help="Snapshots, run reports and the lock live here (local path or fsspec URL).")
@click.option("--index-root", help="Index root the versions are published under (local path or fsspec URL).")
@click.option("--checkpoint", help="LightningDOT checkpoint.")
@encoder_config_option
@detector_config_option
@click.option("--detector-weights", help="Bottom-up-attention detector weights.")
@click.option("--regions", help="Read pre-extracted region features instead of images.")
@click.option("--random-weights/--no-random-weights", default=None, help="Random weights: smoke runs only.")
@click.option("--device", help="cpu, cuda or auto (default auto).")
@click.option("--max-failure-rate", type=click.FloatRange(0, 1),
              help="Do not publish when more than this fraction of inputs fail (exit 4).")
@click.option("--max-vanished-rate", type=click.FloatRange(0, 1),
              help="Do not publish when more than this share of the last snapshot's images is missing from this "
                   "run, not listed any more or failed (exit 4; default 0.1; 1 allows any removal).")
@click.option("--min-recall", type=click.FloatRange(0, 1),
              help="Do not publish a version whose recall@10 self-check is below this (exit 3).")
@click.option("--keep", type=click.IntRange(min=1), help="Snapshots and index versions kept (default 3).")
@click.option("--shards", type=click.IntRange(min=1), help="Index shards (default: one per started million).")
@click.option("--factory", help="FAISS factory string or 'auto' (default auto).")
@click.option("--max-memory", help="Memory budget of the served index, guides 'auto' (default 4G).")
@click.option("--nprobe", type=click.IntRange(min=1), help="IVF lists probed (default: tuned).")
@click.option("--seed", type=int, help="Seed of the index training sample (default 0).")
@click.option("--selfcheck-queries", type=click.IntRange(min=0),
              help="Held-out queries of the recall self-check (default 1000; the index trains on the other rows).")
@click.option("--workers", type=int, help="Local runner: worker processes.")
@click.option("--lock-file", help="Local lock file (default WORK_DIR/nightly.lock, or "
              "~/.cache/ldot/nightly-<hash>.lock for an object-store work dir: the lock then only excludes runs "
              "on this machine, so run the job from one machine).")
@click.option("--report", help="Also write the run report JSON here.")
@click.option("--force-build/--no-force-build", default=None,
              help="Build and publish a new version even when nothing changed.")
@click.option("--deadline", type=click.FloatRange(min=0, min_open=True),
              help="Seconds the whole run may take (default 82800, 23 h): past it the run stops itself, exits 1 and "
                   "frees the lock; the live index stays as it was.")
@click.option("--verify-content/--no-verify-content", default=None,
              help="Read and hash every image, even those whose size and version stamp (mtime, ETag, generation) "
                   "match the last snapshot (which are otherwise carried over unread); e.g. for a weekly run.")
@click.pass_context
def nightly_cmd(ctx: click.Context, config_file: str | None, **flags: object) -> None:
    """Rebuild the index incrementally: embed new/changed INPUT images (carry the rest over from the last snapshot),
    build a new index version, check it, publish it, clean up. Prints the run report as JSON."""
    from core.errors import EXIT_LOCKED, EXIT_NAMES
    from core.paths import absolute
    from pipeline import nightly as n
    from pipeline.beam_args import split_beam_args
    from pipeline.launch_checks import CONFIGS, absolute_model_paths, check_embed_launch, is_config_name

    positional, beam_args = split_beam_args(ctx.args)  # inputs and unknown (Beam) flags, in command-line order
    values: dict[str, object] = {}
    if config_file:  # a bad setting raises ConfigError: jobs.cli prints it and exits 2
        in_file = n.NightlyConfig.normalize(n.load_config_file(config_file))
        values = n.NightlyConfig.rebase_paths(in_file, os.path.dirname(os.path.abspath(config_file)))
        values.update({k: in_file[k] for k in CONFIGS if k in in_file and is_config_name(k, in_file[k])})
    given = {name: flags[name] for name in _OPTIONS  # flags given on the command line override the file
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    given = absolute_model_paths(given)  # flags' paths are relative to the current directory, as usual
    for name in ("work_dir", "index_root", "lock_file", "report"):
        if given.get(name) is not None:
            given[name] = absolute(given[name])
    values.update(given)
    if positional:
        values["inputs"] = [absolute(p) for p in positional]
    if beam_args:
        values["beam_args"] = [*_as_list(values.get("beam_args")), *beam_args]
    cfg = n.NightlyConfig.from_mapping(values)
    check_embed_launch(cfg.beam_args, cfg.inputs, {"--work-dir": cfg.work_dir, "--index-root": cfg.index_root},
                       dataclasses.asdict(cfg))

    code, report = n.run_nightly(cfg, echo=lambda msg: click.echo(msg, err=True))
    if code == EXIT_LOCKED:
        click.echo(f"ldot nightly: {report['reason']}", err=True)
        sys.exit(code)
    click.echo(json.dumps(report, indent=2))
    if code != 0:
        click.echo(f"ldot nightly: exit {code} ({EXIT_NAMES.get(code, '?')}): {report.get('reason')}", err=True)
    sys.exit(code)


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]  # type: ignore[union-attr]

