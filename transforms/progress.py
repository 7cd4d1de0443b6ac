"""Progress of a local run: a bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam


def progress_line(ok: int, failed: int, seconds: float, total: int | None, width: int = 30) -> str:
    """``[#######.......] 120/400  30%  embedded 118, failed 2  4.1 images/s  ETA 1m08s`` (no bar without a total)."""
    done = ok + failed
    rate = done / max(seconds, 1e-9)
    counts = f"embedded {ok}, failed {failed}  {rate:.1f} images/s"
    if not total:
        return counts
    frac = min(done / total, 1.0)
    filled = round(frac * width)
    eta = (total - done) / rate if rate > 0 and done < total else 0.0
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {100 * frac:3.0f}%  {counts}  "
            f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")


class ReportProgress(beam.DoFn):
    """Consumes ("ok" | "failed") markers; each worker process reports what it has finished. ``total`` (a side
    input: everything listed) turns the status into a bar."""

    def __init__(self, every_seconds: float = 5.0) -> None:
        self.every = every_seconds

    def setup(self) -> None:
        self.start = self.last = time.monotonic()
        self.counts = {"ok": 0, "failed": 0}
        self.total: int | None = None
        self.tty = sys.stderr.isatty()

    def process(self, marker: str, total: int | None = None) -> Iterator[Any]:
        self.counts[marker] += 1
        self.total = total
        now = time.monotonic()
        if now - self.last >= self.every or (total and sum(self.counts.values()) == total):
            self.last = now
            self._report(now)
        return iter(())

    def teardown(self) -> None:
        if self.tty and sum(self.counts.values()):
            sys.stderr.write("\n")

    def _report(self, now: float) -> None:
        line = progress_line(self.counts["ok"], self.counts["failed"], now - self.start, self.total)
        if self.tty:
            sys.stderr.write(f"\r[ldot] {line}   ")
            sys.stderr.flush()
        else:
            print(f"{time.strftime('%H:%M:%S')} [ldot] {line}", file=sys.stderr, flush=True)
