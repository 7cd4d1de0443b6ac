"""Named fault points for crash tests: ``LDOT_NIGHTLY_CRASH_AT=<stage>`` SIGKILLs the run at that point.

The run calls ``point(stage)`` where a kill leaves a distinct on-disk state (see ``STAGES``); the index build
reports its own named points through ``build_index(on_point=...)`` and ``on_build_point`` maps them onto stages,
so no fault depends on the wording of a log line. SIGKILL, not an exception: nothing gets to clean up, as when
the machine dies.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

CRASH_ENV = "LDOT_NIGHTLY_CRASH_AT"
# where LDOT_NIGHTLY_CRASH_AT can kill the run, in run order
STAGES = ("locked", "recovered", "listing", "embedded", "snapshot", "build", "built", "publish", "published",
          "retention", "finished")
# build_index's named points -> the stage a kill there is (the version folder holds trained.index, no shard)
BUILD_POINTS = {"trained": "build"}


def point(stage: str) -> None:
    """SIGKILL this process when ``LDOT_NIGHTLY_CRASH_AT`` names ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown fault point {stage!r} (one of {', '.join(STAGES)})")
    if os.environ.get(CRASH_ENV) == stage:
        sys.stderr.write(f"ldot nightly: {CRASH_ENV}={stage}: killing myself (SIGKILL)\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def on_build_point(name: str) -> None:
    """``build_index``'s ``on_point`` hook."""
    if name in BUILD_POINTS:
        point(BUILD_POINTS[name])


def on_first_call(stage: str) -> Callable[..., None]:
    """A callback that is ``point(stage)`` on its first call and nothing after (e.g. after the first deletion)."""
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1
        if calls[0] == 1:
            point(stage)

    return hook
