"""Progress of a local run: a bar on a terminal, a log line every few seconds otherwise.

Each terminal PCollection (listed inputs, embedded rows, every failure table) gets a small counting DoFn that the
runner fuses into the stage producing it, so the display moves while images are being processed. The counts live
in one tally per run and process: the local runner runs every stage in this process; on a distributed runner each
worker logs its own share.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam

LISTED, LIST_FAILED, EMBEDDED, STAGE_FAILED = "listed", "list_failed", "embedded", "stage_failed"  # EMBEDDED: done


def progress_line(ok: int, failed: int, seconds: float, total: int | None, width: int = 30,
                  done_label: str = "embedded") -> str:
    """``[#######.......] 120/400  30%  embedded 118, failed 2  4.1 images/s  ETA 1m08s`` (no bar without a total)."""
    done = ok + failed
    rate = done / max(seconds, 1e-9)
    counts = f"{done_label} {ok}, failed {failed}  {rate:.1f} images/s"
    if not total:
        return counts
    frac = min(done / total, 1.0)
    filled = round(frac * width)
    eta = (total - done) / rate if rate > 0 and done < total else 0.0
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {100 * frac:3.0f}%  {counts}  "
            f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")


class Tally:
    """One run's counts in this process; prints at most every ``every`` seconds, and when the last input lands."""

    def __init__(self, every: float, done_label: str = "embedded") -> None:
        self.every = every
        self.done_label = done_label
        self.lock = threading.Lock()
        self.total = self.ok = self.failed = 0
        self.start = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def add(self, kind: str) -> None:
        with self.lock:
            if kind in (LISTED, LIST_FAILED):
                self.total += 1
            if kind in (STAGE_FAILED, LIST_FAILED):
                self.failed += 1
            elif kind == EMBEDDED:
                self.ok += 1
            now = time.monotonic()
            finished = self.total > 0 and self.ok + self.failed == self.total
            if kind != LISTED and (now - self.last >= self.every or finished):
                self.last = now
                line = progress_line(self.ok, self.failed, now - self.start, self.total or None,
                                     done_label=self.done_label)
                self._print(line, finished)

    def _print(self, line: str, finished: bool) -> None:
        if self.tty:
            sys.stderr.write(f"\r[ldot] {line}   " + ("\n" if finished else ""))
            sys.stderr.flush()
        else:
            print(f"{time.strftime('%H:%M:%S')} [ldot] {line}", file=sys.stderr, flush=True)


_TALLIES: dict[str, Tally] = {}
_TALLIES_LOCK = threading.Lock()


def tally(run_id: str, every: float = 5.0, done_label: str = "embedded") -> Tally:
    with _TALLIES_LOCK:
        return _TALLIES.setdefault(run_id, Tally(every, done_label))


class CountProgress(beam.DoFn):
    """Counts each element of one terminal PCollection as ``kind`` in the run's tally; outputs nothing.
    ``done_label`` names what a finished input became (``embedded``, or ``extracted`` for a regions-only run)."""

    def __init__(self, run_id: str, kind: str, every_seconds: float = 5.0, done_label: str = "embedded") -> None:
        self.run_id, self.kind, self.every, self.done_label = run_id, kind, every_seconds, done_label

    def setup(self) -> None:
        self.tally = tally(self.run_id, self.every, self.done_label)

    def process(self, element: Any) -> Iterator[Any]:
        self.tally.add(self.kind)
        return iter(())
