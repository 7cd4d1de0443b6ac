"""Small fsspec helpers: URLs, whole-object reads and writes, checksums, FAISS (de)serialisation.

Every path here may be a local path or an fsspec URL (``gs://``, ``s3://``, ``memory://``, ...). Writes of a whole
object are atomic: on local disks a temporary file in the same directory plus ``os.replace``; on object stores a
single-object PUT, which readers see entirely or not at all.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import fsspec
import numpy as np

from index.errors import IndexIntegrityError

CHUNK = 1 << 22


def fs_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def join(base: str, *parts: str) -> str:
    base = str(base).rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts if p]])


def exists(url: str) -> bool:
    fs, path = fs_path(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    fs, path = fs_path(url)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole object atomically (temp + ``os.replace`` locally; one PUT on object stores)."""
    fs, path = fs_path(url)
    if is_local(fs):
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _fsync_dir(directory)
    else:
        fs.pipe_file(path, data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_url(url: str) -> tuple[str, int]:
    """(sha256 hex, size) of an object, streamed."""
    fs, path = fs_path(url)
    h = hashlib.sha256()
    size = 0
    with fs.open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def check_inside(url: str, base: str, what: str) -> None:
    """Refuse a local ``url`` that resolves (through symlinks) outside the folder ``base``: a published file
    replaced by a link must not make a reader load, or retention delete, something elsewhere. Object stores have
    no links, so there the key is the object."""
    fs, path = fs_path(url)
    if not is_local(fs):
        return
    real, inside = os.path.realpath(path), os.path.realpath(fs_path(base)[1])
    if os.path.commonpath([real, inside]) != inside:
        raise IndexIntegrityError(f"{what} {url} resolves to {real}, outside {inside} (a symlink?): refusing it")


def rm(url: str, recursive: bool = True) -> None:
    fs, path = fs_path(url)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def listdir_names(url: str) -> list[str]:
    """Names (not paths) of the direct children of a directory/prefix; [] if it does not exist."""
    fs, path = fs_path(url)
    if not fs.exists(path):
        return []
    out = []
    for entry in fs.ls(path, detail=False):
        name = str(entry).rstrip("/").rsplit("/", 1)[-1]
        if name:
            out.append(name)
    return sorted(out)


def info(url: str) -> dict[str, Any]:
    fs, path = fs_path(url)
    return fs.info(path)


# ---- FAISS ------------------------------------------------------------------------------------------------------

def index_to_bytes(index: Any) -> bytes:
    import faiss

    return faiss.serialize_index(index).tobytes()


def index_from_bytes(data: bytes, io_flags: int = 0) -> Any:
    import faiss

    arr = np.frombuffer(data, dtype=np.uint8)
    return faiss.deserialize_index(arr, io_flags) if io_flags else faiss.deserialize_index(arr)


def read_index(url: str, io_flags: int = 0) -> Any:
    """Read and deserialise a FAISS index written by ``write_index``."""
    return index_from_bytes(read_bytes(url), io_flags)


def write_index(index: Any, url: str) -> tuple[str, int]:
    """Serialise and write an index atomically; returns (sha256, bytes)."""
    data = index_to_bytes(index)
    write_bytes(url, data)
    return sha256_bytes(data), len(data)
