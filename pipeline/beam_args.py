"""Beam flags: split a command line's leftover tokens into our positionals and Beam's flags, build the
pipeline options (the one place that sets the default runner) and say where a runner's workers run.

click hands unknown options to us with their values detached (``--runner DataflowRunner`` arrives as two
tokens), so a value would be taken for an INPUT. Beam's own argument parsers say which flags take a value.
"""

from __future__ import annotations

import argparse
import functools
from typing import Literal

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


@functools.cache
def _flag_arity() -> dict[str, int]:
    """--flag -> number of values it takes (0 for switches), over every registered PipelineOptions class."""
    parser = argparse.ArgumentParser(add_help=False, conflict_handler="resolve")
    for cls in _all_subclasses(PipelineOptions):
        try:
            cls._add_argparse_args(parser)
        except Exception:  # an options class that cannot register here (missing optional dependency)
            continue
    return {flag: (0 if action.nargs == 0 else 1) for flag, action in parser._option_string_actions.items()}


def split_beam_args(tokens: list[str]) -> tuple[list[str], list[str]]:
    """-> (positionals, beam_args). A flag unknown to Beam keeps a following non-flag token as its value."""
    arity = _flag_arity()
    positionals: list[str] = []
    beam_args: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("-") and token != "-":
            beam_args.append(token)
            takes_value = "=" not in token and arity.get(token, 1) == 1
            if takes_value and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                beam_args.append(tokens[i + 1])
                i += 1
        else:
            positionals.append(token)
        i += 1
    return positionals, beam_args


DEFAULT_RUNNER = "FnApiRunner"  # in-process, offline; DirectRunner would first try to download Prism


def pipeline_options(beam_args: list[str], workers: int | None = None) -> PipelineOptions:
    """Unknown CLI flags go to Beam untouched; without --runner, the embedded local runner."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={DEFAULT_RUNNER}")
    if workers and workers > 1:
        args += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    return PipelineOptions(args)


RunnerKind = Literal["local", "cluster", "dataflow"]


def runner_name(beam_args: list[str]) -> str:
    """The runner the flags ask for (class name, as given or from a dotted path), or the default."""
    name = PipelineOptions(list(beam_args)).view_as(StandardOptions).runner or DEFAULT_RUNNER
    return name.rsplit(".", 1)[-1]


def runner_kind(beam_args: list[str]) -> RunnerKind:
    """Where the workers run, which decides what they can see of the launcher's machine:

    - ``local``: this machine, the launcher's working directory (Beam's local runners; InteractiveRunner wraps one);
    - ``dataflow``: Google's machines, which never see the launcher's disk;
    - ``cluster``: any other runner (PortableRunner, FlinkRunner, SparkRunner, ...): other processes, other working
      directories, maybe other machines; local paths work only on a filesystem they share.
    """
    name = runner_name(beam_args).lower().removesuffix("runner")  # Beam accepts "flink" for FlinkRunner too
    if name in {r.lower().removesuffix("runner") for r in StandardOptions.LOCAL_RUNNERS} | {"interactive"}:
        return "local"
    return "dataflow" if name in ("dataflow", "testdataflow") else "cluster"


def runs_in_process(beam_args: list[str], workers: int | None = None) -> bool:
    """Every stage runs in the launcher's process (a local runner without worker processes): only then can a
    display in that process see the whole run."""
    if runner_kind(beam_args) != "local" or (workers or 1) > 1:
        return False
    return PipelineOptions(list(beam_args)).get_all_options().get("direct_running_mode") != "multi_processing"
