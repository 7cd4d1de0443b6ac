"""Walking a directory tree safely: with the OS for local paths (fsspec's walk drops a directory it cannot list
without a word), iteratively (no recursion limit), each directory once (symlink loops and diamonds are reported,
not followed again); and the same walk for fsspec stores that are listed folder by folder (sftp, hdfs, smb)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import fsspec

from core.files import local_uri, os_error_kind
from core.paths import relative_to
from transforms.listing.common import Listed, is_image, list_failure, make_ref
from transforms.records import ImageRef


def walk(root: str, index: int, start: str | None = None,
         seen: Iterable[tuple[int, int]] = ()) -> Iterator[Listed]:
    """Every image file below ``start`` (default ``root``; ids relative to ``root``), depth first in name order,
    with the OS rather than fsspec's walk (which drops a directory it cannot list without a word): a directory
    that cannot be listed is a failure row, and one reached a second time (a symlink loop, or a second link to
    it) is listed once and reported. ``seen``: directories a split listing visited already. Iterative, so a chain
    of 10,000 nested directories is no recursion limit (the OS's path-length limit is a failure row)."""
    visited = {identity(root), *seen}
    stack = [start or root]
    while stack:
        subdirs = []
        for item in list_level(stack.pop(), root, index, visited):
            if isinstance(item, str):
                subdirs.append(item)
            else:
                yield item
        stack.extend(reversed(subdirs))


def list_level(directory: str, root: str, index: int, seen: set[tuple[int, int]]) -> Iterator[Listed | str]:
    """The images of one directory (ImageRef), its failure rows, and its sub-directories not seen yet (str)."""
    rel_dir = relative_to(directory, root) + "/" if directory != root else "./"
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        yield list_failure(rel_dir, local_uri(directory), os_error_kind(e),
                           f"cannot list directory {directory}: {e.strerror or e}")
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        if not is_dir:
            if is_image(entry.name):  # not opened here: reading refuses what is not a regular file
                yield _local_ref(relative_to(entry.path, root), entry, index)
            continue
        try:
            key = identity(entry.path)
        except OSError as e:
            yield list_failure(relative_to(entry.path, root) + "/", local_uri(entry.path), os_error_kind(e),
                               f"cannot list directory {entry.path}: {e.strerror or e}")
            continue
        if key in seen:
            yield list_failure(relative_to(entry.path, root) + "/", local_uri(entry.path), "symlink_loop",
                               f"{entry.path} leads to a directory already listed (a symlink loop or a second "
                               f"link to it): its files are listed once, under their first path")
            continue
        seen.add(key)
        yield entry.path


def identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _local_ref(image_id: str, entry: os.DirEntry, index: int) -> ImageRef:
    try:
        st = entry.stat()  # follows symlinks; a dangling one has no size (reading reports it)
    except OSError:
        return make_ref(image_id, local_uri(entry.path), index)
    return make_ref(image_id, local_uri(entry.path), index, st.st_size, f"mtime_ns:{st.st_mtime_ns}")


def walk_store(fs: fsspec.AbstractFileSystem, root: str, spec: str, index: int) -> Iterator[Listed]:
    """``walk`` for a walk-listed fsspec store. fsspec's own walk drops a folder it cannot list, even with
    ``on_error`` (fsspec 2026.9 passes ``on_error`` to the top folder only, not to the folders below it)."""
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            infos = sorted(fs.ls(directory, detail=True), key=lambda i: i["name"])
        except OSError as e:
            yield list_failure(relative_to(directory, root) + "/", fs.unstrip_protocol(directory),
                               os_error_kind(e), f"cannot list {fs.unstrip_protocol(directory)}: {e}")
            continue
        subdirs = []
        for info in infos:
            name = info["name"].rstrip("/")
            if info["type"] == "directory":
                if name != directory.rstrip("/"):
                    subdirs.append(name)
            elif is_image(name):
                yield make_ref(relative_to(name, root), fs.unstrip_protocol(name), index)
        stack.extend(reversed(subdirs))
