"""List inputs (directories, globs, files, fsspec URLs, manifests) into ``ImageRef``s; keep one per image_id.

Listing runs inside the pipeline (one input spec per element), so a corpus of millions of objects is listed
by workers rather than embedded in the job graph. Nothing is lost silently: a directory that cannot be listed,
a bad manifest row, an INPUT that yields no image are each a failure row, and the other inputs go on.
Local paths are listed with the OS (a name like ``a::b.jpg`` or ``x#y.jpg`` is a file name, not fsspec URL
syntax); names that are not UTF-8 get a printable id and a uri that opens the same file (``core.files``).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import apache_beam as beam
import fsspec
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from core.files import (
    BoundedLines,
    LineTooLong,
    is_local,
    is_utf8,
    local_path,
    local_uri,
    open_regular,
    os_error_kind,
    printable_id,
    transportable,
)
from transforms.image_types import IMAGE_EXTENSIONS
from transforms.records import FAILED, ImageRef, failure
from transforms.sources.webdataset import is_source

MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".parquet")
MAX_MANIFEST_LINE = 1 << 20  # bytes; a longer CSV/JSONL line is a failure row, not a memory blow-up
PARQUET_BATCH_ROWS = 8192  # rows per batch: memory stays bounded however many rows a manifest holds

Listed = ImageRef | dict[str, Any]  # an input, or a failure row


class ListError(ValueError):
    """An INPUT that cannot be listed at all; ``kind`` is the failure row's ``error``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _failed(image_id: str, uri: str, kind: str, message: str) -> dict[str, Any]:
    return failure(printable_id(image_id), printable_id(uri), "list", kind, printable_id(message))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def expand_input(spec: str, index: int) -> Iterator[Listed]:
    """Yield the images (and failure rows) one INPUT names. image_id = path relative to the input's root
    (the directory, or a glob's fixed prefix); a single file's id is its name."""
    if not spec.strip():
        yield _failed(spec, spec, "bad_input", "an empty INPUT")
        return
    local = is_local(spec)
    path = local_path(spec) if local else spec
    if spec.lower().endswith(MANIFEST_EXTENSIONS) and not (local and os.path.isdir(path)):
        yield from read_manifest(spec, index)
    elif local:
        yield from _expand_local(path, index, spec)
    else:
        yield from _expand_remote(spec, index)


def _expand_local(path: str, index: int, spec: str) -> Iterator[Listed]:
    path = path.rstrip("/") or "/"
    if not os.path.lexists(path) and glob.has_magic(path):  # a literal name with [ ] * ? is tried first
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            yield _failed(spec, spec, "no_match", f"{spec}: the pattern matches no file")
            return
        root = _glob_root(path)
        for match in matches:
            if _is_image(match) and not os.path.isdir(match):
                yield _ref(_relative(match, root), local_uri(match), index)
    elif os.path.isdir(path):
        yield from _walk(path, index)
    else:  # a single file (or a missing one: reading reports it, so the input is not silently lost)
        yield _ref(posixpath.basename(path), local_uri(path), index)


def _glob_root(pattern: str) -> str:
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return "/".join(parts[:fixed])


def _relative(path: str, root: str) -> str:
    if not root:
        return posixpath.basename(path)
    prefix = root if root.endswith("/") else root + "/"
    return path[len(prefix):] if path.startswith(prefix) else posixpath.basename(path)


def _ref(image_id: str, uri: str, index: int, size: int | None = None, stamp: str | None = None) -> ImageRef:
    return ImageRef(printable_id(image_id), uri, (index, uri), size, stamp)


STAMP_KEYS = ("generation", "ETag", "etag", "VersionId", "mtime", "LastModified", "last_modified", "updated",
              "created")  # what fsspec's info calls an object's version, by store (gcs, s3, local, memory...)


def info_stamp(info: dict[str, Any]) -> str | None:
    """The version stamp of an object from its fsspec ``info``, as ``key:value``; None if the store has none."""
    for key in STAMP_KEYS:
        if info.get(key) is not None:
            return f"{key}:{info[key]}"
    return None


def _local_ref(image_id: str, entry: os.DirEntry, index: int) -> ImageRef:
    try:
        st = entry.stat()  # follows symlinks; a dangling one has no size (reading reports it)
    except OSError:
        return _ref(image_id, local_uri(entry.path), index)
    return _ref(image_id, local_uri(entry.path), index, st.st_size, f"mtime_ns:{st.st_mtime_ns}")


