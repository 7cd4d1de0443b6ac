"""What a published version must look like before anything of it is read: its name and its manifest's structure.

A manifest is trusted only after ``validate_manifest``: the checksums ``SearchIndex.open`` verifies say that each
file is the one the manifest lists, but not that the manifest lists the right files. An edit that drops a shard
and its count, lists one twice, points an entry at another version or outside the root (``..``, an absolute path,
a URL), or names another folder as its version would otherwise open as a smaller, doubled or foreign index.

Version names start with their UTC creation time (``20261126T193012.123456Z-1a2b``): readable, unique, and
recognisable (a ``CURRENT`` or folder with any other name is refused). Their order is NOT trusted: a clock set
wrong makes a name sort anywhere. Versions are ordered by the ``seq`` their manifest records (see ``index.layout``).
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
import uuid
from typing import Any

from index.errors import IndexIntegrityError

FORMAT = "ldot-index/1"  # the manifest's "format": which layout (index.layout's) a version was written in
_VERSION_RE = re.compile(r"^(\d{8}T\d{6}\.\d{6}Z)-[0-9a-f]{4,32}$")
_TS_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def new_version_name(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{now.astimezone(dt.UTC).strftime(_TS_FORMAT)}-{uuid.uuid4().hex[:6]}"


def is_version_name(name: object) -> bool:
    return isinstance(name, str) and _VERSION_RE.match(name) is not None


def check_version_name(name: object, what: str = "version name") -> str:
    """``name`` if it is a version name; IndexIntegrityError otherwise (before it is joined into any path)."""
    if not is_version_name(name):
        raise IndexIntegrityError(f"{what} {name!r} is not a version name (<UTC time>-<hex>, e.g. "
                                  f"{new_version_name()}): refusing to follow it")
    return str(name)


def version_time(version: str) -> dt.datetime | None:
    m = _VERSION_RE.match(version)
    if not m:
        return None
    return dt.datetime.strptime(m.group(1), _TS_FORMAT).replace(tzinfo=dt.UTC)


def _is_count(value: object, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_entry_path(path: object, what: str) -> str:
    """A path inside the version folder: relative, normalised, no ``..``, no scheme, no backslash."""
    if not isinstance(path, str) or not path:
        raise IndexIntegrityError(f"{what}: path {path!r} is not a file name")
    parts = path.split("/")
    if (path.startswith("/") or "\\" in path or ":" in path or "\0" in path or posixpath.normpath(path) != path
            or any(p in ("", ".", "..") for p in parts)):
        raise IndexIntegrityError(f"{what}: path {path!r} is not a plain relative path inside the version folder "
                                  "(absolute, '..', a URL or not normalised): refusing to follow it")
    return path


def _check_file_entry(entry: object, what: str, paths: dict[str, str]) -> None:
    if not isinstance(entry, dict):
        raise IndexIntegrityError(f"{what}: expected an entry with path, sha256 and bytes, got {entry!r}")
    path = check_entry_path(entry.get("path"), what)
    if path in paths:
        raise IndexIntegrityError(f"{what} and {paths[path]} both name the file {path!r}")
    paths[path] = what
    if not isinstance(entry.get("sha256"), str) or not _SHA256_RE.match(entry["sha256"]):
        raise IndexIntegrityError(f"{what}: sha256 {entry.get('sha256')!r} is not a sha256 hex digest")
    if not _is_count(entry.get("bytes")):
        raise IndexIntegrityError(f"{what}: bytes {entry.get('bytes')!r} is not a size")


def validate_manifest(manifest: object, version: str) -> dict[str, Any]:
    """``manifest`` if its whole structure is sound for the folder ``version``; IndexIntegrityError naming the first
    thing that is wrong otherwise. Checks: format, version == folder (a version name), dim/count/n_shards, shard
    numbers 0..n-1 exactly once, the sum of shard counts == count == the rows of its sources (recorded independently
    when the inputs were scanned), id-map rows == shard count where recorded, every
    file entry a distinct relative path inside the version with a sha256 and a size, nprobe and seq types."""
    where = f"manifest of version {version!r}"
    check_version_name(version, "version folder")
    if not isinstance(manifest, dict):
        raise IndexIntegrityError(f"{where} is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise IndexIntegrityError(f"{where} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("version") != version:
        raise IndexIntegrityError(f"{where} names version {manifest.get('version')!r}: a manifest copied or edited "
                                  "from another version; refusing it")
    for key, low in (("dim", 1), ("count", 0), ("n_shards", 1)):
        if not _is_count(manifest.get(key), low):
            raise IndexIntegrityError(f"{where}: {key} {manifest.get(key)!r} is not an integer >= {low}")
    if manifest.get("seq") is not None and not _is_count(manifest["seq"]):
        raise IndexIntegrityError(f"{where}: seq {manifest['seq']!r} is not an integer >= 0")
    if manifest.get("nprobe") is not None and not _is_count(manifest["nprobe"], 1):
        raise IndexIntegrityError(f"{where}: nprobe {manifest['nprobe']!r} is not an integer >= 1")
    paths: dict[str, str] = {}
    _check_file_entry(manifest.get("trained"), f"{where}: trained index", paths)
    shards = manifest.get("shards")
    n = manifest["n_shards"]
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        raise IndexIntegrityError(f"{where}: shards is not a list of entries")
    numbers = [s.get("shard") for s in shards]
    if not all(_is_count(x) for x in numbers) or sorted(numbers) != list(range(n)):
        missing = sorted(set(range(n)) - {x for x in numbers if _is_count(x)})
        repeated = sorted({repr(x) for x in numbers if numbers.count(x) > 1})
        raise IndexIntegrityError(f"{where}: shard numbers {numbers} are not 0..{n - 1} exactly once (n_shards {n}; "
                                  f"missing {missing}, repeated {repeated}): refusing a partial or doubled index")
    total = 0
    for s in shards:
        what = f"{where}: shard {s['shard']}"
        if not _is_count(s.get("count")):
            raise IndexIntegrityError(f"{what}: count {s.get('count')!r} is not an integer >= 0")
        _check_file_entry(s, what, paths)
        _check_file_entry(s.get("idmap"), f"{what} id map", paths)
        rows = s["idmap"].get("rows")
        if rows is not None and rows != s["count"]:
            raise IndexIntegrityError(f"{what}: id map has {rows!r} rows for {s['count']} vectors")
        total += s["count"]
    if total != manifest["count"]:
        raise IndexIntegrityError(f"{where}: shard counts add up to {total}, count says {manifest['count']}: "
                                  "refusing a partial or doubled index")
    sources = manifest.get("sources")
    if not isinstance(sources, list) or not all(isinstance(x, dict) and _is_count(x.get("rows")) for x in sources):
        raise IndexIntegrityError(f"{where}: sources (the embedding files and their rows) are missing or malformed")
    if sum(x["rows"] for x in sources) != total:
        raise IndexIntegrityError(f"{where}: its sources hold {sum(x['rows'] for x in sources)} rows, its shards "
                                  f"{total}: refusing a partial or doubled index")
    selfcheck = manifest.get("selfcheck")
    if selfcheck is not None:
        if not isinstance(selfcheck, dict):
            raise IndexIntegrityError(f"{where}: selfcheck is not an object")
        if "path" in selfcheck:
            _check_file_entry(selfcheck, f"{where}: self-check table", paths)
    return manifest
