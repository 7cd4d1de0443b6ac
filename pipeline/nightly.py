"""The nightly rebuild: one unattended, crash-safe, incremental run from inputs to a published index.

    lock  ->  recover (clean up after a killed run)  ->  embed: the Beam pipeline with ``previous`` = the base
    snapshot, into ``snapshots/<run>/``  ->  SNAPSHOT.json (written last: the snapshot is complete)  ->  failure
    guard  ->  reuse (nothing changed: keep or publish what is built)  or  build the index version ``<run>``
    (publish=False)  ->  recall guard  ->  publish (CURRENT flips last)  ->  retention  ->  run report

Work directory (local path or fsspec URL; the lock file is always local)::

    <work>/nightly.lock                         fcntl.flock lock; holds the holder's pid/host/run as JSON
    <work>/snapshots/<run>/embeddings/*.parquet the embedding table of that run (carried + new rows)
    <work>/snapshots/<run>/failures/*.parquet   inputs that failed in that run
    <work>/snapshots/<run>/run.json             the pipeline's own report
    <work>/snapshots/<run>/SNAPSHOT.json        written last (atomically): only snapshots with it are ever read
    <work>/reports/<run>.json                   the run report, rewritten at every stage ("status": "running"
                                                until the end); reports/latest.json is the last finished one

``<run>`` is a UTC timestamp name (``index.layout.new_version_name``); the index version a run builds has the same
name, so a version, its snapshot and its report are found from each other.

Crash safety: every file that marks something complete (SNAPSHOT.json, a version's manifest.json, CURRENT) is
written last and atomically, and nothing unmarked is ever read. Under the lock, a report still "running" belongs
to a dead run: recovery marks it ``died``, deletes unmarked snapshots and the incomplete index versions that
nightly runs started. A complete snapshot is reused as the base of the next run (its rows are carried, not
recomputed); a complete, unpublished version built from the same rows is published instead of rebuilt.

Fault injection for tests: ``LDOT_NIGHTLY_CRASH_AT=<stage>`` SIGKILLs the process at that point (see STAGES).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import errors
from index import layout, storage

log = logging.getLogger(__name__)

# exit codes: decided once, in core.errors
EXIT_OK, EXIT_ERROR, EXIT_CONFIG = errors.EXIT_OK, errors.EXIT_ERROR, errors.EXIT_USAGE
EXIT_RECALL_GUARD, EXIT_FAILURE_GUARD = errors.EXIT_RECALL_GUARD, errors.EXIT_FAILURE_GUARD
EXIT_LOCKED = errors.EXIT_LOCKED
EXIT_CODES = errors.EXIT_NAMES

CRASH_ENV = "LDOT_NIGHTLY_CRASH_AT"
# where LDOT_NIGHTLY_CRASH_AT can kill the run, in run order
STAGES = ("locked", "recovered", "listing", "embedded", "snapshot", "build", "built", "publish", "published",
          "retention", "finished")

SNAPSHOTS = "snapshots"
REPORTS = "reports"
MARKER = "SNAPSHOT.json"
LOCK_NAME = "nightly.lock"
SNAPSHOT_FORMAT = "ldot-nightly-snapshot/1"
REPORT_FORMAT = "ldot-nightly-report/1"
KEEP_REPORTS = 60
STALE_INCOMPLETE_S = 24 * 3600.0  # incomplete versions not started by nightly: deleted when older than this
COMPARE_COLUMNS = ["image_id", "uri", "content_sha256", "model", "detector"]


class NightlyError(errors.LdotError):
    exit_code = EXIT_ERROR


class ConfigError(NightlyError, errors.UsageError):
    exit_code = EXIT_CONFIG


class LockHeld(NightlyError, errors.LockHeldError):
    exit_code = EXIT_LOCKED


def crash_point(stage: str) -> None:
    """Fault injection: SIGKILL this process when ``LDOT_NIGHTLY_CRASH_AT`` names ``stage``."""
    if os.environ.get(CRASH_ENV) == stage:
        sys.stderr.write(f"ldot nightly: {CRASH_ENV}={stage}: killing myself (SIGKILL)\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_url(path: str) -> bool:
    return "://" in str(path)


# ---- settings ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class NightlyConfig:
    inputs: list[str]
    work_dir: str
    index_root: str
    checkpoint: str | None = None
    encoder_config: str | None = None
    detector_config: str | None = None
    detector_weights: str | None = None
    regions: str | None = None
    random_weights: bool = False
    device: str = "auto"
    max_failure_rate: float | None = None
    min_recall: float | None = None
    keep: int = 3
    shards: int | None = None
    factory: str = "auto"
    max_memory: str | None = "4G"
    nprobe: int | None = None
    seed: int = 0
    selfcheck_queries: int = 1000
    workers: int | None = None
    lock_file: str | None = None
    report: str | None = None
    force_build: bool = False
    beam_args: list[str] = dataclasses.field(default_factory=list)

    PATH_KEYS = ("work_dir", "index_root", "checkpoint", "encoder_config", "detector_config", "detector_weights",
                 "regions", "lock_file", "report")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def normalize(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Keys with ``-`` or ``_`` -> field names; unknown keys are an error (a typo must not pass silently)."""
        known = set(cls.keys())
        clean: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
            if value is not None:  # null in a file: the default
                clean[name] = value
        if isinstance(clean.get("inputs"), str):
            clean["inputs"] = [clean["inputs"]]
        if isinstance(clean.get("beam_args"), str):
            clean["beam_args"] = clean["beam_args"].split()
        return clean

    @classmethod
    def rebase_paths(cls, values: dict[str, Any], base_dir: str) -> dict[str, Any]:
        """Relative local paths -> relative to ``base_dir`` (a config file's folder: cron runs from $HOME)."""
        def rebase(p: Any) -> Any:
            if p is None or _is_url(str(p)):
                return p
            p = os.path.expanduser(str(p))
            return p if os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))

        out = dict(values)
        for key in cls.PATH_KEYS:
            if key in out:
                out[key] = rebase(out[key])
        if "inputs" in out:
            out["inputs"] = [rebase(p) for p in out["inputs"]]
        return out

    @classmethod
    def from_mapping(cls, values: dict[str, Any], base_dir: str | None = None) -> NightlyConfig:
        clean = cls.normalize(values)
        if base_dir is not None:
            clean = cls.rebase_paths(clean, base_dir)
        missing = [k for k in ("inputs", "work_dir", "index_root") if not clean.get(k) and not
                   (k == "inputs" and clean.get("regions"))]
        if missing:
            raise ConfigError(f"missing setting(s): {', '.join(missing)}")
        clean.setdefault("inputs", [])
        cfg = cls(**clean)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not self.inputs and not self.regions:
            raise ConfigError("no inputs: give INPUT paths (or 'inputs:' in the config file) or --regions")
        if not self.work_dir or not self.index_root:
            raise ConfigError("give --work-dir and --index-root")
        if self.keep < 1:
            raise ConfigError(f"keep must be >= 1, got {self.keep}")
        for name in ("max_failure_rate", "min_recall"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"{name} must be within 0..1, got {value}")
        if self.checkpoint is None and not self.random_weights:
            raise ConfigError("no LightningDOT weights: set checkpoint (or random_weights for a smoke run)")
        if self.regions is None and self.detector_weights is None and not self.random_weights:
            raise ConfigError("no detector weights: set detector_weights, regions, or random_weights")

    def build_settings(self) -> dict[str, Any]:
        """What makes two index builds from the same rows equal (a version is reused only when these match)."""
        return {"shards": self.shards, "factory": self.factory, "max_memory": self.max_memory, "nprobe": self.nprobe,
                "seed": self.seed, "selfcheck_queries": self.selfcheck_queries}

    def lock_path(self) -> str:
        if self.lock_file:
            return self.lock_file
        if not _is_url(self.work_dir) or self.work_dir.startswith("file://"):
            return os.path.join(self.work_dir.removeprefix("file://"), LOCK_NAME)
        # an object-store work dir cannot hold an flock: use a local file named after it (one machine runs cron)
        digest = hashlib.sha256(self.work_dir.encode()).hexdigest()[:16]
        return os.path.join(os.path.expanduser("~"), ".cache", "ldot", f"nightly-{digest}.lock")


