"""Cleaning up after a killed run, under the lock: then nothing else writes here, so whatever is unfinished is dead.

A report still "running" is a dead run's (it is marked ``died``), an unmarked snapshot is a dead run's, and an
incomplete index version named after a nightly run is a dead run's. Incomplete versions with other names may be an
``ldot build-index`` into the same root that is still running: retention removes those only once they are stale.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from index import layout, storage
from pipeline.nightly.snapshots import WorkDir


def recover(work: WorkDir, index_root: str, run_id: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Mark dead runs, remove their unmarked snapshots and incomplete versions. Returns {"died": [{run,
    died_at_stage}], "snapshots_removed": [...], "versions_removed": [...]}."""
    died = []
    for run in work.report_names():
        if run == run_id:
            continue
        try:
            old = json.loads(storage.read_text(work.report(run)))
        except (FileNotFoundError, ValueError):
            continue
        if old.get("status") in ("running", "starting"):
            old.update(status="died", finished=None, exit_code=None,
                       reason=f"killed during stage {old.get('stage')!r}; found by run {run_id}")
            storage.write_text(work.report(run), json.dumps(old, indent=2) + "\n")
            died.append({"run": run, "died_at_stage": old.get("stage")})
            say(f"recovery: run {run} died during stage {old.get('stage')!r}")
    removed_snapshots = []
    for name in work.snapshot_names():
        if name != run_id and work.read_marker(name) is None:
            storage.rm(work.snapshot(name))
            removed_snapshots.append(name)
    nightly_runs = set(work.report_names()) - {run_id}
    live = layout.read_current(index_root)
    removed_versions = []
    for v in layout.list_versions(index_root):
        if v in nightly_runs and v != live and not layout.is_complete(index_root, v):
            layout.delete_version(index_root, v)
            removed_versions.append(v)
    if removed_snapshots or removed_versions:
        say(f"recovery: removed incomplete snapshot(s) {removed_snapshots} and version(s) {removed_versions}")
    return {"died": died, "snapshots_removed": removed_snapshots, "versions_removed": removed_versions}


def discard_partial(work: WorkDir, run_id: str) -> None:
    """After an error: remove this run's unmarked snapshot (best effort: the error that brought us here may be the
    storage itself, and the next run's recovery does the same). A build that fails removes its own incomplete
    version (``pipeline.build_index_job``)."""
    with contextlib.suppress(Exception):
        if work.read_marker(run_id) is None:
            storage.rm(work.snapshot(run_id))
