"""Fanning an INPUT out over workers: a directory's first levels are listed here and its sub-directories handed
on as ``Prefix``es that other workers list; a manifest is cut into parts (``transforms.listing.manifests``). So
memory and time per worker stay bounded whatever the corpus size."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from core.files import is_local, local_path
from core.paths import relative_to
from transforms.listing.common import Listed, info_stamp, is_image, make_ref
from transforms.listing.expand import expand_input, is_manifest
from transforms.listing.manifests import SPLIT_BYTES, ManifestPart, split_manifest
from transforms.listing.walk import identity, list_level, walk

FANOUT = 64  # a directory INPUT is split into at least this many sub-directories (if it has them) ...
MAX_SPLIT_DEPTH = 3  # ... found at most this many levels down; each is listed by a worker of its own


@dataclass(frozen=True)
class Prefix:
    """A sub-directory of a split INPUT, listed by a worker: ids stay relative to the INPUT's ``root``. ``seen``:
    the (device, inode) of the directories the split visited (local), so a symlink back to one is still caught."""

    index: int
    root: str
    directory: str
    seen: tuple[tuple[int, int], ...] = ()
    remote: bool = False


def split_input(spec: str, index: int, split_bytes: int = SPLIT_BYTES) -> Iterator[Listed | Prefix | ManifestPart]:
    """``expand_input``, with the INPUT split: a manifest into its parts; a directory into the images of its first
    levels, here, and its sub-directories as ``Prefix``es (breadth first until ``FANOUT`` of them or
    ``MAX_SPLIT_DEPTH`` levels). A store listed by prefix (gs, s3, memory) is split at its top level; one listed
    by walking (sftp, hdfs) is not split."""
    if spec.strip():
        if is_manifest(spec):
            yield from split_manifest(spec, index, split_bytes)
            return
        if is_local(spec):
            path = local_path(spec).rstrip("/") or "/"
            if os.path.isdir(path):
                yield from _split_local(path, index)
                return
        else:
            fs, path = fsspec.core.url_to_fs(spec)
            path = path.rstrip("/") or path
            if type(fs).find is not fsspec.AbstractFileSystem.find and fs.isdir(path):
                yield from _split_remote(fs, path, index)
                return
    yield from expand_input(spec, index)


def _split_local(root: str, index: int) -> Iterator[Listed | Prefix]:
    seen = {identity(root)}
    frontier = [root]
    for _ in range(MAX_SPLIT_DEPTH):
        if len(frontier) >= FANOUT:
            break
        below: list[str] = []
        for directory in frontier:
            for item in list_level(directory, root, index, seen):
                if isinstance(item, str):
                    below.append(item)
                else:
                    yield item
        frontier = below
    visited = tuple(sorted(seen))
    for directory in frontier:
        yield Prefix(index, root, directory, visited)


def _split_remote(fs: fsspec.AbstractFileSystem, root: str, index: int) -> Iterator[Listed | Prefix]:
    for info in sorted(fs.ls(root, detail=True), key=lambda i: i["name"]):
        name = info["name"].rstrip("/")
        if info["type"] == "directory":
            if name != root:
                yield Prefix(index, fs.unstrip_protocol(root), fs.unstrip_protocol(name), remote=True)
        elif is_image(name):
            yield make_ref(relative_to(name, root), fs.unstrip_protocol(name), index, info.get("size"),
                           info_stamp(info))


def list_prefix(prefix: Prefix) -> Iterator[Listed]:
    """The images below one ``Prefix``, streamed (an object store's ``find`` returns one sub-prefix, not all)."""
    if not prefix.remote:
        yield from walk(prefix.root, prefix.index, prefix.directory, prefix.seen)
        return
    fs, root = fsspec.core.url_to_fs(prefix.root)
    _, directory = fsspec.core.url_to_fs(prefix.directory)
    for match, info in sorted(fs.find(directory, withdirs=False, detail=True).items()):
        if is_image(match):
            yield make_ref(relative_to(match, root.rstrip("/")), fs.unstrip_protocol(match), prefix.index,
                           info.get("size"), info_stamp(info))
