"""One nightly run, stage by stage (the cycle and the work directory are described in ``pipeline.nightly``).

``run_nightly(cfg)`` returns (exit code, run report); exit codes are ``core.errors``'. The report is written by
``report``, the deadline kept by ``deadline``, the guards that refuse a build or a publish are in ``guards``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from core.errors import EXIT_ERROR, EXIT_FAILURE_GUARD, EXIT_LOCKED, EXIT_OK, EXIT_RECALL_GUARD, LdotError
from index import layout
from index.errors import IndexIntegrityError
from pipeline.nightly import faults, guards, vanished
from pipeline.nightly.deadline import start_deadline
from pipeline.nightly.lock import LockHeld, RunLock
from pipeline.nightly.recovery import discard_partial, recover
from pipeline.nightly.report import Clock, RunReport, embed_counts, index_summary
from pipeline.nightly.settings import NightlyConfig
from pipeline.nightly.snapshots import WorkDir, base_snapshot, snapshot_rows

log = logging.getLogger(__name__)

KEEP_REPORTS = 60


class NightlyError(LdotError):
    """The run cannot go on (exit 1): e.g. nothing was embedded."""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Run:
    """One nightly run; ``execute`` returns the exit code and leaves the report in ``self.fields``."""

    def __init__(self, cfg: NightlyConfig, echo: Callable[[str], None] | None = None,
                 clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.work = WorkDir(cfg.work_dir)
        self.clock = clock or _utc_now  # names and time stamps of the run (tests set it wrong on purpose)
        self.id = layout.new_version_name(self.clock())
        self.echo = echo or (lambda msg: log.info("%s", msg))
        self.report = RunReport(cfg, self.work, self.id, self.clock)
        self.fields = self.report.fields  # what the report says (written by self.report.save/stage/end)

    def say(self, msg: str) -> None:
        self.echo(f"[{self.report.now()}] {msg}")

    def finish(self, status: str, code: int, reason: str | None, published: bool = False) -> int:
        self.report.end(status, code, reason, published)
        return code

    def execute(self) -> int:
        cfg = self.cfg
        lock = RunLock(cfg.lock_path())
        deadline_at = (_utc_now() + dt.timedelta(seconds=cfg.deadline)).isoformat() if cfg.deadline else None
        lock.acquire({"pid": os.getpid(), "host": socket.gethostname(), "run": self.id, "started": self.report.now(),
                      "deadline_at": deadline_at})
        timer = start_deadline(self.report, self.say)
        try:
            with lock:
                faults.point("locked")
                self.fields["status"] = "running"
                self.report.stage("recover")
                try:
                    self.fields["live_before"] = layout.read_current(cfg.index_root)  # one not to follow: exit 1
                    return self._execute()
                except Exception as e:
                    code = e.exit_code if isinstance(e, LdotError) else EXIT_ERROR
                    log.debug("nightly run failed", exc_info=True)
                    self.fields["error"] = {"type": type(e).__name__, "message": str(e)}
                    discard_partial(self.work, self.id)
                    self.say(f"FAILED at stage {self.fields['stage']}: {type(e).__name__}: {e}")
                    return self.finish("error", code, f"{type(e).__name__} at stage {self.fields['stage']}: {e}")
        finally:
            if timer is not None:
                timer.cancel()

    def _execute(self) -> int:
        cfg = self.cfg
        with self.report.timed("recover"):
            recovery = recover(self.work, cfg.index_root, self.id, self.say)
        self.fields["recovered"] = recovery.pop("died")
        self.fields["recovery"] = recovery
        faults.point("recovered")

        snapshots = self.work.complete_snapshots()
        base = base_snapshot(snapshots)
        self.fields["base_snapshot"] = base
        self.check_clock(snapshots)
        self.report.stage("embed")
        with self.report.timed("embed"):
            job_report = self.embed(base)
        faults.point("embedded")
        counts = embed_counts(job_report, base is not None)
        rate = job_report["failure_rate"]
        self.fields.update(counts=counts, failure_rate=rate, model=job_report["model"],
                           detector=job_report["detector"])
        gone = None
        if base is not None:
            gone = vanished.measure(self.work, base, self.id, [*snapshots[base].get("inputs", []), *cfg.inputs])
            counts["vanished"] = gone["vanished"]
            self.fields["vanished"] = gone
        failure_refused = guards.failure_refusal(cfg, counts, rate)
        vanished_refused = guards.vanished_refusal(cfg, gone)
        self.work.write_marker(self.id, {
            "created": self.report.now(), "base": base, "model": job_report["model"],
            "detector": job_report["detector"], "counts": counts, "failure_rate": rate,
            "failure_guard": "failed" if failure_refused else "passed",
            "vanished_rate": gone["rate"] if gone else None,
            "vanished_guard": "failed" if vanished_refused else "passed",
            "inputs": cfg.inputs, "build_settings": cfg.build_settings().identity()})
        self.fields["snapshot"] = self.id
        self.report.stage("snapshot")
        self.say(f"snapshot {self.id}: {counts['embedded']} embedded ({counts['new']} new, {counts['changed']} "
                 f"changed, {counts['carried']} carried, {counts['dropped']} dropped), {counts['failed']} failed")
        faults.point("snapshot")

        refusals = [r for r in (failure_refused, vanished_refused) if r]
        if refusals:
            reason = (f"{'; '.join(refusals)}: not built, not published; "
                      f"{self.fields['live_before'] or 'nothing'} stays live")
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
        """Warn about snapshots and versions dated after this run's clock (``guards.dated_ahead``)."""
        ahead = guards.dated_ahead([*snapshots, *layout.list_versions(self.cfg.index_root)], self.clock())
        self.fields["clock_skew"] = ahead
        if ahead:
            self.say(guards.clock_warning(ahead, self.report.now()))

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
            self.fields["snapshot"] = base
            self.fields["version"] = live
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
                self.fields.update(snapshot=base, version=base, recall=recall, index=index_summary(manifest),
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
        self.fields["version"] = version
        self.report.stage("build")
        with self.report.timed("build"):
            try:
                result = build_index([self.work.embeddings(self.id)], cfg.index_root, cfg.build_settings(),
                                     beam_args=list(cfg.beam_args), version=version,
                                     echo=lambda msg: self.say(f"build: {msg}"), on_point=faults.on_build_point)
            except RecallBelowFloorError as e:
                self.fields.update(recall=e.manifest.get("selfcheck", {}).get("recall_at_k"),
                                   index=index_summary(e.manifest))
                reason = guards.recall_refusal(cfg, e.manifest, version, self.fields["live_before"])
                self.say(reason)
                self.retention()
                return self.finish("rejected", EXIT_RECALL_GUARD, reason)
        self.fields.update(recall=result.recall, index=index_summary(result.manifest))
        self.report.stage("built")
        faults.point("built")
        return version

    def publish(self, version: str, reason: str) -> int:
        self.report.stage("publish")
        faults.point("publish")
        with self.report.timed("publish"):
            layout.publish(self.cfg.index_root, version)  # CURRENT: one atomic write
        self.fields["published"] = True
        self.report.stage("published")
        self.say(f"published {version} (was {self.fields['live_before'] or 'nothing'})")
        faults.point("published")
        self.retention()
        faults.point("finished")
        return self.finish("published", EXIT_OK, reason, published=True)

    def retention(self) -> None:
        """Snapshots, index versions (``index.layout``'s rule, with this run's version protected and dead nightly
        runs' incomplete versions abandoned) and old reports. LDOT_NIGHTLY_CRASH_AT=retention kills after the first
        deletion, snapshot or version."""
        cfg = self.cfg
        self.report.stage("retention")
        hook = faults.on_first_call("retention")
        with self.report.timed("retention"):
            live = layout.read_current(cfg.index_root)
            snaps_deleted = self.work.apply_retention(cfg.keep, {s for s in (live, self.fields["snapshot"]) if s},
                                                      on_delete=hook)
            versions_deleted = layout.apply_retention(cfg.index_root, cfg.keep,
                                                      protect={v for v in (self.fields["version"],) if v},
                                                      abandoned=set(self.work.report_names()) - {self.id},
                                                      on_delete=hook)
            self.work.prune_reports(max(KEEP_REPORTS, cfg.keep), self.id)
        self.fields["retention"] = {"snapshots_deleted": snaps_deleted, "versions_deleted": versions_deleted}
        if snaps_deleted or versions_deleted:
            self.say(f"retention (keep {cfg.keep}): deleted snapshot(s) {snaps_deleted}, version(s) "
                     f"{versions_deleted}")


def run_nightly(cfg: NightlyConfig, echo: Callable[[str], None] | None = None,
                clock: Clock | None = None) -> tuple[int, dict[str, Any]]:
    """One run. Returns (exit code, report). A held lock gives (EXIT_LOCKED, a report that is not written). Past
    ``cfg.deadline`` the process ends (exit 1) whatever it is doing; ``clock`` names the run (default: UTC now)."""
    cfg.validate()
    run = Run(cfg, echo, clock)
    try:
        code = run.execute()
    except LockHeld as e:
        run.fields.update(status="locked", exit_code=EXIT_LOCKED, reason=str(e), finished=run.report.now())
        return EXIT_LOCKED, run.fields
    return code, run.fields
