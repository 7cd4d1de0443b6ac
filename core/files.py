"""Files and names that come from outside: ids and uris any name survives, and reads that cannot hang or run away.

Names on disk are bytes, not text: a file name that is not UTF-8 reaches Python as lone surrogates
(``surrogateescape``), which no Beam coder, Parquet column or terminal holds. Such names get a printable id and
a percent-encoded ``file://`` uri that still opens the very same file. A path that is not a regular file (a FIFO,
``/dev/zero``, a socket) is refused from its ``stat`` before it is opened, and every read stops at a byte limit
and a deadline whatever the file's size claims.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
import time
import unicodedata
import urllib.parse
from typing import BinaryIO

from core.paths import is_url

CHUNK_BYTES = 1 << 20
_ESCAPED_CATEGORIES = {"Cc", "Cs", "Cf", "Zl", "Zp"}  # controls, lone surrogates, format (bidi), line separators


class ReadError(OSError):
    """A file that was not (or not completely) read; ``kind`` is the failure row's ``error``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __str__(self) -> str:
        return str(self.args[0])


def printable_id(text: str) -> str:
    """``text`` with every byte that is not UTF-8 (a surrogate escape) and every control, format or line-separator
    character written as ``%XX``: an id that Beam's coders, Parquet and a terminal all show as it is. Other text,
    ``%`` included, is kept, so ids of ordinary names do not change (a rare clash with a literal ``%XX`` name is
    resolved like any duplicate id)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if 0xDC80 <= ord(ch) <= 0xDCFF:  # surrogateescape of the byte ord(ch) - 0xDC00
            out.append(f"%{ord(ch) - 0xDC00:02X}")
        elif unicodedata.category(ch) in _ESCAPED_CATEGORIES:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "".join(out)


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def local_uri(path: str) -> str:
    """The uri under which a worker reads a local file: the path itself, or (for a name that is not UTF-8) a
    percent-encoded ``file://`` URL of its bytes, which :func:`local_path` turns back into the same path."""
    if is_utf8(path):
        return path
    return "file://" + urllib.parse.quote(os.fsencode(path), safe="/")


def local_path(uri: str) -> str:
    """The local path of a plain path or ``file://`` uri. A ``file://`` uri is taken literally when that file
    exists, else percent-decoded (the form :func:`local_uri` writes for names that are not UTF-8)."""
    if not uri.startswith("file://"):
        return uri
    path = uri[len("file://"):]
    if "%" in path and not os.path.lexists(path):
        return os.fsdecode(urllib.parse.unquote_to_bytes(path))
    return path


def is_local(uri: str) -> bool:
    """A plain path or ``file://`` uri: opened with the OS, never through fsspec's URL chaining (``a::b.jpg``)."""
    return not is_url(uri)


def transportable(spec: str) -> str:
    """An INPUT as the workers get it: a local path made absolute here, in the launcher (a worker runs in
    another directory), and written as its ``file://`` uri when it is not UTF-8 (from the command line), which
    Beam's string coder could not carry and ``expand_input`` reads back as the same path."""
    if is_local(spec) and spec.strip():
        return local_uri(os.path.abspath(os.path.expanduser(local_path(spec))))
    return spec if is_utf8(spec) else printable_id(spec)


_KINDS = {errno.ENOENT: "not_found", errno.ENOTDIR: "not_found", errno.EACCES: "permission_denied",
          errno.EPERM: "permission_denied", errno.EISDIR: "is_a_directory", errno.ELOOP: "symlink_loop",
          errno.ENAMETOOLONG: "name_too_long"}


def os_error_kind(e: BaseException) -> str:
    """The failure kind of an error raised while listing or reading a file."""
    if isinstance(e, ReadError):
        return e.kind
    if isinstance(e, FileNotFoundError):
        return "not_found"
    if isinstance(e, PermissionError):
        return "permission_denied"
    if isinstance(e, IsADirectoryError):
        return "is_a_directory"
    if isinstance(e, OSError) and e.errno in _KINDS:
        return _KINDS[e.errno]
    return "read_error"


