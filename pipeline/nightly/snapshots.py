"""The snapshot store of a work directory: one complete, marked snapshot of the embedding table per run, and
the run reports.

A snapshot is complete once ``SNAPSHOT.json`` is written (last, atomically) and every file it lists is there with
its size; nothing else is ever read, so a run killed while writing leaves only a folder the next run removes.

Snapshots are ordered by the ``seq`` their marker records (one more than the largest existing one when it was
written), not by their time-stamped names: a run with its clock a day ahead must not stay "the newest" for a day.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from index import storage

SNAPSHOTS = "snapshots"
REPORTS = "reports"
MARKER = "SNAPSHOT.json"
SNAPSHOT_FORMAT = "ldot-nightly-snapshot/1"
COMPARE_COLUMNS = ["image_id", "uri", "content_sha256", "model", "detector"]


class WorkDir:
    """The snapshots and run reports under a work directory (local path or fsspec URL)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def snapshot(self, run: str) -> str:
        return storage.join(self.root, SNAPSHOTS, run)

    def embeddings(self, run: str) -> str:
        return storage.join(self.snapshot(run), "embeddings")

    def failures(self, run: str) -> str:
        return storage.join(self.snapshot(run), "failures")

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
        """The snapshot's marker if it is complete and whole (every listed file there with its size, and no other
        table file), else None."""
        try:
            marker = json.loads(storage.read_text(self.marker(run)))
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(marker, dict) or marker.get("format") != SNAPSHOT_FORMAT or marker.get("id") != run:
            return None
        try:
            for entry in marker["files"]:
                if storage.info(storage.join(self.snapshot(run), entry["path"]))["size"] != entry["bytes"]:
                    return None
            listed = {entry["path"] for entry in marker["files"]}
        except (FileNotFoundError, KeyError, TypeError):
            return None
        if set(self._table_files(run)) != listed:  # a table file added since: its rows would be carried unchecked
            return None
        return marker

    def _table_files(self, run: str) -> list[str]:
        snap = self.snapshot(run)
        return [f"{sub}/{name}" for sub in ("embeddings", "failures", "stamps", "captions")
                for name in storage.listdir_names(storage.join(snap, sub)) if name.endswith(".parquet")]

    def complete_snapshots(self) -> dict[str, dict[str, Any]]:
        """name -> marker of every complete snapshot, oldest first by (seq, name); markers written before seqs
        count as oldest."""
        out = {}
        for name in self.snapshot_names():
            marker = self.read_marker(name)
            if marker is not None:
                out[name] = marker
        return dict(sorted(out.items(), key=lambda item: (_seq(item[1]), item[0])))

    def write_marker(self, run: str, marker: dict[str, Any]) -> None:
        snap = self.snapshot(run)
        files = [{"path": path, "bytes": storage.info(storage.join(snap, path))["size"]}
                 for path in self._table_files(run)]
        seq = max([-1, *(_seq(m) for name, m in self.complete_snapshots().items() if name != run)]) + 1
        marker = {"format": SNAPSHOT_FORMAT, "id": run, "seq": seq, **marker, "files": files}
        storage.write_text(self.marker(run), json.dumps(marker, indent=2) + "\n")

    def delete_snapshot(self, run: str) -> None:
        """Marker first: a deletion cut short leaves an unmarked (never read, later removed) directory."""
        storage.rm(self.marker(run))
        storage.rm(self.snapshot(run))

    def apply_retention(self, keep: int, protect: Collection[str],
                        on_delete: Callable[[str], None] | None = None) -> list[str]:
        """Delete complete snapshots beyond the newest ``keep``, except ``protect`` and the base of the next run
        (which may be older: the newest ones can have failed their guard). Returns the deleted names."""
        snapshots = self.complete_snapshots()
        kept = set(list(snapshots)[-keep:]) | set(protect) | {base_snapshot(snapshots)}
        deleted = []
        for name in snapshots:
            if name not in kept:
                self.delete_snapshot(name)
                deleted.append(name)
                if on_delete is not None:
                    on_delete(name)
        return deleted

    def prune_reports(self, keep: int, current: str) -> None:
        """Keep the newest ``keep`` run reports (and always the current run's)."""
        for run in self.report_names()[:-keep]:
            if run != current:
                storage.rm(self.report(run))


def _seq(marker: dict[str, Any]) -> int:
    seq = marker.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else -1


GUARDS = ("failure_guard", "vanished_guard")


def base_snapshot(snapshots: dict[str, dict[str, Any]]) -> str | None:
    """The snapshot a run carries rows from: the newest complete one that passed its guards (a run cut short by a
    storage outage or a failed mount must not make the next one recompute, or measure what vanished against, a
    shrunken corpus), else the newest complete one. ``snapshots`` in ``complete_snapshots`` order."""
    passed = [name for name, m in snapshots.items() if all(m.get(g) != "failed" for g in GUARDS)]
    if passed:
        return passed[-1]
    return next(reversed(snapshots), None) if snapshots else None


def read_columns(directory: str, columns: list[str]) -> pa.Table:
    """``columns`` of every Parquet file of a snapshot table (embeddings or failures), as one table."""
    tables = []
    for name in storage.listdir_names(directory):
        if name.endswith(".parquet"):
            fs, path = storage.fs_path(storage.join(directory, name))
            with fs.open(path, "rb") as f:
                tables.append(pq.read_table(f, columns=columns))
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pa.concat_tables(tables, promote_options="permissive")


def snapshot_rows(embeddings_dir: str) -> list[tuple]:
    """The identity columns (no vectors) of a snapshot table, sorted: equal lists mean equal index inputs."""
    table = read_columns(embeddings_dir, COMPARE_COLUMNS)
    rows = list(zip(*(table.column(c).to_pylist() for c in COMPARE_COLUMNS), strict=True))
    return sorted(rows, key=lambda r: tuple("" if v is None else str(v) for v in r))
