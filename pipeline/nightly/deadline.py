"""The deadline of a nightly run (``NightlyConfig.deadline``): it ends the whole process from a timer thread.

The run may be stuck where no exception reaches it (a read that never returns, a hung Beam stage), and every stage
is safe to cut short, as with kill -9: nothing unmarked is read and the next run's recovery removes it. The report
says "timeout", the exit code is 1.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

from core.errors import EXIT_ERROR
from index import layout
from pipeline.nightly.report import RunReport

DEADLINE_GRACE_S = 60.0  # past the deadline, writing the final report may take this long before the process ends


def start_deadline(report: RunReport, say: Callable[[str], None]) -> threading.Timer | None:
    """A started daemon timer that ends the process ``report.cfg.deadline`` seconds from now (None: no deadline);
    the caller cancels it when the run ends first."""
    if report.cfg.deadline is None:
        return None
    timer = threading.Timer(report.cfg.deadline, _deadline_passed, (report, say))
    timer.daemon = True
    timer.start()
    return timer


def _deadline_passed(report: RunReport, say: Callable[[str], None]) -> None:
    """In the timer thread: write the report, then end the process (the kernel drops the run lock)."""
    cfg, fields = report.cfg, report.fields
    stage = fields["stage"]
    try:
        live = layout.read_current(cfg.index_root)
    except Exception as e:
        live = f"unknown ({type(e).__name__})"
    reason = (f"deadline of {cfg.deadline:g}s passed during stage {stage!r}: run stopped, lock released; "
              f"{live or 'nothing'} is live; the next run reuses what this one finished and removes the rest")
    fields["error"] = {"type": "DeadlineExceeded", "message": reason}
    backstop = threading.Timer(DEADLINE_GRACE_S, os._exit, (EXIT_ERROR,))  # if even the report write hangs
    backstop.daemon = True
    backstop.start()
    try:
        ended = report.end("timeout", EXIT_ERROR, reason, fields["published"])
    except BaseException:  # the report could not be written (the storage may be what hangs): stop anyway
        ended = True
    if not ended:
        return  # the run finished just before its deadline
    say(f"STOPPED: {reason}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_ERROR)
