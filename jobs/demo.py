"""The embedded default run: the bundled photos through ``ldot index``, ``ldot build-index`` and ``ldot search``.

Uses the tiny configs with random weights (no model files ship with the project), so it shows every stage
working together on real images in a minute; the search results themselves are meaningless until you
point the same commands at real checkpoints (see README).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from jobs.cli import main as ldot

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"  # package data: photos and a small cased vocab
IMAGES = DEMO_DATA / "images"
TINY = ["--encoder-config", "tiny"]
DETECTOR = ["--detector-config", "tiny"]
VOCAB = ["--vocab", str(DEMO_DATA / "vocab.txt")]


def _run(args: list[str]) -> None:
    click.echo(f"\n$ ldot {shlex.join(args)}", err=True)
    try:
        ldot.main(args, prog_name="ldot", standalone_mode=False)
    except SystemExit as e:
        if e.code:
            raise


@click.command()
@click.option("--output", default="out/demo", show_default=True, help="Where the demo writes its tables and index.")
@click.option("--query", default="a cat sitting on a table", show_default=True)
def demo(output: str, query: str) -> None:
    """Index the bundled photos, build and publish an index, and search it."""
    out = Path(output)
    _run(["index", str(IMAGES), "--output", str(out / "embeddings-run"), "--random-weights", *TINY, *DETECTOR,
          "--device", "cpu", "--overwrite"])
    _run(["build-index", str(out / "embeddings-run" / "embeddings"), "--output", str(out / "index")])
    _run(["search", str(out / "index"), query, "-k", "3", "--random-weights", *TINY, *VOCAB,
          "--html", str(out / "results.html")])
    click.echo(f"\nDemo done: embeddings in {out / 'embeddings-run'}, index in {out / 'index'}, "
               f"results page {out / 'results.html'}. Random weights: the ranking is meaningless.", err=True)


if __name__ == "__main__":
    sys.exit(demo())