# ---- the lock ------------------------------------------------------------------------------------------------------

class RunLock:
    """An exclusive ``fcntl.flock`` on a local file. The kernel drops it when the process dies (kill -9 included),
    so it is never stale; the file itself is never deleted (deleting an flock file races with the next holder)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, info: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited across exec (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(f"another nightly run holds the lock {self.path} ({self.holder()}); exiting without "
                           "doing anything") from None
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        os.fsync(fd)
        self.fd = fd

    def holder(self) -> str:
        try:
            with open(self.path) as f:
                info = json.loads(f.read() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info:
            return "holder unknown"
        return f"pid {info.get('pid')} on {info.get('host')}, run {info.get('run')}, since {info.get('started')}"

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---- snapshots -------------------------------------------------------------------------------------------------------

class WorkDir:
    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def snapshot(self, run: str) -> str:
        return storage.join(self.root, SNAPSHOTS, run)

    def embeddings(self, run: str) -> str:
        return storage.join(self.snapshot(run), "embeddings")

    def marker(self, run: str) -> str:
        return storage.join(self.snapshot(run), MARKER)

    def report(self, run: str) -> str:
        return storage.join(self.root, REPORTS, f"{run}.json")

    def snapshot_names(self) -> list[str]:
        return [n for n in storage.listdir_names(storage.join(self.root, SNAPSHOTS)) if not n.startswith(".")]

    def report_names(self) -> list[str]:
        return sorted(n[:-5] for n in storage.listdir_names(storage.join(self.root, REPORTS))
                      if n.endswith(".json") and n != "latest.json")

    def read_marker(self, run: str) -> dict[str, Any] | None:
        """The snapshot's marker if it is complete and whole (every listed file there with its size), else None."""
        try:
            marker = json.loads(storage.read_text(self.marker(run)))
        except (FileNotFoundError, ValueError):
            return None
        if marker.get("format") != SNAPSHOT_FORMAT or marker.get("id") != run:
            return None
        try:
            for entry in marker["files"]:
                if storage.info(storage.join(self.snapshot(run), entry["path"]))["size"] != entry["bytes"]:
                    return None
        except (FileNotFoundError, KeyError):
            return None
        return marker

    def complete_snapshots(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name in self.snapshot_names():
            marker = self.read_marker(name)
            if marker is not None:
                out[name] = marker
        return dict(sorted(out.items()))

    def write_marker(self, run: str, marker: dict[str, Any]) -> None:
        snap = self.snapshot(run)
        files = []
        for sub in ("embeddings", "failures"):
            for name in storage.listdir_names(storage.join(snap, sub)):
                if name.endswith(".parquet"):
                    size = storage.info(storage.join(snap, sub, name))["size"]
                    files.append({"path": f"{sub}/{name}", "bytes": size})
        marker = {"format": SNAPSHOT_FORMAT, "id": run, **marker, "files": files}
        storage.write_text(self.marker(run), json.dumps(marker, indent=2) + "\n")

    def delete_snapshot(self, run: str) -> None:
        """Marker first: a deletion cut short leaves an unmarked (never read, later removed) directory."""
        storage.rm(self.marker(run))
        storage.rm(self.snapshot(run))


def base_snapshot(snapshots: dict[str, dict[str, Any]]) -> str | None:
    """The snapshot a run carries rows from: the newest complete one that passed the failure-rate guard (a run cut
    short by a storage outage must not make the next one recompute everything), else the newest complete one."""
    passed = [name for name, m in snapshots.items() if m.get("failure_guard") != "failed"]
    if passed:
        return passed[-1]
    return next(reversed(snapshots), None) if snapshots else None


def snapshot_rows(embeddings_dir: str) -> list[tuple]:
    """The identity columns (no vectors) of a snapshot table, sorted: equal lists mean equal index inputs."""
    import pyarrow.parquet as pq

    rows: list[tuple] = []
    for name in storage.listdir_names(embeddings_dir):
        if not name.endswith(".parquet"):
            continue
        fs, path = storage.fs_path(storage.join(embeddings_dir, name))
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=COMPARE_COLUMNS)
        rows += list(zip(*(table.column(c).to_pylist() for c in COMPARE_COLUMNS), strict=True))
    return sorted(rows, key=lambda r: tuple("" if v is None else str(v) for v in r))


