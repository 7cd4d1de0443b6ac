"""The run lock: one nightly run at a time per work directory."""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any

from core.errors import LockHeldError


class LockHeld(LockHeldError):
    """Another run holds the lock: this one exits at once (exit 75) without touching anything."""


class RunLock:
    """An exclusive ``fcntl.flock`` on a local file. The kernel drops it when the process dies (kill -9 included),
    so it is never stale; the file itself is never deleted (deleting an flock file races with the next holder)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, info: dict[str, Any]) -> None:
        """Take the lock or raise ``LockHeld`` naming the holder; ``info`` (pid, host, run) is written for the next
        one who finds it held."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited across exec (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(f"another nightly run holds the lock {self.path} ({self.holder()}); exiting without "
                           "doing anything") from None
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        os.fsync(fd)
        self.fd = fd

    def holder(self) -> str:
        try:
            with open(self.path) as f:
                info = json.loads(f.read() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info:
            return "holder unknown"
        return f"pid {info.get('pid')} on {info.get('host')}, run {info.get('run')}, since {info.get('started')}"

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
