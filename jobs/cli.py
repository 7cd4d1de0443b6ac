"""The ``ldot`` command line: a click group whose sub-commands load lazily.

Each command lives in its own ``jobs`` module and is imported only when it runs, so ``ldot --help`` stays
instant and a machine without detectron2 (or Beam) can still use the commands that do not need it.
"""

from __future__ import annotations

import importlib
import logging
import warnings

import click

from core.errors import LdotError

# command name -> ("module:attribute" of a click.Command, one-line help shown by `ldot --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "index": ("jobs.embed:index_cmd", "Embed images (or region features) into Parquet with Beam."),
    "regions": ("jobs.regions:regions_cmd", "Extract bottom-up-attention region features to Parquet."),
    "build-index": ("jobs.build_index:build_index_cmd", "Build and publish sharded FAISS indexes."),
    "search": ("jobs.search:search_cmd", "Search the live index with a text query."),
    "index-info": ("jobs.search:index_info_cmd", "Print the live index manifest."),
    "serve": ("jobs.serve:serve_cmd", "Serve text search over HTTP (JSON and a search page)."),
    "eval": ("jobs.evaluate:eval_cmd", "Recall@K of embeddings (and an index) against captions."),
    "nightly": ("jobs.nightly:nightly_cmd", "Incremental, crash-safe rebuild for cron."),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[cmd_name][0].split(":")
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context) -> object:
        """Every command ends the same way on a project error: its message on stderr, its exit code."""
        try:
            return super().invoke(ctx)
        except LdotError as e:
            click.echo(f"ldot {ctx.invoked_subcommand or ''}: error: {e}".replace(" :", ":"), err=True)
            ctx.exit(e.exit_code)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """lightningdot-index: embed images with LightningDOT and publish FAISS indexes."""
    logging.getLogger().setLevel(logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)


def _drop_known_noise(record: logging.LogRecord) -> bool:
    """Beam warns on import that the optional GCP client libraries are absent; local runs never need them."""
    return not str(record.msg).startswith("apitools not found")


def _configure_logging() -> None:
    """Runs before any command module is imported (click resolves the sub-command before the group runs)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_known_noise)
    # detectron2's import-time deprecation chatter says nothing about the user's run
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid")


_configure_logging()


if __name__ == "__main__":
    main()
