"""Paths a command is given: local paths made absolute, and Parquet specs (file, directory, glob) made file lists.

Workers run in another working directory (Flink, Dataflow), so every local path is made absolute at the CLI
boundary; fsspec URLs pass through unchanged.
"""

from __future__ import annotations

import glob
import os
import posixpath
from collections.abc import Sequence

import fsspec
from pyarrow.fs import FileSelector, FileType, FSSpecHandler, LocalFileSystem, PyFileSystem


def is_url(path: str) -> bool:
    """An fsspec URL (``gs://``, ``s3://``, ``memory://`` ...), as opposed to a local path."""
    return "://" in str(path) and not str(path).startswith("file://")


def absolute(path: str | os.PathLike[str] | None) -> str | None:
    """A local path as an absolute one (``file://`` stripped, ``~`` expanded); a URL unchanged."""
    if path is None:
        return None
    text = os.fspath(path)
    if is_url(text):
        return text
    if text.startswith("file://"):
        text = text[len("file://"):]
    return os.path.abspath(os.path.expanduser(text))


def _arrow_fs(fs: fsspec.AbstractFileSystem):
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return LocalFileSystem() if "file" in protocols else PyFileSystem(FSSpecHandler(fs))


def _parquet_below(filesystem, root: str) -> list[str]:
    """``*.parquet`` below ``root``, skipping any name that starts with ``.`` or ``_`` (staging folders, ``_SUCCESS``)
    as ``pyarrow.dataset`` discovery does; a folder may also hold other files (a JSONL log, a marker)."""
    infos = filesystem.get_file_info(FileSelector(root.rstrip("/"), recursive=True))
    return [i.path for i in infos if i.type == FileType.File and i.path.endswith(".parquet")
            and not any(part.startswith((".", "_")) for part in i.path[len(root.rstrip("/")):].split("/") if part)]


def parquet_files(specs: str | Sequence[str], missing: type[Exception] = FileNotFoundError) -> list[str]:
    """Files, directories and globs -> sorted, de-duplicated Parquet file URLs (with their protocol).

    A directory is listed through pyarrow's filesystem layer (recursively, with dataset discovery's rule for
    hidden names). An existing path is taken literally before it is
    tried as a glob, so ``img[1].parquet`` is a file name. ``missing`` is the error raised for a spec that yields
    no file (each caller names its own).
    """
    if isinstance(specs, str | os.PathLike):
        specs = [os.fspath(specs)]
    urls: list[str] = []
    for spec in map(str, specs):
        fs, path = fsspec.core.url_to_fs(spec)
        remote = is_url(spec)
        if fs.isdir(path):
            found = _parquet_below(_arrow_fs(fs), path)
        elif fs.exists(path):
            found = [path]
        elif glob.has_magic(path):
            found = [f for f in fs.glob(path) if fs.isfile(f)]
        else:
            raise missing(f"no Parquet files in {spec}: not found")
        if not found:
            raise missing(f"no Parquet files in {spec}")
        urls += [fs.unstrip_protocol(f) if remote else f for f in found]
    return sorted(dict.fromkeys(urls))


def glob_root(pattern: str) -> str:
    """The fixed part of a glob before its first magic component (``a/b/*/c*.jpg`` -> ``a/b``)."""
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return "/".join(parts[:fixed])


def relative_to(path: str, root: str) -> str:
    """``path`` below ``root`` (the id of a listed file); its base name when it is not below it or ``root`` is
    empty."""
    if not root:
        return posixpath.basename(path)
    prefix = root if root.endswith("/") else root + "/"
    return path[len(prefix):] if path.startswith(prefix) else posixpath.basename(path)
