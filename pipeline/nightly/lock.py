"""The run lock: one nightly run at a time per work directory.

An flock (``index.locking.FileLock``): a run that dies, kill -9 included, leaves no stale lock, whatever the lock
file says about its last holder (a dead pid, another host). A holder that is alive but stuck is ended by its own
deadline (``NightlyConfig.deadline``); the message of a run that finds the lock held says when that is past.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from core.errors import LockHeldError
from index.locking import FileLock


class LockHeld(LockHeldError):
    """Another run holds the lock: this one exits at once (exit 75) without touching anything."""


class RunLock:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = FileLock(path)

    def acquire(self, info: dict[str, Any]) -> None:
        """Take the lock or raise ``LockHeld`` naming the holder; ``info`` (pid, host, run, started, deadline_at)
        is written for the next one who finds it held."""
        if not self._lock.acquire(0.0):
            raise LockHeld(f"another nightly run holds the lock {self.path} ({self.holder()}); exiting without "
                           "doing anything")
        self._lock.write_info(info)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def holder(self) -> str:
        info = self._lock.read_info()
        if not info:
            return "holder unknown"
        text = f"pid {info.get('pid')} on {info.get('host')}, run {info.get('run')}, since {info.get('started')}"
        try:
            past = dt.datetime.fromisoformat(str(info["deadline_at"])) < dt.datetime.now(dt.UTC)
        except (KeyError, ValueError, TypeError):
            past = False
        if past:
            text += (f"; it is past its deadline {info['deadline_at']} and should have stopped itself: it is stuck "
                     "or was started by an older ldot; end that process")
        return text
