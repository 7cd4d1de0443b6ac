"""Handing freed memory back to the operating system between the stages of a build.

A build's stages (choice, training, shards) each allocate and free a few hundred MB in many blocks; glibc keeps
freed heap pages and Arrow's mimalloc pool keeps freed segments, so every stage would start from the previous
stage's high-water mark. Measured on a 20k x 384 auto build: resident 363 MB after training, 225 MB after
``release_freed``; 370 -> 271 MB after the shard pipeline.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed() -> None:
    """Return freed Arrow pool and C heap memory to the OS (glibc ``malloc_trim``; a no-op where it is absent)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
