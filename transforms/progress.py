"""Progress of a local run: a status line on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam


class ReportProgress(beam.DoFn):
    """Consumes ("ok" | "failed") markers; each worker process reports what it has finished."""

    def __init__(self, every_seconds: float = 5.0) -> None:
        self.every = every_seconds

    def setup(self) -> None:
        self.start = self.last = time.monotonic()
        self.counts = {"ok": 0, "failed": 0}
        self.tty = sys.stderr.isatty()

    def process(self, marker: str) -> Iterator[Any]:
        self.counts[marker] += 1
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._report(now)
        return iter(())

    def teardown(self) -> None:
        if self.tty and sum(self.counts.values()):
            sys.stderr.write("\n")

    def _report(self, now: float) -> None:
        done = sum(self.counts.values())
        rate = done / max(now - self.start, 1e-9)
        line = f"embedded {self.counts['ok']}, failed {self.counts['failed']} ({rate:.1f} images/s)"
        if self.tty:
            sys.stderr.write(f"\r[ldot] {line}   ")
            sys.stderr.flush()
        else:
            print(f"{time.strftime('%H:%M:%S')} [ldot] {line}", file=sys.stderr, flush=True)