def _walk(root: str, index: int, start: str | None = None,
          seen: Iterable[tuple[int, int]] = ()) -> Iterator[Listed]:
    """Every image file below ``start`` (default ``root``; ids relative to ``root``), depth first in name order,
    with the OS rather than fsspec's walk (which drops a directory it cannot list without a word): a directory
    that cannot be listed is a failure row, and one reached a second time (a symlink loop, or a second link to
    it) is listed once and reported. ``seen``: directories a split listing visited already. Iterative, so a chain
    of 10,000 nested directories is no recursion limit (the OS's path-length limit is a failure row)."""
    visited = {_identity(root), *seen}
    stack = [start or root]
    while stack:
        subdirs = []
        for item in _list_level(stack.pop(), root, index, visited):
            if isinstance(item, str):
                subdirs.append(item)
            else:
                yield item
        stack.extend(reversed(subdirs))


def _list_level(directory: str, root: str, index: int, seen: set[tuple[int, int]]) -> Iterator[Listed | str]:
    """The images of one directory (ImageRef), its failure rows, and its sub-directories not seen yet (str)."""
    rel_dir = _relative(directory, root) + "/" if directory != root else "./"
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        yield _failed(rel_dir, local_uri(directory), os_error_kind(e),
                      f"cannot list directory {directory}: {e.strerror or e}")
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        if not is_dir:
            if _is_image(entry.name):  # not opened here: reading refuses what is not a regular file
                yield _local_ref(_relative(entry.path, root), entry, index)
            continue
        try:
            key = _identity(entry.path)
        except OSError as e:
            yield _failed(_relative(entry.path, root) + "/", local_uri(entry.path), os_error_kind(e),
                          f"cannot list directory {entry.path}: {e.strerror or e}")
            continue
        if key in seen:
            yield _failed(_relative(entry.path, root) + "/", local_uri(entry.path), "symlink_loop",
                          f"{entry.path} leads to a directory already listed (a symlink loop or a second "
                          f"link to it): its files are listed once, under their first path")
            continue
        seen.add(key)
        yield entry.path


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _expand_remote(spec: str, index: int) -> Iterator[Listed]:
    fs, path = fsspec.core.url_to_fs(spec)
    path = path.rstrip("/") or path
    if not fs.exists(path) and glob.has_magic(path):
        root = _glob_root(path)
        matches = sorted(p for p in fs.glob(path) if not fs.isdir(p))
        if not matches:
            yield _failed(spec, spec, "no_match", f"{spec}: the pattern matches no file")
            return
    elif fs.isdir(path):
        root = path
        if type(fs).find is fsspec.AbstractFileSystem.find:  # a store listed by walking (sftp, hdfs, smb...)
            yield from _walk_store(fs, path, spec, index)
            return
        matches = sorted(fs.find(path, withdirs=False))  # object stores list by prefix: no folder to fail
    else:
        yield _ref(posixpath.basename(path), fs.unstrip_protocol(path), index)
        return
    for match in matches:
        if _is_image(match):
            yield _ref(_relative(match, root), fs.unstrip_protocol(match), index)


def _walk_store(fs: fsspec.AbstractFileSystem, root: str, spec: str, index: int) -> Iterator[Listed]:
    """``_walk`` for a walk-listed fsspec store. fsspec's own walk drops a folder it cannot list, even with
    ``on_error`` (fsspec 2026.9 passes ``on_error`` to the top folder only, not to the folders below it)."""
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            infos = sorted(fs.ls(directory, detail=True), key=lambda i: i["name"])
        except OSError as e:
            yield _failed(_relative(directory, root) + "/", fs.unstrip_protocol(directory), os_error_kind(e),
                          f"cannot list {fs.unstrip_protocol(directory)}: {e}")
            continue
        subdirs = []
        for info in infos:
            name = info["name"].rstrip("/")
            if info["type"] == "directory":
                if name != directory.rstrip("/"):
                    subdirs.append(name)
            elif _is_image(name):
                yield _ref(_relative(name, root), fs.unstrip_protocol(name), index)
        stack.extend(reversed(subdirs))


