"""The ``ldot`` command line: a click group whose sub-commands load lazily.

Each command lives in its own ``jobs`` module and is imported only when it runs, so ``ldot --help`` stays
instant and a machine without detectron2 (or Beam) can still use the commands that do not need it.
"""

from __future__ import annotations

import importlib
import logging

import click

# command name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "index": "jobs.index_images:index_cmd",
    "regions": "jobs.regions:regions_cmd",
    "build-index": "jobs.build_index:build_index_cmd",
    "search": "jobs.search:search_cmd",
    "index-info": "jobs.search:index_info_cmd",
    "eval": "jobs.evaluate:eval_cmd",
    "nightly": "jobs.nightly:nightly_cmd",
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """lightningdot-index: embed images with LightningDOT and publish FAISS indexes."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
