"""The published layout of an index root, the atomic switch of ``CURRENT``, and retention.

    <root>/versions/<version>/manifest.json   written last inside a version: a version without it is incomplete
    <root>/versions/<version>/…               trained.index, shards/*.index, idmap/*.parquet, selfcheck.parquet
    <root>/CURRENT                            the live version's name; written last, replaced atomically

Version names start with their UTC creation time (``20261126T193012.123456Z-1a2b``), so names sort by age and an
abandoned incomplete version can be recognised as stale from its name alone (object stores have no directory mtime).
A reader resolves ``CURRENT`` once and then reads only that version's files, which are never modified after the
manifest is written; so it sees the old version or the new one, never a mix.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Callable, Collection
from typing import Any

from index import storage
from index.errors import IndexIntegrityError, NoLiveVersionError

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
VERSIONS = "versions"
MANIFEST = "manifest.json"
FORMAT = "ldot-index/1"  # the manifest's "format": which layout (this module's) a version was written in
STALE_INCOMPLETE_S = 24 * 3600.0  # an incomplete version this old is an abandoned build, not a running one
_VERSION_RE = re.compile(r"^(\d{8}T\d{6}\.\d{6}Z)-[0-9a-f]{4,}$")
_TS_FORMAT = "%Y%m%dT%H%M%S.%fZ"


def new_version_name(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{now.strftime(_TS_FORMAT)}-{uuid.uuid4().hex[:6]}"


def version_time(version: str) -> dt.datetime | None:
    m = _VERSION_RE.match(version)
    if not m:
        return None
    return dt.datetime.strptime(m.group(1), _TS_FORMAT).replace(tzinfo=dt.UTC)


def version_dir(root: str, version: str) -> str:
    return storage.join(root, VERSIONS, version)


def manifest_url(root: str, version: str) -> str:
    return storage.join(version_dir(root, version), MANIFEST)


def read_current(root: str) -> str | None:
    """The live version name, or None if nothing has been published."""
    url = storage.join(root, CURRENT)
    try:
        text = storage.read_text(url)
    except FileNotFoundError:
        return None
    name = text.strip()
    return name or None


def read_manifest(root: str, version: str) -> dict[str, Any]:
    url = manifest_url(root, version)
    try:
        return json.loads(storage.read_text(url))
    except FileNotFoundError as e:
        raise NoLiveVersionError(f"version {version!r} of {root} has no manifest ({url}): incomplete or deleted") from e
    except json.JSONDecodeError as e:
        raise IndexIntegrityError(f"{url} is not valid JSON: {e}") from e


def write_manifest(root: str, version: str, manifest: dict[str, Any]) -> str:
    url = manifest_url(root, version)
    storage.write_text(url, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return url


def live_manifest(root: str) -> dict[str, Any]:
    version = read_current(root)
    if version is None:
        raise NoLiveVersionError(f"{root} has no {CURRENT}: nothing has been published there yet")
    return read_manifest(root, version)


def list_versions(root: str) -> list[str]:
    """All version directories (complete or not), oldest first."""
    return sorted(n for n in storage.listdir_names(storage.join(root, VERSIONS)) if not n.startswith("."))


def is_complete(root: str, version: str) -> bool:
    return storage.exists(manifest_url(root, version))


def publish(root: str, version: str, *, keep_versions: int | None = None) -> None:
    """Make ``version`` live: check it is complete, then replace ``CURRENT`` in one atomic write.
    With ``keep_versions``, apply retention afterwards (never deleting the live version)."""
    manifest = read_manifest(root, version)  # raises if incomplete
    if manifest.get("version") not in (None, version):
        raise IndexIntegrityError(f"manifest of {version!r} names version {manifest.get('version')!r}")
    storage.write_text(storage.join(root, CURRENT), version + "\n")
    log.info("published %s as live version of %s", version, root)
    if keep_versions is not None:
        apply_retention(root, keep_versions)


def delete_version(root: str, version: str) -> None:
    """Manifest first: a deletion cut short leaves an incomplete version, which nothing reads or publishes."""
    if read_current(root) == version:
        raise ValueError(f"refusing to delete the live version {version} of {root}")
    storage.rm(manifest_url(root, version), recursive=False)
    storage.rm(version_dir(root, version))


def apply_retention(root: str, keep: int, *, protect: Collection[str] = (), abandoned: Collection[str] = (),
                    incomplete_older_than_s: float | None = STALE_INCOMPLETE_S,
                    on_delete: Callable[[str], None] | None = None) -> list[str]:
    """Delete old versions; returns the deleted names, oldest first. Never deleted: the live version (re-read
    before each deletion, so one that became live meanwhile stays), ``protect`` (versions a caller still needs),
    the newest ``keep`` complete versions, and incomplete versions younger than ``incomplete_older_than_s`` or
    with a name that carries no time (another build may still be writing them).

    Deleted: older complete versions; incomplete ones listed in ``abandoned`` (known dead, e.g. started by a
    nightly run that was killed: under its lock none can be running) at any age; other incomplete ones older than
    ``incomplete_older_than_s`` (None: never; 0: all). ``on_delete`` is called after each deletion."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    versions = list_versions(root)
    complete = [v for v in versions if is_complete(root, v)]
    live = read_current(root)
    keep_set = set(complete[-keep:]) | set(protect) | ({live} if live else set())
    now = dt.datetime.now(dt.UTC)
    deleted = []
    for v in versions:
        if v in keep_set:
            continue
        if v not in complete and v not in abandoned:
            created = version_time(v)
            if (incomplete_older_than_s is None or created is None
                    or (now - created).total_seconds() < incomplete_older_than_s):
                continue
        if read_current(root) == v:
            continue
        delete_version(root, v)
        deleted.append(v)
        log.info("retention: deleted version %s of %s", v, root)
        if on_delete is not None:
            on_delete(v)
    return deleted