# ---- fanning a directory INPUT out over workers ---------------------------------------------------------------------


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


def split_input(spec: str, index: int) -> Iterator[Listed | Prefix]:
    """``expand_input``, with a directory INPUT split: the images of its first levels here, and its sub-directories
    as ``Prefix``es (breadth first until ``FANOUT`` of them or ``MAX_SPLIT_DEPTH`` levels). A store listed by
    prefix (gs, s3, memory) is split at its top level; one listed by walking (sftp, hdfs) is not split."""
    if spec.strip() and not spec.lower().endswith(MANIFEST_EXTENSIONS):
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
    seen = {_identity(root)}
    frontier = [root]
    for _ in range(MAX_SPLIT_DEPTH):
        if len(frontier) >= FANOUT:
            break
        below: list[str] = []
        for directory in frontier:
            for item in _list_level(directory, root, index, seen):
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
        elif _is_image(name):
            yield _ref(_relative(name, root), fs.unstrip_protocol(name), index, info.get("size"), info_stamp(info))


def list_prefix(prefix: Prefix) -> Iterator[Listed]:
    """The images below one ``Prefix``, streamed (an object store's ``find`` returns one sub-prefix, not all)."""
    if not prefix.remote:
        yield from _walk(prefix.root, prefix.index, prefix.directory, prefix.seen)
        return
    fs, root = fsspec.core.url_to_fs(prefix.root)
    _, directory = fsspec.core.url_to_fs(prefix.directory)
    for match, info in sorted(fs.find(directory, withdirs=False, detail=True).items()):
        if _is_image(match):
            yield _ref(_relative(match, root.rstrip("/")), fs.unstrip_protocol(match), prefix.index,
                       info.get("size"), info_stamp(info))


# ---- manifests -------------------------------------------------------------------------------------------------------


def read_manifest(spec: str, index: int) -> Iterator[Listed]:
    """Rows with ``uri`` and optional ``image_id`` (.csv, .jsonl, .parquet), read as a stream. Each bad row (no
    uri, not JSON, not an object, a line over ``MAX_MANIFEST_LINE`` bytes) is its own failure row naming its line
    (row, for Parquet); the good rows go on. Relative uris are taken as given."""
    lower = spec.lower()
    with _open_manifest(spec) as f:
        if lower.endswith(".parquet"):
            rows, unit = _parquet_rows(f, spec), "row"
        elif lower.endswith(".csv"):
            rows, unit = _csv_rows(f, spec), "line"
        else:
            rows, unit = _jsonl_rows(f), "line"
        for number, row in rows:
            yield _row_to_ref(spec, index, number, row, unit)


def _open_manifest(spec: str) -> BinaryIO:
    if is_local(spec):
        return open_regular(local_path(spec))
    fs, path = fsspec.core.url_to_fs(spec)
    return fs.open(path, "rb")


class _BadRow:
    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message


def _row_to_ref(spec: str, index: int, number: int, row: Any, unit: str) -> Listed:
    problem = _row_problem(row)
    if problem is not None:
        kind, message = problem
        return _failed(f"{spec}:{number}", spec, kind, f"{spec} {unit} {number}: {message}")
    uri, image_id = row["uri"], row.get("image_id")
    if is_local(uri):
        uri = local_uri(uri)
    image_id = uri if image_id is None or image_id == "" else str(image_id)
    return ImageRef(printable_id(image_id), uri, (index, f"{number:012d}"))


def _row_problem(row: Any) -> tuple[str, str] | None:
    """(kind, message) of a manifest row that names no image, else None."""
    if isinstance(row, _BadRow):
        return row.kind, row.message
    if not isinstance(row, dict):
        return "bad_row", f"a JSON {type(row).__name__}, not an object with a 'uri'"
    uri, image_id = row.get("uri"), row.get("image_id")
    if uri is None or (isinstance(uri, str) and not uri.strip()):
        return "missing_uri", "empty or missing 'uri'"
    if not isinstance(uri, str):
        return "bad_row", f"'uri' is a {type(uri).__name__}, not a string"
    if image_id is not None and not isinstance(image_id, str | int):
        return "bad_row", f"'image_id' is a {type(image_id).__name__}, not a string"
    if not is_local(uri) and not is_utf8(uri):
        return "bad_row", f"'uri' {printable_id(uri)} is not valid UTF-8"
    return None


