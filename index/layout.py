"""The published layout of an index root, the atomic switch of ``CURRENT``, and retention.

    <root>/versions/<version>/manifest.json   written last inside a version: a version without it is incomplete
    <root>/versions/<version>/…               trained.index, shards/*.index, idmap/*.parquet, selfcheck.parquet
    <root>/CURRENT                            the live version's name; written last, replaced atomically
    <root>/.publish.lock                      (local roots) flock held around manifest writes, publish, retention

A reader resolves ``CURRENT`` once and then reads only that version's files, which are never modified after the
manifest is written; so it sees the old version or the new one, never a mix. Names and manifests are checked by
``index.manifest`` before anything is followed.

Order: each manifest records ``seq``, one more than the largest of the complete versions when it was written;
versions are ordered by (seq, name), not by their time-stamped names, so a clock set wrong on one machine cannot
make its version "the newest" for ever. Names still carry the time, which is how an abandoned incomplete version
(no manifest, so no seq) is recognised as stale (object stores have no directory mtime).

Exclusion: publish, retention and deletion of a local root hold ``.publish.lock``, so retention never deletes a
version another process is making live. An object store has no such lock: there retention re-reads ``CURRENT``
right before each deletion and never deletes the live version or one newer (by seq) than it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Collection, Iterator
from typing import Any

from core.errors import LockHeldError
from index import storage
from index.errors import IndexIntegrityError, NoLiveVersionError
from index.locking import FileLock
from index.manifest import (  # noqa: F401  (FORMAT, new_version_name, version_time: part of this module's API)
    FORMAT,
    check_version_name,
    is_version_name,
    new_version_name,
    validate_manifest,
    version_time,
)

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
VERSIONS = "versions"
MANIFEST = "manifest.json"
ROOT_LOCK = ".publish.lock"
ROOT_LOCK_WAIT_S = 600.0  # a publish waits this long for another one's retention before giving up
STALE_INCOMPLETE_S = 24 * 3600.0  # an incomplete version this old is an abandoned build, not a running one


def version_dir(root: str, version: str) -> str:
    return storage.join(root, VERSIONS, check_version_name(version))


def manifest_url(root: str, version: str) -> str:
    return storage.join(version_dir(root, version), MANIFEST)


@contextlib.contextmanager
def root_lock(root: str, timeout_s: float = ROOT_LOCK_WAIT_S) -> Iterator[bool]:
    """Exclusive access to ``root`` for a publish, retention or deletion. Yields True for a local root (an flock on
    ``ROOT/.publish.lock``, waited for up to ``timeout_s``), False for an object store (no lock: callers fall back to
    the conservative rules). Not reentrant: take it once per operation."""
    fs, path = storage.fs_path(root)
    if not storage.is_local(fs):
        yield False
        return
    lock = FileLock(os.path.join(path, ROOT_LOCK))
    if not lock.acquire(timeout_s):
        raise LockHeldError(f"{lock.path} is held by another publish or retention for over {timeout_s:.0f}s; "
                            "nothing was changed")
    try:
        yield True
    finally:
        lock.release()


def read_current(root: str) -> str | None:
    """The live version name, or None if nothing has been published. A ``CURRENT`` that is not a version name
    (another folder, ``..``, garbage) is an IndexIntegrityError, never followed."""
    url = storage.join(root, CURRENT)
    try:
        text = storage.read_text(url)
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as e:
        raise IndexIntegrityError(f"{url} is not text: {e}") from e
    name = text.strip()
    return check_version_name(name, f"{url} names") if name else None


def _load_manifest(root: str, version: str) -> Any:
    url = manifest_url(root, version)
    try:
        return json.loads(storage.read_text(url))
    except FileNotFoundError as e:
        raise NoLiveVersionError(f"version {version!r} of {root} has no manifest ({url}): incomplete or deleted") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexIntegrityError(f"{url} is not valid JSON (truncated or overwritten?): {e}") from e


def read_manifest(root: str, version: str) -> dict[str, Any]:
    """The manifest of ``version``, its whole structure validated (``index.manifest.validate_manifest``)."""
    return validate_manifest(_load_manifest(root, version), version)


def _seq(root: str, version: str) -> int:
    """The recorded seq of a complete version; -1 for one without (written before seqs) or unreadable: oldest."""
    try:
        seq = _load_manifest(root, version).get("seq")
    except (IndexIntegrityError, AttributeError):
        return -1
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else -1


def write_manifest(root: str, version: str, manifest: dict[str, Any]) -> str:
    """Write the manifest (the version is then complete), recording ``seq`` = 1 + the largest seq of the complete
    versions (under the root lock, so two local builds never share one)."""
    url = manifest_url(root, version)
    with root_lock(root):
        seqs = [_seq(root, v) for v in list_versions(root) if v != version and is_complete(root, v)]
        manifest["seq"] = max([-1, *seqs]) + 1
        storage.write_text(url, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return url


def live_manifest(root: str) -> dict[str, Any]:
    version = read_current(root)
    if version is None:
        raise NoLiveVersionError(f"{root} has no {CURRENT}: nothing has been published there yet")
    return read_manifest(root, version)


def list_versions(root: str) -> list[str]:
    """All version folders (complete or not), by name; folders whose name is not a version name are not versions
    (nothing reads, publishes or deletes them)."""
    names = storage.listdir_names(storage.join(root, VERSIONS))
    strays = [n for n in names if not is_version_name(n) and not n.startswith(".")]
    if strays:
        log.warning("%s/%s holds folder(s) that are not versions, left alone: %s", root, VERSIONS, strays)
    return [n for n in names if is_version_name(n)]


def complete_versions(root: str) -> list[str]:
    """Complete versions, oldest first by (seq, name)."""
    return sorted((v for v in list_versions(root) if is_complete(root, v)), key=lambda v: (_seq(root, v), v))


def is_complete(root: str, version: str) -> bool:
    return storage.exists(manifest_url(root, version))


def publish(root: str, version: str, *, keep_versions: int | None = None) -> None:
    """Make ``version`` live: validate its manifest, then replace ``CURRENT`` in one atomic write, under the root
    lock. With ``keep_versions``, apply retention afterwards under the same lock (never deleting the live one)."""
    with root_lock(root) as exclusive:
        read_manifest(root, version)  # raises if incomplete or malformed
        storage.write_text(storage.join(root, CURRENT), version + "\n")
        log.info("published %s as live version of %s", version, root)
        if keep_versions is not None:
            _retention(root, keep_versions, exclusive)


def delete_version(root: str, version: str) -> None:
    """Delete one version (never the live one), under the root lock."""
    with root_lock(root):
        _delete(root, version)


def _delete(root: str, version: str) -> None:
    """Manifest first: a deletion cut short leaves an incomplete version, which nothing reads or publishes."""
    if read_current(root) == version:
        raise ValueError(f"refusing to delete the live version {version} of {root}")
    storage.rm(manifest_url(root, version), recursive=False)
    storage.rm(version_dir(root, version))


def apply_retention(root: str, keep: int, *, protect: Collection[str] = (), abandoned: Collection[str] = (),
                    incomplete_older_than_s: float | None = STALE_INCOMPLETE_S,
                    on_delete: Callable[[str], None] | None = None) -> list[str]:
    """Delete old versions; returns the deleted names, oldest first. Never deleted: the live version, ``protect``
    (versions a caller still needs), the newest ``keep`` complete versions (by seq), and incomplete versions younger
    than ``incomplete_older_than_s`` or with a name that carries no time (another build may still be writing them).
    On an object store (no root lock) also never a version newer than the live one, re-read before each deletion:
    another process may be publishing it right now.

    Deleted: older complete versions; incomplete ones listed in ``abandoned`` (known dead, e.g. started by a
    nightly run that was killed: under its lock none can be running) at any age; other incomplete ones older than
    ``incomplete_older_than_s`` (None: never; 0: all). ``on_delete`` is called after each deletion."""
    with root_lock(root) as exclusive:
        return _retention(root, keep, exclusive, protect=protect, abandoned=abandoned,
                          incomplete_older_than_s=incomplete_older_than_s, on_delete=on_delete)


def _retention(root: str, keep: int, exclusive: bool, *, protect: Collection[str] = (),
               abandoned: Collection[str] = (), incomplete_older_than_s: float | None = STALE_INCOMPLETE_S,
               on_delete: Callable[[str], None] | None = None) -> list[str]:
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    complete = complete_versions(root)
    seq = {v: _seq(root, v) for v in complete}
    live = read_current(root)
    keep_set = set(complete[-keep:]) | set(protect) | ({live} if live else set())
    now = dt.datetime.now(dt.UTC)
    deleted = []
    for v in sorted(list_versions(root), key=lambda v: (seq.get(v, -1), v)):
        if v in keep_set:
            continue
        if v not in seq and v not in abandoned:
            created = version_time(v)
            if (incomplete_older_than_s is None or created is None
                    or (now - created).total_seconds() < incomplete_older_than_s):
                continue
        live_now = read_current(root)
        if v == live_now:
            continue
        if not exclusive and v in seq and (live_now is None or (seq[v], v) > (_seq(root, live_now), live_now)):
            continue  # no lock: this one may be being published right now
        _delete(root, v)
        deleted.append(v)
        log.info("retention: deleted version %s of %s", v, root)
        if on_delete is not None:
            on_delete(v)
    return deleted