def describe_mode(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


def open_regular(path: str) -> BinaryIO:
    """Open a local regular file for reading, refusing anything else from its ``stat`` (symlinks followed) before
    any ``open``: a FIFO would block, a device read without end, and opening some devices does something. The
    open itself is non-blocking and re-checked with ``fstat`` (the name may have been swapped in between)."""
    shown = printable_id(path)
    try:
        before = os.stat(path)
    except OSError as e:
        raise ReadError(os_error_kind(e), f"{shown}: {e.strerror or e}") from e
    if stat.S_ISDIR(before.st_mode):
        raise ReadError("is_a_directory", f"{shown} is a directory")
    if not stat.S_ISREG(before.st_mode):
        raise ReadError("not_a_regular_file", f"{shown} is a {describe_mode(before.st_mode)}, not a regular file: "
                                              "not opened")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ReadError(os_error_kind(e), f"{shown}: {e.strerror or e}") from e
    after = os.fstat(fd)
    if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise ReadError("changed_while_read", f"{shown} was replaced between its stat and its open: not read")
    return os.fdopen(fd, "rb", buffering=0)


def read_at_most(f: BinaryIO, limit: int, deadline: float, name: str) -> bytes:
    """Read ``f`` to its end, but never more than ``limit`` bytes (one more is asked for, to tell "exactly the
    limit" from "over it") and never past ``deadline`` (``time.monotonic``): a file that grows while read, lies
    about its size or trickles in cannot run away. A single blocked read is bounded by the filesystem's own
    socket timeout; the deadline is checked between chunks."""
    chunks, total = [], 0
    while True:
        if time.monotonic() > deadline:
            raise ReadError("timeout", f"{name}: reading took longer than its deadline ({total} bytes read)")
        chunk = f.read(min(CHUNK_BYTES, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise ReadError("too_large", f"{name}: more than the {limit}-byte limit (stopped reading there)")


class LineTooLong(ValueError):
    pass


class BoundedLines:
    """The text lines of a binary stream, each at most ``limit`` bytes: a longer line raises ``LineTooLong`` once
    and is skipped, and the next ``next()`` goes on after it (a class, not a generator: a generator that raised is
    over, while ``csv.reader`` starts a new record after an error). The line at byte 0 loses a UTF-8 BOM; bytes
    that are not UTF-8 survive as surrogate escapes (a local path listed by ``find`` may hold them). ``number`` is
    the number of lines read, ``offset`` the byte offset where the last one starts; reading from ``start`` (where
    ``f`` stands), no line starting at or after ``end`` is read (a byte range of a file split over workers)."""

    def __init__(self, f: BinaryIO, limit: int, start: int = 0, end: int | None = None) -> None:
        self.f, self.limit, self.number, self.end = f, limit, 0, end
        self.offset = self.position = start  # where the last line read starts; where the next one does

    def __iter__(self) -> BoundedLines:
        return self

    def __next__(self) -> str:
        if self.end is not None and self.position >= self.end:
            raise StopIteration
        line = self.f.readline(self.limit + 1)
        if not line:
            raise StopIteration
        self.number += 1
        self.offset = self.position
        self.position += len(line)
        if len(line) > self.limit and not line.endswith(b"\n"):
            self.skip_line()
            raise LineTooLong(f"longer than {self.limit} bytes")
        if self.offset == 0:
            line = line.removeprefix(codecs.BOM_UTF8)
        return line.decode("utf-8", "surrogateescape")

    def skip_line(self) -> None:
        """Read on to the start of the next line, ``limit`` bytes at a time."""
        while rest := self.f.readline(self.limit):
            self.position += len(rest)
            if rest.endswith(b"\n"):
                return


def align_to_line(f: BinaryIO, start: int, limit: int) -> int:
    """Seek ``f`` to the first line that starts at or after byte ``start`` (the line running over ``start``
    belongs to the byte range before: Beam textio's rule) and return its offset; skipped ``limit`` bytes at a time."""
    if start == 0:
        f.seek(0)
        return 0
    f.seek(start - 1)
    if f.read(1) == b"\n":
        return start
    lines = BoundedLines(f, limit, start)
    lines.skip_line()
    return lines.position
