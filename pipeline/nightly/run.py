"""One nightly run, stage by stage (the cycle and the work directory are described in ``pipeline.nightly``).

``run_nightly(cfg)`` returns (exit code, run report). The report is rewritten at every stage, so a run killed
anywhere leaves a report naming the stage it died in; exit codes are ``core.errors``'.

The deadline (``cfg.deadline``) ends the whole process from a timer thread (report "timeout", exit 1): the run may
be stuck where no exception reaches it (a read that never returns, a hung Beam stage), and every stage is safe to
cut short, as with kill -9: nothing unmarked is read and the next run's recovery removes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from core.errors import EXIT_ERROR, EXIT_FAILURE_GUARD, EXIT_LOCKED, EXIT_OK, EXIT_RECALL_GUARD, LdotError
from index import layout, storage
from index.errors import IndexIntegrityError
from pipeline.accounting import UNKNOWN
from pipeline.nightly import faults, vanished
from pipeline.nightly.lock import LockHeld, RunLock
from pipeline.nightly.recovery import discard_partial, recover
from pipeline.nightly.settings import NightlyConfig
from pipeline.nightly.snapshots import REPORTS, WorkDir, base_snapshot, snapshot_rows

log = logging.getLogger(__name__)

REPORT_FORMAT = "ldot-nightly-report/1"
KEEP_REPORTS = 60
DEADLINE_GRACE_S = 60.0  # past the deadline, writing the final report may take this long before the process ends
CLOCK_SKEW_S = 300.0  # a snapshot or version dated this far after the run's clock was made by a wrong clock
Clock = Callable[[], dt.datetime]


class NightlyError(LdotError):
    """The run cannot go on (exit 1): e.g. nothing was embedded."""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Run:
    """One nightly run; ``execute`` returns the exit code and leaves the report in ``self.report``."""

    def __init__(self, cfg: NightlyConfig, echo: Callable[[str], None] | None = None,
                 clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.work = WorkDir(cfg.work_dir)
        self.clock = clock or _utc_now  # names and time stamps of the run (tests set it wrong on purpose)
        self.id = layout.new_version_name(self.clock())
        self.echo = echo or (lambda msg: log.info("%s", msg))
        self.t0 = time.time()
        self._saving = threading.Lock()  # the report is written by the run and, at the deadline, by the timer
        self._ended = False              # set by whichever of the two finishes the run first
        self.timings: dict[str, float] = {}
        self.report: dict[str, Any] = {
            "format": REPORT_FORMAT, "run": self.id, "status": "starting", "stage": "lock", "exit_code": None,
            "published": False, "reason": None, "started": self.now(), "finished": None,
            "pid": os.getpid(), "host": socket.gethostname(),
            "work_dir": cfg.work_dir, "index_root": cfg.index_root,
            "base_snapshot": None, "snapshot": None, "version": None, "live_before": None, "live_after": None,
            "counts": {}, "failure_rate": None, "recall": None, "index": None, "timings": self.timings,
            "recovered": [], "retention": {}, "settings": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
        }

    # -- reporting --
    def now(self) -> str:
        return self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")

    def say(self, msg: str) -> None:
        self.echo(f"[{self.now()}] {msg}")

    def stage(self, name: str) -> None:
        self.report["stage"] = name
        self.save()

    def save(self) -> None:
        with self._saving:
            if not self._ended:
                self._write_report()

    def _write_report(self) -> None:
        self.report["seconds"] = round(time.time() - self.t0, 3)
        storage.write_text(self.work.report(self.id), json.dumps(self.report, indent=2) + "\n")

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t = time.time()
        try:
            yield
        finally:
            self.timings[name] = round(time.time() - t, 3)

    def finish(self, status: str, code: int, reason: str | None, published: bool = False) -> int:
        self._end(status, code, reason, published)
        return code

    def _end(self, status: str, code: int, reason: str | None, published: bool) -> bool:
        """Write the last report of the run (and latest.json). Only the first caller, the run or its deadline,
        ends it: True for that one."""
        with self._saving:
            if self._ended:
                return False
            self._ended = True
            r = self.report
            try:
                live_after = layout.read_current(self.cfg.index_root)
            except Exception as e:  # the index root itself may be what broke
                live_after = f"unknown ({type(e).__name__}: {e})"
            r.update(status=status, exit_code=code, reason=reason, published=published, finished=self.now(),
                     live_after=live_after)
            self.timings["total"] = round(time.time() - self.t0, 3)
            r["stage"] = "finished"
            self._write_report()
            storage.write_text(storage.join(self.work.root, REPORTS, "latest.json"), json.dumps(r, indent=2) + "\n")
            if self.cfg.report:
                storage.write_text(self.cfg.report, json.dumps(r, indent=2) + "\n")
        return True

    def _start_deadline(self) -> threading.Timer | None:
        if self.cfg.deadline is None:
            return None
        timer = threading.Timer(self.cfg.deadline, self._deadline_passed)
        timer.daemon = True
        timer.start()
        return timer

    def _deadline_passed(self) -> None:
        """In the timer thread: write the report, then end the process (the kernel drops the run lock)."""
        stage = self.report["stage"]
        try:
            live = layout.read_current(self.cfg.index_root)
        except Exception as e:
            live = f"unknown ({type(e).__name__})"
        reason = (f"deadline of {self.cfg.deadline:g}s passed during stage {stage!r}: run stopped, lock released; "
                  f"{live or 'nothing'} is live; the next run reuses what this one finished and removes the rest")
        self.report["error"] = {"type": "DeadlineExceeded", "message": reason}
        backstop = threading.Timer(DEADLINE_GRACE_S, os._exit, (EXIT_ERROR,))  # if even the report write hangs
        backstop.daemon = True
        backstop.start()
        try:
            ended = self._end("timeout", EXIT_ERROR, reason, self.report["published"])
        except BaseException:  # the report could not be written (the storage may be what hangs): stop anyway
            ended = True
        if not ended:
            return  # the run finished just before its deadline
        self.say(f"STOPPED: {reason}")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_ERROR)

    # -- the stages --
    def execute(self) -> int:
        cfg = self.cfg
        lock = RunLock(cfg.lock_path())
        deadline_at = (_utc_now() + dt.timedelta(seconds=cfg.deadline)).isoformat() if cfg.deadline else None
        lock.acquire({"pid": os.getpid(), "host": socket.gethostname(), "run": self.id, "started": self.now(),
                      "deadline_at": deadline_at})
        timer = self._start_deadline()
        try:
            with lock:
                faults.point("locked")
                self.report["status"] = "running"
                self.stage("recover")
                try:
                    self.report["live_before"] = layout.read_current(cfg.index_root)  # one not to follow: exit 1
                    return self._execute()
                except Exception as e:
                    code = e.exit_code if isinstance(e, LdotError) else EXIT_ERROR
                    log.debug("nightly run failed", exc_info=True)
                    self.report["error"] = {"type": type(e).__name__, "message": str(e)}
                    discard_partial(self.work, self.id)
                    self.say(f"FAILED at stage {self.report['stage']}: {type(e).__name__}: {e}")
                    return self.finish("error", code, f"{type(e).__name__} at stage {self.report['stage']}: {e}")
        finally:
            if timer is not None:
                timer.cancel()

    def _execute(self) -> int:
        cfg = self.cfg
        with self.timed("recover"):
            recovery = recover(self.work, cfg.index_root, self.id, self.say)
        self.report["recovered"] = recovery.pop("died")
        self.report["recovery"] = recovery
        faults.point("recovered")

        snapshots = self.work.complete_snapshots()
        base = base_snapshot(snapshots)
        self.report["base_snapshot"] = base
        self.check_clock(snapshots)
        self.stage("embed")
        with self.timed("embed"):
            job_report = self.embed(base)
        faults.point("embedded")
        counts = embed_counts(job_report, base is not None)
        rate = job_report["failure_rate"]
        self.report.update(counts=counts, failure_rate=rate, model=job_report["model"],
                           detector=job_report["detector"])
        failure_ok = cfg.max_failure_rate is None or rate <= cfg.max_failure_rate
        gone = None
        if base is not None:
            gone = vanished.measure(self.work, base, self.id, [*snapshots[base].get("inputs", []), *cfg.inputs])
            counts["vanished"] = gone["vanished"]
            self.report["vanished"] = gone
        vanished_ok = cfg.max_vanished_rate is None or gone is None or gone["rate"] <= cfg.max_vanished_rate
        self.work.write_marker(self.id, {
            "created": self.now(), "base": base, "model": job_report["model"], "detector": job_report["detector"],
            "counts": counts, "failure_rate": rate, "failure_guard": "passed" if failure_ok else "failed",
            "vanished_rate": gone["rate"] if gone else None, "vanished_guard": "passed" if vanished_ok else "failed",
            "inputs": cfg.inputs, "build_settings": cfg.build_settings().identity()})
        self.report["snapshot"] = self.id
        self.stage("snapshot")
        self.say(f"snapshot {self.id}: {counts['embedded']} embedded ({counts['new']} new, {counts['changed']} "
                 f"changed, {counts['carried']} carried, {counts['dropped']} dropped), {counts['failed']} failed")
        faults.point("snapshot")

        if not (failure_ok and vanished_ok):
            reasons = []
            if not failure_ok:
                reasons.append(f"failure rate {rate:.1%} ({counts['failed']} of {counts['inputs']}) exceeds "
                               f"max_failure_rate {cfg.max_failure_rate:.1%}")
            if not vanished_ok:
                assert gone is not None and cfg.max_vanished_rate is not None
                reasons.append(f"{vanished.describe(gone)}: above max_vanished_rate {cfg.max_vanished_rate:.1%} "
                               "(a failed mount, an emptied folder or manifest? if the removal is intended, run "
                               "once with --max-vanished-rate 1)")
            reason = (f"{'; '.join(reasons)}: not built, not published; "
                      f"{self.report['live_before'] or 'nothing'} stays live")
            self.say(reason)
            self.retention()
            return self.finish("rejected", EXIT_FAILURE_GUARD, reason)
        if counts["embedded"] == 0:
            raise NightlyError("no image was embedded: refusing to build an empty index")

        reused = self.reuse(base, snapshots)
        if reused is not None:
            return reused
        version = self.build()
        if isinstance(version, int):
            return version
        return self.publish(version, f"published {version}")

    def check_clock(self, snapshots: dict[str, dict[str, Any]]) -> None:
        """Warn about snapshots and versions dated after this run's clock: one of the clocks is wrong. Harmless for
        what is carried and kept (both are ordered by sequence number), but worth an operator's look."""
        now = self.clock()
        ahead = sorted(name for name in {*snapshots, *layout.list_versions(self.cfg.index_root)}
                       if (t := layout.version_time(name)) is not None
                       and (t - now).total_seconds() > CLOCK_SKEW_S)
        self.report["clock_skew"] = ahead
        if ahead:
            self.say(f"WARNING: {len(ahead)} snapshot(s)/version(s) are dated after this run's clock "
                     f"({self.now()}): {', '.join(ahead[:3])}{' ...' if len(ahead) > 3 else ''}; the clock of this "
                     "machine or of the run that made them is wrong. They are ordered by sequence number, not by "
                     "name, so nothing is re-embedded or deleted because of it.")

    def embed(self, base: str | None) -> dict[str, Any]:
        from pipeline.embed_job import EmbedJob, run_embed_job

        cfg = self.cfg
        job = EmbedJob(inputs=list(cfg.inputs), output=self.work.snapshot(self.id), checkpoint=cfg.checkpoint,
                       encoder_config=cfg.encoder_config, detector_config=cfg.detector_config,
                       detector_weights=cfg.detector_weights, regions=cfg.regions, random_weights=cfg.random_weights,
                       device=cfg.device, previous=self.work.embeddings(base) if base else None,
                       verify_content=cfg.verify_content, beam_args=list(cfg.beam_args))
        self.say(f"embedding {len(cfg.inputs)} input(s) into snapshot {self.id}"
                 + (f", carrying unchanged images from {base}" if base else " (no earlier snapshot: full run)"))
        faults.point("listing")
        return run_embed_job(job, workers=cfg.workers)  # a bad model or input is a UsageError: exit 2

    def reuse(self, base: str | None, snapshots: dict[str, dict[str, Any]]) -> int | None:
        """Nothing changed since the base snapshot: keep the live version if it was built from it, or publish the
        complete version a killed run built from it (if it passes the recall floor). None: build."""
        cfg = self.cfg
        if (base is None or cfg.force_build
                or snapshots[base].get("build_settings") != cfg.build_settings().identity()):
            return None
        if snapshot_rows(self.work.embeddings(base)) != snapshot_rows(self.work.embeddings(self.id)):
            return None
        live = layout.read_current(cfg.index_root)
        if base == live:
            self.work.delete_snapshot(self.id)
            self.report["snapshot"] = base
            self.report["version"] = live
            reason = f"nothing changed since snapshot {base}: the live version {live} is up to date"
            self.say(reason)
            self.retention()
            return self.finish("unchanged", EXIT_OK, reason)
        if layout.is_complete(cfg.index_root, base):
            try:
                manifest = layout.read_manifest(cfg.index_root, base)
            except IndexIntegrityError as e:
                self.say(f"the version {base} built earlier from the same rows is unusable ({e}): building anew")
                return None
            recall = manifest.get("selfcheck", {}).get("recall_at_k")
            if cfg.min_recall is None or (recall is not None and recall >= cfg.min_recall):
                self.work.delete_snapshot(self.id)
                self.report.update(snapshot=base, version=base, recall=recall, index=_index_summary(manifest),
                                   reused_version=True)
                self.say(f"nothing changed since snapshot {base}, whose version is built but not live: publishing it")
                return self.publish(base, f"published {base} (built by an earlier run from the same rows)")
        return None

    def build(self) -> str | int:
        """Build version ``<run>`` unpublished; the exit code instead when the recall guard refuses it."""
        from index.errors import RecallBelowFloorError
        from pipeline.build_index_job import build_index

        cfg = self.cfg
        version = self.id
        self.report["version"] = version
        self.stage("build")
        with self.timed("build"):
            try:
                result = build_index([self.work.embeddings(self.id)], cfg.index_root, cfg.build_settings(),
                                     beam_args=list(cfg.beam_args), version=version,
                                     echo=lambda msg: self.say(f"build: {msg}"), on_point=faults.on_build_point)
            except RecallBelowFloorError as e:
                sc = e.manifest.get("selfcheck", {})
                self.report.update(recall=sc.get("recall_at_k"), index=_index_summary(e.manifest))
                reason = (f"recall@{sc.get('k', 10)} self-check {sc.get('recall_at_k', float('nan')):.4f} is below "
                          f"min_recall {cfg.min_recall}: version {version} built but NOT published; "
                          f"{self.report['live_before'] or 'nothing'} stays live")
                self.say(reason)
                self.retention()
                return self.finish("rejected", EXIT_RECALL_GUARD, reason)
        self.report.update(recall=result.recall, index=_index_summary(result.manifest))
        self.stage("built")
        faults.point("built")
        return version

    def publish(self, version: str, reason: str) -> int:
        self.stage("publish")
        faults.point("publish")
        with self.timed("publish"):
            layout.publish(self.cfg.index_root, version)  # CURRENT: one atomic write
        self.report["published"] = True
        self.stage("published")
        self.say(f"published {version} (was {self.report['live_before'] or 'nothing'})")
        faults.point("published")
        self.retention()
        faults.point("finished")
        return self.finish("published", EXIT_OK, reason, published=True)

    def retention(self) -> None:
        """Snapshots, index versions (``index.layout``'s rule, with this run's version protected and dead nightly
        runs' incomplete versions abandoned) and old reports. LDOT_NIGHTLY_CRASH_AT=retention kills after the first
        deletion, snapshot or version."""
        cfg = self.cfg
        self.stage("retention")
        hook = faults.on_first_call("retention")
        with self.timed("retention"):
            live = layout.read_current(cfg.index_root)
            snaps_deleted = self.work.apply_retention(cfg.keep, {s for s in (live, self.report["snapshot"]) if s},
                                                      on_delete=hook)
            versions_deleted = layout.apply_retention(cfg.index_root, cfg.keep,
                                                      protect={v for v in (self.report["version"],) if v},
                                                      abandoned=set(self.work.report_names()) - {self.id},
                                                      on_delete=hook)
            self.work.prune_reports(max(KEEP_REPORTS, cfg.keep), self.id)
        self.report["retention"] = {"snapshots_deleted": snaps_deleted, "versions_deleted": versions_deleted}
        if snaps_deleted or versions_deleted:
            self.say(f"retention (keep {cfg.keep}): deleted snapshot(s) {snaps_deleted}, version(s) "
                     f"{versions_deleted}")


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


def _index_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: manifest.get(k) for k in ("version", "factory", "count", "n_shards", "nprobe", "model",
                                         "build_seconds")}


def run_nightly(cfg: NightlyConfig, echo: Callable[[str], None] | None = None,
                clock: Clock | None = None) -> tuple[int, dict[str, Any]]:
    """One run. Returns (exit code, report). A held lock gives (EXIT_LOCKED, a report that is not written). Past
    ``cfg.deadline`` the process ends (exit 1) whatever it is doing; ``clock`` names the run (default: UTC now)."""
    cfg.validate()
    run = Run(cfg, echo, clock)
    try:
        code = run.execute()
    except LockHeld as e:
        run.report.update(status="locked", exit_code=EXIT_LOCKED, reason=str(e), finished=run.now())
        return EXIT_LOCKED, run.report
    return code, run.report
