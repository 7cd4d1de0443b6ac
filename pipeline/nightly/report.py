"""The run report of one nightly run, ``reports/<run>.json``.

It is rewritten at every stage ("status": "running" until the end), so a run killed anywhere leaves a report
naming the stage it died in; the last write also goes to ``reports/latest.json`` (and ``NightlyConfig.report``).
The run and its deadline timer may both end the run: only the first one writes the final report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from index import layout, storage
from pipeline.accounting import UNKNOWN
from pipeline.nightly.settings import NightlyConfig
from pipeline.nightly.snapshots import REPORTS, WorkDir

REPORT_FORMAT = "ldot-nightly-report/1"
Clock = Callable[[], dt.datetime]


class RunReport:
    """The report of run ``run_id``: ``fields`` is what is written; ``stage``/``save`` rewrite it, ``end`` writes
    the final one."""

    def __init__(self, cfg: NightlyConfig, work: WorkDir, run_id: str, clock: Clock) -> None:
        self.cfg = cfg
        self.work = work
        self.run_id = run_id
        self.clock = clock
        self.t0 = time.time()
        self._saving = threading.Lock()  # the report is written by the run and, at the deadline, by the timer
        self._ended = False              # set by whichever of the two finishes the run first
        self.timings: dict[str, float] = {}
        self.fields: dict[str, Any] = {
            "format": REPORT_FORMAT, "run": run_id, "status": "starting", "stage": "lock", "exit_code": None,
            "published": False, "reason": None, "started": self.now(), "finished": None,
            "pid": os.getpid(), "host": socket.gethostname(),
            "work_dir": cfg.work_dir, "index_root": cfg.index_root,
            "base_snapshot": None, "snapshot": None, "version": None, "live_before": None, "live_after": None,
            "counts": {}, "failure_rate": None, "recall": None, "index": None, "timings": self.timings,
            "recovered": [], "retention": {}, "settings": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
        }

    def now(self) -> str:
        return self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")

    def stage(self, name: str) -> None:
        self.fields["stage"] = name
        self.save()

    def save(self) -> None:
        with self._saving:
            if not self._ended:
                self._write()

    def _write(self) -> None:
        self.fields["seconds"] = round(time.time() - self.t0, 3)
        storage.write_text(self.work.report(self.run_id), json.dumps(self.fields, indent=2) + "\n")

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t = time.time()
        try:
            yield
        finally:
            self.timings[name] = round(time.time() - t, 3)

    def end(self, status: str, code: int, reason: str | None, published: bool) -> bool:
        """Write the last report of the run (and latest.json). Only the first caller, the run or its deadline,
        ends it: True for that one."""
        with self._saving:
            if self._ended:
                return False
            self._ended = True
            r = self.fields
            try:
                live_after = layout.read_current(self.cfg.index_root)
            except Exception as e:  # the index root itself may be what broke
                live_after = f"unknown ({type(e).__name__}: {e})"
            r.update(status=status, exit_code=code, reason=reason, published=published, finished=self.now(),
                     live_after=live_after)
            self.timings["total"] = round(time.time() - self.t0, 3)
            r["stage"] = "finished"
            self._write()
            storage.write_text(storage.join(self.work.root, REPORTS, "latest.json"), json.dumps(r, indent=2) + "\n")
            if self.cfg.report:
                storage.write_text(self.cfg.report, json.dumps(r, indent=2) + "\n")
        return True


def embed_counts(job_report: dict[str, Any], incremental: bool) -> dict[str, Any]:
    """The run report's counts from the embedding job's report: inputs, embedded, failed (by stage and error),
    and new / changed / carried / dropped against the base snapshot."""
    c, k = job_report["counts"], job_report.get("counters")
    known = isinstance(k, dict)  # a runner that reports no metrics: "unknown", never zeros
    out = {"inputs": c["inputs"], "embedded": c["embedded"], "failed": c["failed"],
           "failed_by_stage": c["failed_by_stage"], "failed_by_error": c["failed_by_error"]}
    if incremental:
        out.update({name: int(k.get(name, 0)) if known else UNKNOWN
                    for name in ("new", "changed", "carried", "dropped")})
    else:  # a full run: every image that reached the join is new (read failures never do)
        out.update(new=c["inputs"] - c["failed_by_stage"].get("list", 0) - c["failed_by_stage"].get("read", 0),
                   changed=0, carried=0, dropped=0)
    out.update({name: int(k.get(name, 0)) if known else UNKNOWN for name in ("decoded", "encoded")})
    return out


def index_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The report's ``index`` entry: what a version's manifest says of its build."""
    return {k: manifest.get(k) for k in ("version", "factory", "count", "n_shards", "nprobe", "model",
                                         "build_seconds")}
