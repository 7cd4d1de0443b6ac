"""The checks that stop a nightly run before it builds or publishes, each returning why it refused (None: passed).

- failure guard: the share of inputs that failed is above ``max_failure_rate``;
- vanished guard: the share of the base snapshot's images missing from this run is above ``max_vanished_rate``
  (a failed mount, an emptied folder or manifest);
- recall guard: the built version's recall self-check is below ``min_recall`` (the build raises
  ``RecallBelowFloorError``; ``recall_refusal`` words it);
- clock check (a warning, never a refusal): snapshots or versions dated after this run's clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from index import layout
from pipeline.nightly import vanished
from pipeline.nightly.settings import NightlyConfig

CLOCK_SKEW_S = 300.0  # a snapshot or version dated this far after the run's clock was made by a wrong clock


def failure_refusal(cfg: NightlyConfig, counts: dict[str, Any], rate: float) -> str | None:
    if cfg.max_failure_rate is None or rate <= cfg.max_failure_rate:
        return None
    return (f"failure rate {rate:.1%} ({counts['failed']} of {counts['inputs']}) exceeds "
            f"max_failure_rate {cfg.max_failure_rate:.1%}")


def vanished_refusal(cfg: NightlyConfig, gone: dict[str, Any] | None) -> str | None:
    """``gone``: ``vanished.measure``'s result, None on a run without a base snapshot."""
    if cfg.max_vanished_rate is None or gone is None or gone["rate"] <= cfg.max_vanished_rate:
        return None
    return (f"{vanished.describe(gone)}: above max_vanished_rate {cfg.max_vanished_rate:.1%} "
            "(a failed mount, an emptied folder or manifest? if the removal is intended, run "
            "once with --max-vanished-rate 1)")


def recall_refusal(cfg: NightlyConfig, manifest: dict[str, Any], version: str, live: str | None) -> str:
    """Why a version built below the recall floor is not published."""
    sc = manifest.get("selfcheck", {})
    return (f"recall@{sc.get('k', 10)} self-check {sc.get('recall_at_k', float('nan')):.4f} is below "
            f"min_recall {cfg.min_recall}: version {version} built but NOT published; "
            f"{live or 'nothing'} stays live")


def dated_ahead(names: Iterable[str], now: dt.datetime) -> list[str]:
    """The snapshot/version names dated more than ``CLOCK_SKEW_S`` after ``now``: one of the clocks is wrong.
    Harmless for what is carried and kept (both are ordered by sequence number), but worth an operator's look."""
    return sorted(name for name in set(names)
                  if (t := layout.version_time(name)) is not None and (t - now).total_seconds() > CLOCK_SKEW_S)


def clock_warning(ahead: list[str], now: str) -> str:
    return (f"WARNING: {len(ahead)} snapshot(s)/version(s) are dated after this run's clock "
            f"({now}): {', '.join(ahead[:3])}{' ...' if len(ahead) > 3 else ''}; the clock of this "
            "machine or of the run that made them is wrong. They are ordered by sequence number, not by "
            "name, so nothing is re-embedded or deleted because of it.")
