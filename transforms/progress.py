"""Progress of an in-process run: a bar on a terminal, a log line every few seconds otherwise.

Each terminal PCollection (listed inputs, embedded rows, every failure table) gets a small counting DoFn that the
runner fuses into the stage producing it, so the display moves while images are being processed. The counts live
in one tally per run and process. In an in-process run (FnApiRunner, one worker) that process runs every stage and
its bar is the run's. Anywhere else (``--workers N``, a job service, a cluster) each process sees only its share:
its lines start with ``partial_prefix`` and never show a total, a percentage or an end; the launcher's display
(``pipeline.progress_poll``) speaks for the whole run.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam

LISTED, LIST_FAILED, EMBEDDED, STAGE_FAILED = "listed", "list_failed", "embedded", "stage_failed"  # EMBEDDED: done


def partial_prefix(pid: int | None = None) -> str:
    """What a worker's own progress line starts with when other processes do part of the run."""
    return f"worker {pid or os.getpid()}, partial: "


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
    """One run's counts in this process; prints at most every ``every`` seconds, and when the last input lands.
    ``partial``: other processes do part of the run, so this one's counts are its share only: its lines say so,
    the first comes with the first count (a short share would print none), and none says the run is done."""

    def __init__(self, every: float, done_label: str = "embedded", partial: bool = False) -> None:
        self.every = every
        self.done_label = done_label
        self.partial = partial
        self.lock = threading.Lock()
        self.total = self.ok = self.failed = 0
        self.start = self.last = time.monotonic()
        self.printed = False
        self.tty = sys.stderr.isatty() and not partial  # lines of several processes must not overwrite each other

    def add(self, kind: str) -> None:
        with self.lock:
            if kind in (LISTED, LIST_FAILED):
                self.total += 1
            if kind in (STAGE_FAILED, LIST_FAILED):
                self.failed += 1
            elif kind == EMBEDDED:
                self.ok += 1
            now = time.monotonic()
            finished = not self.partial and self.total > 0 and self.ok + self.failed == self.total
            due = now - self.last >= self.every or (self.partial and not self.printed)
            if kind != LISTED and (due or finished):
                self.last, self.printed = now, True
                self._print(self.line(now - self.start), finished)

    def line(self, seconds: float) -> str:
        """The whole run's bar, or this process's share of it (no total: the others' are not known here)."""
        if self.partial:
            return partial_prefix() + progress_line(self.ok, self.failed, seconds, None, done_label=self.done_label)
        return progress_line(self.ok, self.failed, seconds, self.total or None, done_label=self.done_label)

    def _print(self, line: str, finished: bool) -> None:
        if self.tty:
            sys.stderr.write(f"\r[ldot] {line}   " + ("\n" if finished else ""))
            sys.stderr.flush()
        else:
            print(f"{time.strftime('%H:%M:%S')} [ldot] {line}", file=sys.stderr, flush=True)


_TALLIES: dict[str, Tally] = {}
_TALLIES_LOCK = threading.Lock()


def tally(run_id: str, every: float = 5.0, done_label: str = "embedded", partial: bool = False) -> Tally:
    with _TALLIES_LOCK:
        return _TALLIES.setdefault(run_id, Tally(every, done_label, partial))


class CountProgress(beam.DoFn):
    """Counts each element of one terminal PCollection as ``kind`` in the run's tally; outputs nothing.
    ``done_label`` names what a finished input became (``embedded``, or ``extracted`` for a regions-only run);
    ``partial``: the run is not in-process, so this process's lines are labelled as its share (``Tally``). The
    launcher decides it where it builds the pipeline; the flag travels with the pickled DoFn."""

    def __init__(self, run_id: str, kind: str, every_seconds: float = 5.0, done_label: str = "embedded",
                 partial: bool = False) -> None:
        self.run_id, self.kind, self.every, self.done_label = run_id, kind, every_seconds, done_label
        self.partial = partial

    def setup(self) -> None:
        self.tally = tally(self.run_id, self.every, self.done_label, self.partial)

    def process(self, element: Any) -> Iterator[Any]:
        self.tally.add(self.kind)
        return iter(())