# ---- index versions --------------------------------------------------------------------------------------------------

def delete_version(root: str, version: str) -> None:
    """Manifest first: a deletion cut short leaves an incomplete version, which nothing reads or publishes."""
    if layout.read_current(root) == version:
        raise NightlyError(f"refusing to delete the live version {version}")
    storage.rm(layout.manifest_url(root, version))
    storage.rm(layout.version_dir(root, version))


def version_retention(root: str, keep: int, protect: set[str], nightly_runs: set[str],
                      on_delete: Callable[[], None] = lambda: None) -> list[str]:
    """Keep the newest ``keep`` complete versions, the live one and ``protect``; delete older complete ones,
    incomplete ones a nightly run started (under the lock none of them can be running), and other incomplete ones
    older than a day (``ldot build-index`` runs into the same root may be in flight)."""
    versions = layout.list_versions(root)
    complete = [v for v in versions if layout.is_complete(root, v)]
    live = layout.read_current(root)
    keep_set = set(complete[-keep:]) | set(protect) | ({live} if live else set())
    now = dt.datetime.now(dt.UTC)
    deleted = []
    for v in versions:
        if v in keep_set:
            continue
        if v not in complete and v not in nightly_runs:
            created = layout.version_time(v)
            if created is None or (now - created).total_seconds() < STALE_INCOMPLETE_S:
                continue
        if layout.read_current(root) == v:  # re-check: never delete what became live meanwhile
            continue
        delete_version(root, v)
        deleted.append(v)
        on_delete()
    return deleted


