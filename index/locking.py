"""``FileLock``: an exclusive ``fcntl.flock`` on a local file, the one lock primitive of the project.

The kernel drops an flock when its holder dies (kill -9 included), so such a lock is never stale; and flock locks
belong to an open file, so two threads of one process exclude each other as two processes do. The file itself is
never deleted (deleting an flock file races with the next holder). On NFS, Linux maps flock onto NFS locks.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any

POLL_S = 0.02  # flock has no timeout of its own; polling LOCK_NB is what works in any thread (SIGALRM does not)


class FileLock:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, timeout_s: float = 0.0) -> bool:
        """Take the lock, waiting up to ``timeout_s`` (0: do not wait); False when someone else holds it."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited across exec (PEP 446)
        give_up = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= give_up:
                    os.close(fd)
                    return False
                time.sleep(POLL_S)
                continue
            self.fd = fd
            return True

    def write_info(self, info: dict[str, Any]) -> None:
        """Record who holds the lock (for the message of the next one who finds it held)."""
        assert self.fd is not None, "write_info needs the lock"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(self.fd)

    def read_info(self) -> dict[str, Any]:
        try:
            with open(self.path) as f:
                info = json.loads(f.read() or "{}")
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
