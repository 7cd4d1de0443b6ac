"""``BuildSettings``: everything that decides how one index version is built, checked and published.

One dataclass for both commands: ``ldot build-index`` maps its flags onto it, ``ldot nightly`` its settings file
(``NightlyConfig.build_settings``). ``identity()`` is the part that decides what a version holds, so the nightly job
can tell whether a version built earlier from the same rows is one it would build again.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from index.errors import SettingsError
from index.factory import parse_memory
from index.operating_points import DEFAULT_MAX_QUERY_MS

METRICS = ("ip", "l2")


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    shards: int | None = None               # None: one per started million vectors
    factory: str = "auto"                   # a FAISS factory string, or "auto" (chosen from size, dim, max_memory)
    max_memory: int | str | None = "4G"     # serving memory budget of the whole index; guides "auto"
    nprobe: int | None = None               # None: picked from the measured operating points (target_recall)
    max_query_ms: float = DEFAULT_MAX_QUERY_MS  # batch-1 p50 target of "auto" and of the served nprobe
    seed: int = 0                           # of the training / held-out query sample and of k-means
    selfcheck_queries: int = 1000           # held-out rows whose exact top-k the recall self-check compares with
    train_per_list: int = 64                # training vectors per IVF list
    target_recall: float = 0.95             # recall@10 that nprobe tuning aims for
    metric: str = "ip"                      # ip (LightningDOT's dot product) or l2
    min_recall: float | None = None         # a version whose self-check is below this is not published
    publish: bool = True                    # False: build and check, leave CURRENT as it is
    keep_versions: int | None = 3           # retention after publishing (None: none)
    rows_per_unit: int = 100_000            # rows per parallel work unit (row groups are never split)

    IDENTITY: ClassVar[tuple[str, ...]] = ("shards", "factory", "max_memory", "nprobe", "seed", "selfcheck_queries",
                                           "train_per_list", "target_recall", "metric", "max_query_ms")

    def __post_init__(self) -> None:
        """Refuse bad values before any data is read (a typo must not cost a training run)."""
        def at_least(name: str, low: int) -> None:
            value = getattr(self, name)
            if value is not None and value < low:
                raise SettingsError(f"{name} must be >= {low}, got {value}")

        for name, low in (("shards", 1), ("nprobe", 1), ("selfcheck_queries", 0), ("train_per_list", 1),
                          ("keep_versions", 1), ("rows_per_unit", 1)):
            at_least(name, low)
        for name in ("target_recall", "min_recall"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise SettingsError(f"{name} must be within 0..1, got {value}")
        if not self.max_query_ms > 0:
            raise SettingsError(f"max_query_ms must be > 0, got {self.max_query_ms}")
        if self.metric not in METRICS:
            raise SettingsError(f"unknown metric {self.metric!r} (one of {', '.join(METRICS)})")
        try:
            parse_memory(self.max_memory)
        except ValueError as e:
            raise SettingsError(str(e)) from e

    def identity(self) -> dict[str, Any]:
        """The settings that decide a version's content (not whether or how long it is kept or published)."""
        return {name: getattr(self, name) for name in self.IDENTITY}