def _jsonl_rows(f: BinaryIO) -> Iterator[tuple[int, Any]]:
    lines = BoundedLines(f, MAX_MANIFEST_LINE)
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except LineTooLong as e:
            yield lines.number, _BadRow("line_too_long", str(e))
            continue
        if not line.strip():
            continue
        try:
            yield lines.number, json.loads(line)
        except ValueError as e:
            yield lines.number, _BadRow("bad_json", f"not JSON: {e}")
        except RecursionError:
            yield lines.number, _BadRow("bad_json", "JSON nested too deeply")


def _csv_rows(f: BinaryIO, spec: str) -> Iterator[tuple[int, Any]]:
    lines = BoundedLines(f, MAX_MANIFEST_LINE)
    reader = csv.reader(lines)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    except (LineTooLong, csv.Error) as e:
        raise ListError("bad_manifest", f"{spec}: unreadable CSV header: {e}") from e
    if "uri" not in header:
        raise ListError("no_uri_column", f"{spec}: the CSV header has no 'uri' column (columns: {header})")
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except LineTooLong as e:
            yield lines.number, _BadRow("line_too_long", str(e))
            continue
        except csv.Error as e:
            yield lines.number, _BadRow("bad_row", f"not CSV: {e}")
            continue
        if not any(field.strip() for field in fields):
            continue
        if len(fields) > len(header):
            yield lines.number, _BadRow("bad_row", f"{len(fields)} fields for {len(header)} columns")
            continue
        yield lines.number, dict(zip(header, fields, strict=False))


def _parquet_rows(f: BinaryIO, spec: str) -> Iterator[tuple[int, Any]]:
    """Row groups one at a time, in batches: a manifest of a million rows that compresses to kilobytes streams
    in bounded memory, and a corrupt row group costs its own rows (one failure row says which)."""
    try:
        pf = pq.ParquetFile(f)
    except Exception as e:  # pyarrow's ArrowInvalid: not a Parquet file, or a truncated footer
        raise ListError("bad_manifest", f"{spec}: not a readable Parquet file: {e}") from e
    names = pf.schema_arrow.names
    if "uri" not in names:
        raise ListError("no_uri_column", f"{spec}: no 'uri' column (columns: {names})")
    columns = [c for c in ("uri", "image_id") if c in names]
    number = 0
    for group in range(pf.num_row_groups):
        group_rows = pf.metadata.row_group(group).num_rows
        start = number
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=columns):
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
        except Exception as e:  # a corrupt page: the rest of this row group is unreadable
            yield number + 1, _BadRow("bad_manifest", f"row group {group} unreadable from here "
                                                      f"({start + group_rows - number} rows lost): {e}")
            number = start + group_rows


# ---- the pipeline stages ---------------------------------------------------------------------------------------------


PREFIXES = "prefixes"  # tag of the sub-directories a split INPUT hands to other workers
NONEMPTY = "nonempty"  # tag of the input positions that yielded something (an image or a failure row)


class ExpandInputs(beam.DoFn):
    """(index, spec) -> ImageRef and failure rows, streamed, and the ``Prefix``es of a split directory (listed by
    ``ListPrefix`` on other workers). A spec that cannot be listed is a failure row naming the INPUT; one that
    yields nothing at all (an empty folder, a glob without matches) is found by ``ReportEmptyInputs``."""

    def __init__(self) -> None:
        self.listed = Metrics.counter("ldot", "listed")
        self.failed = Metrics.counter("ldot", "failed_list")

    def process(self, element: tuple[int, str]) -> Iterator[Any]:
        index, spec = element
        yield from _stream(index, spec, lambda: split_input(spec, index), self.listed, self.failed)


class ListPrefix(beam.DoFn):
    """Prefix -> the ImageRefs and failure rows below it."""

    def __init__(self) -> None:
        self.listed = Metrics.counter("ldot", "listed")
        self.failed = Metrics.counter("ldot", "failed_list")

    def process(self, prefix: Prefix) -> Iterator[Any]:
        yield from _stream(prefix.index, prefix.directory, lambda: list_prefix(prefix), self.listed, self.failed)


