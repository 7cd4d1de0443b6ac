"""The nightly rebuild: one unattended, crash-safe, incremental run from inputs to a published index.

    lock  ->  recover (clean up after a killed run)  ->  embed: the Beam pipeline with ``previous`` = the base
    snapshot, into ``snapshots/<run>/``  ->  SNAPSHOT.json (written last: the snapshot is complete)  ->  failure
    and vanished-share guards  ->  reuse (nothing changed: keep or publish what is built)  or  build the index
    version ``<run>`` (not published by the build)  ->  recall guard  ->  publish (CURRENT flips last)  ->
    retention  ->  run report

Work directory (local path or fsspec URL; the lock file is always local)::

    <work>/nightly.lock                         fcntl.flock lock; holds the holder's pid/host/run/deadline as JSON
    <work>/snapshots/<run>/embeddings/*.parquet the embedding table of that run (carried + new rows)
    <work>/snapshots/<run>/failures/*.parquet   inputs that failed in that run
    <work>/snapshots/<run>/run.json             the pipeline's own report
    <work>/snapshots/<run>/SNAPSHOT.json        written last (atomically): only snapshots with it are ever read
    <work>/reports/<run>.json                   the run report, rewritten at every stage ("status": "running"
                                                until the end); reports/latest.json is the last finished one

``<run>`` is a UTC timestamp name (``index.layout.new_version_name``); the index version a run builds has the same
name, so a version, its snapshot and its report are found from each other. Names are not the order: snapshots and
versions are ordered by the ``seq`` their marker and manifest record, so a run with a wrong clock changes nothing for
the next ones. The whole run has a deadline (``NightlyConfig.deadline``), past which it ends itself.

Crash safety: every file that marks something complete (SNAPSHOT.json, a version's manifest.json, CURRENT) is
written last and atomically, and nothing unmarked is ever read. Under the lock, a report still "running" belongs
to a dead run: recovery marks it ``died``, deletes unmarked snapshots and the incomplete index versions that
nightly runs started. A complete snapshot is reused as the base of the next run (its rows are carried, not
recomputed); a complete, unpublished version built from the same rows is published instead of rebuilt.

One module per job: ``settings`` (``NightlyConfig``, the settings file), ``lock`` (``RunLock``), ``snapshots``
(``WorkDir``: snapshots and reports), ``vanished`` (what of the base snapshot a run is missing), ``faults``
(``LDOT_NIGHTLY_CRASH_AT`` fault points), ``recovery`` (after a killed run), ``guards`` (the failure, vanished and
recall guards, the clock check), ``report`` (the run report), ``deadline`` (the timer that ends a run past its
deadline), ``run`` (the stages of the run). Index versions are kept by ``index.layout.apply_retention``, the
same rule ``ldot build-index`` uses.
"""

from pipeline.nightly.faults import CRASH_ENV, STAGES
from pipeline.nightly.lock import LockHeld, RunLock
from pipeline.nightly.run import NightlyError, run_nightly
from pipeline.nightly.settings import ConfigError, NightlyConfig, load_config_file
from pipeline.nightly.snapshots import WorkDir, base_snapshot

__all__ = ["CRASH_ENV", "STAGES", "ConfigError", "LockHeld", "NightlyConfig", "NightlyError", "RunLock", "WorkDir",
           "base_snapshot", "load_config_file", "run_nightly"]
