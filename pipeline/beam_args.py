"""Beam flags: split a command line's leftover tokens into our positionals and Beam's flags, build the
pipeline options (the one place that sets the default runner) and say where a runner's workers run.

click hands unknown options to us with their values detached (``--runner DataflowRunner`` arrives as two
tokens), so a value would be taken for an INPUT. Beam's own argument parsers say which flags take a value. A
token that looks like a flag but is none of Beam's would be dropped by Beam with a log line ("Discarding
unparseable args") and the run would go on without it: it is an error here instead, and ``--`` ends the flags
(an INPUT named ``-x.jpg`` goes after it).
"""

from __future__ import annotations

import difflib
import functools
from typing import Literal

import click
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, _BeamArgumentParser

from core.errors import UsageError


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


@functools.cache
def _flag_arity() -> dict[str, int]:
    """--flag -> number of values it takes (0 for switches), over every registered PipelineOptions class."""
    parser = _BeamArgumentParser(add_help=False, allow_abbrev=False, conflict_handler="resolve")
    for cls in _all_subclasses(PipelineOptions):
        try:
            cls._add_argparse_args(parser)
        except Exception:  # an options class that cannot register here (missing optional dependency)
            continue
    return {flag: (0 if action.nargs == 0 else 1) for flag, action in parser._option_string_actions.items()}


def split_beam_args(tokens: list[str]) -> tuple[list[str], list[str]]:
    """-> (positionals, beam_args). Everything after ``--`` is a positional. Raises ``UsageError`` naming every
    flag that is not one of Beam's (Beam would discard it and run without it)."""
    arity = _flag_arity()
    positionals: list[str] = []
    beam_args: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            positionals += tokens[i + 1:]
            break
        if token.startswith("-") and token != "-":
            name = token.split("=", 1)[0]
            if name not in arity:
                unknown.append(token)
            beam_args.append(token)
            takes_value = "=" not in token and arity.get(name, 0) == 1
            if takes_value and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                beam_args.append(tokens[i + 1])
                i += 1
        else:
            positionals.append(token)
        i += 1
    if unknown:
        raise UsageError(_unknown_message(unknown, arity))
    return positionals, beam_args


def _unknown_message(unknown: list[str], arity: dict[str, int]) -> str:
    hints = []
    for token in unknown:
        close = difflib.get_close_matches(token.split("=", 1)[0], arity, n=1)
        hints.append(f"{token} (did you mean {close[0]}?)" if close else token)
    return (f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: not a flag of this command nor a "
            "Beam pipeline option (Beam would discard it and run without it). An INPUT that starts with '-' goes "
            "after '--'.")


class BeamFlagsCommand(click.Command):
    """A click command that passes unknown flags through and keeps ``--`` in ``ctx.args`` (click drops it), so
    :func:`split_beam_args` can tell an INPUT named ``-x.jpg`` after ``--`` from a flag. A token that click would
    split into one of our short options and its value (``-output.jpg`` as ``-o utput.jpg``, silently replaced by
    a later ``--output``) is refused instead."""

    def __init__(self, *args, **kwargs) -> None:
        settings = {"ignore_unknown_options": True, "allow_extra_args": True, **kwargs.pop("context_settings", {})}
        super().__init__(*args, context_settings=settings, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        cut = args.index("--") if "--" in args else len(args)
        shorts = {opt for param in self.get_params(ctx) for opt in getattr(param, "opts", [])
                  if len(opt) == 2 and opt[0] == "-" and opt != "--"}
        for token in args[:cut]:
            if len(token) > 2 and token[:2] in shorts and token[1] != "-":
                raise click.UsageError(f"{token!r} would be read as {token[:2]} {token[2:]!r}: write {token[:2]} and "
                                       "its value apart, and put an INPUT that starts with '-' after '--'", ctx)
        super().parse_args(ctx, args[:cut])
        ctx.args = [*ctx.args, *args[cut:]]
        return ctx.args


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
