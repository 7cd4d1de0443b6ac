"""Click options shared by several commands, each defined once so flag, default and help cannot drift apart.

Flags of the same name whose help or default differ on purpose stay with their command: e.g. ``ldot nightly``'s
model flags default to None, so that its settings file can fill them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def _group(*options: Callable[[F], F]) -> Callable[[F], F]:
    """Several options as one decorator, shown in ``--help`` in the order given."""

    def apply(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


def query_model_options(verb: str) -> Callable[[F], F]:
    """The text tower and index flags of ``ldot search`` and ``ldot serve``; ``verb`` ("Search", "Serve") words
    ``--force``'s help."""
    return _group(
        click.option("--checkpoint", type=str, default=None, help="LightningDOT checkpoint (.pt)."),
        click.option("--vocab", type=str, default=None, help="WordPiece vocab file (bert-base-cased vocab.txt)."),
        click.option("--encoder-config", type=str, default=None,
                     help="Encoder config JSON (default: the checkpoint's)."),
        click.option("--random-weights", is_flag=True, help="Random text tower (smoke tests only)."),
        click.option("--device", default="cpu", show_default=True),
        click.option("--nprobe", type=click.IntRange(min=1), default=None, help="Override the manifest's nprobe."),
        click.option("--force", is_flag=True, help=f"{verb} even if the query model differs from the index's model."),
    )


# the re-ranker's model flags of ``ldot search`` and ``ldot eval`` (its checkpoint, M and regions are worded per
# command)
reranker_model_options = _group(
    click.option("--rerank-config", default=None, help="Re-ranker config JSON (default: UNITER-base)."),
    click.option("--rerank-head", type=click.Choice(["rank", "itm"]), default="rank", show_default=True,
                 help="rank_output (fine-tuned) or itm_output's match logit (what UNITER's inf_itm.py scores)."),
)

# model sizes of ``ldot index`` and ``ldot nightly``
encoder_config_option = click.option(
    "--encoder-config", help="Encoder size: a JSON file, or a shipped name (base, tiny). Default: base.")
detector_config_option = click.option(
    "--detector-config", help="Detector YAML, or a shipped name (butd_r101_c4, tiny). Default: butd_r101_c4.")

# image decoding and local workers of ``ldot index`` and ``ldot regions``
local_workers_option = click.option(
    "--workers", type=int, help="Local runner: this many worker processes (multi_processing).")


def alpha_option() -> Callable[[F], F]:
    """``--alpha``. A function: its choices come from ``transforms.decoding``, which imports Beam, and the commands
    that do not run a pipeline (search, serve, eval) import this module too."""
    from transforms.decoding import ALPHA_MODES

    return click.option(
        "--alpha", type=click.Choice(ALPHA_MODES), default="drop", show_default=True,
        help="Transparent pixels: drop alpha as the original extraction (cv2.imread) did, or composite on white.")