# ---- the run ---------------------------------------------------------------------------------------------------------

class Run:
    """One nightly run; ``execute`` returns the exit code and leaves the report in ``self.report``."""

    def __init__(self, cfg: NightlyConfig, echo: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.work = WorkDir(cfg.work_dir)
        self.id = layout.new_version_name()
        self.echo = echo or (lambda msg: log.info("%s", msg))
        self.t0 = time.time()
        self.timings: dict[str, float] = {}
        self.report: dict[str, Any] = {
            "format": REPORT_FORMAT, "run": self.id, "status": "starting", "stage": "lock", "exit_code": None,
            "published": False, "reason": None, "started": _now(), "finished": None,
            "pid": os.getpid(), "host": socket.gethostname(),
            "work_dir": cfg.work_dir, "index_root": cfg.index_root,
            "base_snapshot": None, "snapshot": None, "version": None, "live_before": None, "live_after": None,
            "counts": {}, "failure_rate": None, "recall": None, "index": None, "timings": self.timings,
            "recovered": [], "retention": {}, "settings": _jsonable(dataclasses.asdict(cfg)),
        }

    # -- reporting --
    def say(self, msg: str) -> None:
        self.echo(f"[{_now()}] {msg}")

    def stage(self, name: str) -> None:
        self.report["stage"] = name
        self.save()

    def save(self) -> None:
        self.report["seconds"] = round(time.time() - self.t0, 3)
        storage.write_text(self.work.report(self.id), json.dumps(self.report, indent=2) + "\n")

    @contextlib.contextmanager
    def timed(self, name: str):
        t = time.time()
        try:
            yield
        finally:
            self.timings[name] = round(time.time() - t, 3)

    def finish(self, status: str, code: int, reason: str | None, published: bool = False) -> int:
        r = self.report
        try:
            live_after = layout.read_current(self.cfg.index_root)
        except Exception as e:  # the index root itself may be what broke
            live_after = f"unknown ({type(e).__name__}: {e})"
        r.update(status=status, exit_code=code, reason=reason, published=published, finished=_now(),
                 live_after=live_after)
        self.timings["total"] = round(time.time() - self.t0, 3)
        r["stage"] = "finished"
        self.save()
        storage.write_text(storage.join(self.work.root, REPORTS, "latest.json"), json.dumps(r, indent=2) + "\n")
        if self.cfg.report:
            storage.write_text(self.cfg.report, json.dumps(r, indent=2) + "\n")
        return code

    # -- the stages --
    def execute(self) -> int:
        cfg = self.cfg
        lock = RunLock(cfg.lock_path())
        lock.acquire({"pid": os.getpid(), "host": socket.gethostname(), "run": self.id, "started": _now()})
        with lock:
            crash_point("locked")
            self.report["status"] = "running"
            self.report["live_before"] = layout.read_current(cfg.index_root)
            self.stage("recover")
            try:
                return self._execute()
            except Exception as e:
                code = e.exit_code if isinstance(e, NightlyError) else EXIT_ERROR
                log.debug("nightly run failed", exc_info=True)
                self.report["error"] = {"type": type(e).__name__, "message": str(e)}
                self._discard_partial()
                self.say(f"FAILED at stage {self.report['stage']}: {type(e).__name__}: {e}")
                return self.finish("error", code, f"{type(e).__name__} at stage {self.report['stage']}: {e}")

    def _execute(self) -> int:
        cfg = self.cfg
        with self.timed("recover"):
            self.recover()
        crash_point("recovered")

        snapshots = self.work.complete_snapshots()
        base = base_snapshot(snapshots)
        self.report["base_snapshot"] = base
        self.stage("embed")
        with self.timed("embed"):
            job_report = self.embed(base)
        crash_point("embedded")
        counts = self.counts(job_report, base is not None)
        rate = job_report["failure_rate"]
        self.report.update(counts=counts, failure_rate=rate, model=job_report["model"],
                           detector=job_report["detector"])
        failure_ok = cfg.max_failure_rate is None or rate <= cfg.max_failure_rate
        self.work.write_marker(self.id, {
            "created": _now(), "base": base, "model": job_report["model"], "detector": job_report["detector"],
            "counts": counts, "failure_rate": rate, "failure_guard": "passed" if failure_ok else "failed",
            "inputs": cfg.inputs, "build_settings": cfg.build_settings()})
        self.report["snapshot"] = self.id
        self.stage("snapshot")
        self.say(f"snapshot {self.id}: {counts['embedded']} embedded ({counts['new']} new, {counts['changed']} "
                 f"changed, {counts['carried']} carried, {counts['dropped']} dropped), {counts['failed']} failed")
        crash_point("snapshot")

        if not failure_ok:
            reason = (f"failure rate {rate:.1%} ({counts['failed']} of {counts['inputs']}) exceeds max_failure_rate "
                      f"{cfg.max_failure_rate:.1%}: not built, not published; "
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

    def recover(self) -> None:
        """Under the lock nothing else writes here: a report still 'running' is a dead run's, an unmarked snapshot
        is a dead run's, and an incomplete version named after a nightly run is a dead run's."""
        cfg = self.cfg
        for run in self.work.report_names():
            if run == self.id:
                continue
            try:
                old = json.loads(storage.read_text(self.work.report(run)))
            except (FileNotFoundError, ValueError):
                continue
            if old.get("status") in ("running", "starting"):
                old.update(status="died", finished=None, exit_code=None,
                           reason=f"killed during stage {old.get('stage')!r}; found by run {self.id}")
                storage.write_text(self.work.report(run), json.dumps(old, indent=2) + "\n")
                self.report["recovered"].append({"run": run, "died_at_stage": old.get("stage")})
                self.say(f"recovery: run {run} died during stage {old.get('stage')!r}")
        removed_snapshots = []
        for name in self.work.snapshot_names():
            if name != self.id and self.work.read_marker(name) is None:
                storage.rm(self.work.snapshot(name))
                removed_snapshots.append(name)
        nightly_runs = set(self.work.report_names()) - {self.id}
        live = layout.read_current(cfg.index_root)
        removed_versions = []
        for v in layout.list_versions(cfg.index_root):
            if v in nightly_runs and v != live and not layout.is_complete(cfg.index_root, v):
                delete_version(cfg.index_root, v)
                removed_versions.append(v)
        if removed_snapshots or removed_versions:
            self.say(f"recovery: removed incomplete snapshot(s) {removed_snapshots} and version(s) {removed_versions}")
        self.report["recovery"] = {"snapshots_removed": removed_snapshots, "versions_removed": removed_versions}

    def embed(self, base: str | None) -> dict[str, Any]:
        from pipeline.embed_job import EmbedJob, JobError, run_embed_job

        cfg = self.cfg
        job = EmbedJob(inputs=list(cfg.inputs), output=self.work.snapshot(self.id), checkpoint=cfg.checkpoint,
                       encoder_config=cfg.encoder_config, detector_config=cfg.detector_config,
                       detector_weights=cfg.detector_weights, regions=cfg.regions, random_weights=cfg.random_weights,
                       device=cfg.device, previous=self.work.embeddings(base) if base else None,
                       beam_args=list(cfg.beam_args))
        self.say(f"embedding {len(cfg.inputs)} input(s) into snapshot {self.id}"
                 + (f", carrying unchanged images from {base}" if base else " (no earlier snapshot: full run)"))
        crash_point("listing")
        try:
            return run_embed_job(job, workers=cfg.workers)
        except JobError as e:
            raise ConfigError(str(e)) from e

    @staticmethod
    def counts(job_report: dict[str, Any], incremental: bool) -> dict[str, Any]:
        c, k = job_report["counts"], job_report.get("counters", {})
        out = {"inputs": c["inputs"], "embedded": c["embedded"], "failed": c["failed"],
               "failed_by_stage": c["failed_by_stage"], "failed_by_error": c["failed_by_error"]}
        if incremental:
            out.update({name: int(k.get(name, 0)) for name in ("new", "changed", "carried", "dropped")})
        else:  # a full run: every image that reached the join is new (read failures never do)
            out.update(new=c["inputs"] - c["failed_by_stage"].get("list", 0) - c["failed_by_stage"].get("read", 0),
                       changed=0, carried=0, dropped=0)
        out.update({name: int(k[name]) for name in ("decoded", "encoded") if name in k})
        return out

    def reuse(self, base: str | None, snapshots: dict[str, dict[str, Any]]) -> int | None:
        """Nothing changed since the base snapshot: keep the live version if it was built from it, or publish the
        complete version a killed run built from it. None: build."""
        cfg = self.cfg
        if base is None or cfg.force_build or snapshots[base].get("build_settings") != cfg.build_settings():
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
            manifest = layout.read_manifest(cfg.index_root, base)
            recall = manifest.get("selfcheck", {}).get("recall_at_k")
            if cfg.min_recall is None or (recall is not None and recall >= cfg.min_recall):
                self.work.delete_snapshot(self.id)
                self.report.update(snapshot=base, version=base, recall=recall, index=_index_summary(manifest),
                                   reused_version=True)
                self.say(f"nothing changed since snapshot {base}, whose version is built but not live: publishing it")
                return self.publish(base, f"published {base} (built by an earlier run from the same rows)")
        return None

    def build(self) -> str | int:
        from index.build import build_index
        from index.errors import RecallBelowFloorError

        cfg = self.cfg
        version = self.id
        self.report["version"] = version
        self.stage("build")

        def echo(msg: str) -> None:
            self.say(f"build: {msg}")
            if msg.startswith("trained on"):  # the version dir is half-written now
                crash_point("build")

        with self.timed("build"):
            try:
                result = build_index([self.work.embeddings(self.id)], cfg.index_root, shards=cfg.shards,
                                     factory=cfg.factory, max_memory=cfg.max_memory, nprobe=cfg.nprobe,
                                     keep_versions=None, seed=cfg.seed, n_queries=cfg.selfcheck_queries,
                                     min_recall=cfg.min_recall, publish=False,
                                     beam_args=list(cfg.beam_args), version=version, echo=echo)
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
        crash_point("built")
        return version

    def publish(self, version: str, reason: str) -> int:
        self.stage("publish")
        crash_point("publish")
        with self.timed("publish"):
            layout.publish(self.cfg.index_root, version)  # CURRENT: one atomic write
        self.report["published"] = True
        self.stage("published")
        self.say(f"published {version} (was {self.report['live_before'] or 'nothing'})")
        crash_point("published")
        self.retention()
        crash_point("finished")
        return self.finish("published", EXIT_OK, reason, published=True)

    def retention(self) -> None:
        cfg = self.cfg
        self.stage("retention")
        deletions = [0]

        def hook() -> None:  # after each deletion: LDOT_NIGHTLY_CRASH_AT=retention kills after the first one
            deletions[0] += 1
            if deletions[0] == 1:
                crash_point("retention")

        with self.timed("retention"):
            live = layout.read_current(cfg.index_root)
            snapshots = self.work.complete_snapshots()
            base = base_snapshot(snapshots)
            keep = set(list(snapshots)[-cfg.keep:]) | {s for s in (live, base, self.report.get("snapshot")) if s}
            snaps_deleted = []
            for name in snapshots:
                if name not in keep:
                    self.work.delete_snapshot(name)
                    snaps_deleted.append(name)
                    hook()
            protect = {v for v in (self.report.get("version"),) if v}
            versions_deleted = version_retention(cfg.index_root, cfg.keep, protect, set(self.work.report_names()),
                                                 on_delete=hook)
            reports = self.work.report_names()
            for run in reports[:-max(KEEP_REPORTS, cfg.keep)]:
                if run != self.id:
                    storage.rm(self.work.report(run))
        self.report["retention"] = {"snapshots_deleted": snaps_deleted, "versions_deleted": versions_deleted}
        if snaps_deleted or versions_deleted:
            self.say(f"retention (keep {cfg.keep}): deleted snapshot(s) {snaps_deleted}, version(s) "
                     f"{versions_deleted}")

    def _discard_partial(self) -> None:
        """After an error, under the lock: remove this run's unmarked snapshot and incomplete version."""
        with contextlib.suppress(Exception):
            if self.work.read_marker(self.id) is None:
                storage.rm(self.work.snapshot(self.id))
        with contextlib.suppress(Exception):
            v = self.report.get("version")
            if v == self.id and not layout.is_complete(self.cfg.index_root, v):
                delete_version(self.cfg.index_root, v)


def _index_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: manifest.get(k) for k in ("version", "factory", "count", "n_shards", "nprobe", "model",
                                         "build_seconds")}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_nightly(cfg: NightlyConfig, echo: Callable[[str], None] | None = None) -> tuple[int, dict[str, Any]]:
    """One run. Returns (exit code, report). A held lock gives (EXIT_LOCKED, a report that is not written)."""
    cfg.validate()
    run = Run(cfg, echo)
    try:
        code = run.execute()
    except LockHeld as e:
        run.report.update(status="locked", exit_code=EXIT_LOCKED, reason=str(e), finished=_now())
        return EXIT_LOCKED, run.report
    return code, run.report


def load_config_file(path: str) -> dict[str, Any]:
    import yaml

    text = Path(path).read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data