def _stream(index: int, spec: str, items: Callable[[], Iterator[Listed | Prefix]], listed: Any,
            failed: Any) -> Iterator[Any]:
    """The tagged outputs of one listing element; a ``NONEMPTY`` marker once it yielded anything."""
    count = 0
    try:
        for item in items():
            count += 1
            if isinstance(item, ImageRef):
                listed.inc()
                yield item
            elif isinstance(item, Prefix):
                yield beam.pvalue.TaggedOutput(PREFIXES, item)
                count -= 1  # a sub-directory says nothing yet about whether the INPUT holds images
            else:
                failed.inc()
                yield beam.pvalue.TaggedOutput(FAILED, item)
    except Exception as e:  # a bad manifest or an unreachable bucket
        count += 1
        failed.inc()
        kind = e.kind if isinstance(e, ListError) else os_error_kind(e) if isinstance(e, OSError) else "list_error"
        yield beam.pvalue.TaggedOutput(FAILED, _failed(spec, spec, kind, f"{type(e).__name__}: {e}"))
    if count:
        yield beam.pvalue.TaggedOutput(NONEMPTY, index)


class ReportEmptyInputs(beam.DoFn):
    """(index, {"spec": [spec], "nonempty": [...]}) -> a ``no_images`` failure row for an INPUT nothing came of."""

    def process(self, element: tuple[int, dict[str, Iterable[Any]]]) -> Iterator[dict[str, Any]]:
        _, groups = element
        if next(iter(groups["nonempty"]), None) is None:
            for spec in groups["spec"]:
                Metrics.counter("ldot", "failed_list").inc()
                yield _failed(spec, spec, "no_images", f"{spec}: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                                                       "in this INPUT")


class KeepFirstPerId(beam.DoFn):
    """Of the inputs sharing an image_id, the first in (input position, path) order wins; the rest fail."""

    def __init__(self) -> None:
        self.duplicates = Metrics.counter("ldot", "failed_duplicate_id")

    def process(self, element: tuple[str, Iterable[ImageRef]]) -> Iterator[Any]:
        _, refs = element
        first = min(refs, key=lambda r: r.order)  # GroupByKey values can be iterated again, not sorted in memory
        yield first
        for ref in refs:
            if ref.order == first.order:  # orders are unique: (input position, path or row number)
                continue
            self.duplicates.inc()
            message = f"image_id already taken by {first.uri}"
            yield beam.pvalue.TaggedOutput(FAILED, failure(ref.image_id, ref.uri, "list", "duplicate_id", message))


class ListImages(beam.PTransform):
    """INPUT specs -> one ImageRef per distinct image_id (main) and failure rows (``failed``)."""

    def __init__(self, inputs: list[str]) -> None:
        super().__init__()
        self.inputs = inputs

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        given = [(i, transportable(spec)) for i, spec in enumerate(self.inputs)
                 if not is_source(spec)]  # WebDataset shards, inline-bytes Parquet: read by transforms.sources
        specs = pbegin | "Specs" >> beam.Create(given)
        listed = specs | "Expand" >> beam.ParDo(ExpandInputs()).with_outputs(FAILED, PREFIXES, NONEMPTY, main="refs")
        below = (listed[PREFIXES]
                 | "SpreadPrefixes" >> beam.Reshuffle()
                 | "ListPrefixes" >> beam.ParDo(ListPrefix()).with_outputs(FAILED, NONEMPTY, main="refs"))
        nonempty = ((listed[NONEMPTY], below[NONEMPTY])
                    | "AllNonEmpty" >> beam.Flatten()
                    | "Distinct" >> beam.Distinct()
                    | "NonEmptyByIndex" >> beam.Map(lambda i: (i, True)))
        empty = ({"spec": specs, "nonempty": nonempty}
                 | "JoinNonEmpty" >> beam.CoGroupByKey()
                 | "EmptyInputs" >> beam.ParDo(ReportEmptyInputs()))
        refs = (listed.refs, below.refs) | "AllRefs" >> beam.Flatten()
        unique = (refs
                  | "ById" >> beam.Map(lambda r: (r.image_id, r))
                  | "Group" >> beam.GroupByKey()
                  | "KeepFirst" >> beam.ParDo(KeepFirstPerId()).with_outputs(FAILED, main="refs"))
        failed = (listed[FAILED], below[FAILED], empty, unique[FAILED]) | "ListFailures" >> beam.Flatten()
        return {"refs": unique.refs, FAILED: failed}
