"""One INPUT -> its images, in one element: a directory (walked), a glob, a single file, an fsspec URL or a
manifest. Local paths are listed with the OS (a name like ``a::b.jpg`` or ``x#y.jpg`` is a file name, not fsspec
URL syntax); names that are not UTF-8 get a printable id and a uri that opens the same file (``core.files``).
``transforms.listing.fanout`` splits a big directory INPUT over workers before this."""

from __future__ import annotations

import glob
import os
import posixpath
from collections.abc import Iterator

import fsspec

from core.files import is_local, local_path, local_uri
from core.paths import glob_root, relative_to
from transforms.listing.common import MANIFEST_EXTENSIONS, Listed, is_image, list_failure, make_ref
from transforms.listing.manifests import read_manifest
from transforms.listing.walk import walk, walk_store


def expand_input(spec: str, index: int) -> Iterator[Listed]:
    """Yield the images (and failure rows) one INPUT names. image_id = path relative to the input's root
    (the directory, or a glob's fixed prefix); a single file's id is its name."""
    if not spec.strip():
        yield list_failure(spec, spec, "bad_input", "an empty INPUT")
        return
    local = is_local(spec)
    path = local_path(spec) if local else spec
    if is_manifest(spec):
        yield from read_manifest(spec, index)
    elif local:
        yield from _expand_local(path, index, spec)
    else:
        yield from _expand_remote(spec, index)


def is_manifest(spec: str) -> bool:
    """A manifest by its name, unless it is a local directory that happens to be named so."""
    return spec.lower().endswith(MANIFEST_EXTENSIONS) and not (is_local(spec) and os.path.isdir(local_path(spec)))


def _expand_local(path: str, index: int, spec: str) -> Iterator[Listed]:
    path = path.rstrip("/") or "/"
    if not os.path.lexists(path) and glob.has_magic(path):  # a literal name with [ ] * ? is tried first
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            yield list_failure(spec, spec, "no_match", f"{spec}: the pattern matches no file")
            return
        root = glob_root(path)
        for match in matches:
            if is_image(match) and not os.path.isdir(match):
                yield make_ref(relative_to(match, root), local_uri(match), index)
    elif os.path.isdir(path):
        yield from walk(path, index)
    else:  # a single file (or a missing one: reading reports it, so the input is not silently lost)
        yield make_ref(posixpath.basename(path), local_uri(path), index)


def _expand_remote(spec: str, index: int) -> Iterator[Listed]:
    fs, path = fsspec.core.url_to_fs(spec)
    path = path.rstrip("/") or path
    if not fs.exists(path) and glob.has_magic(path):
        root = glob_root(path)
        matches = sorted(p for p in fs.glob(path) if not fs.isdir(p))
        if not matches:
            yield list_failure(spec, spec, "no_match", f"{spec}: the pattern matches no file")
            return
    elif fs.isdir(path):
        root = path
        if type(fs).find is fsspec.AbstractFileSystem.find:  # a store listed by walking (sftp, hdfs, smb...)
            yield from walk_store(fs, path, spec, index)
            return
        matches = sorted(fs.find(path, withdirs=False))  # object stores list by prefix: no folder to fail
    else:
        yield make_ref(posixpath.basename(path), fs.unstrip_protocol(path), index)
        return
    for match in matches:
        if is_image(match):
            yield make_ref(relative_to(match, root), fs.unstrip_protocol(match), index)
