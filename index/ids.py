"""Stable FAISS ids and shard assignment from ``image_id``.

``faiss_id(image_id)`` is the first 8 bytes of a keyed BLAKE2b digest of the UTF-8 ``image_id``, masked to 63 bits
(non-negative, so never FAISS's "no result" ``-1``). It depends on nothing but the string, so a nightly rebuild keeps
every id, and shards can be built independently.

``shard_of(image_id, n) = faiss_id(image_id) % n``: stable, uniform, and it puts every row that could collide
(same id) into the same shard, so collisions and duplicate ``image_id`` rows are detected shard by shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from index.errors import DuplicateImageIdError, IdCollisionError

ID_MASK = (1 << 63) - 1
_PERSON = b"ldot-faiss-id"


def faiss_id(image_id: str) -> int:
    """Stable 63-bit id of an ``image_id`` (same value on every machine, Python version and run)."""
    if not isinstance(image_id, str):
        raise TypeError(f"image_id must be a str, got {type(image_id).__name__}")
    digest = hashlib.blake2b(image_id.encode("utf-8"), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") & ID_MASK


def faiss_ids(image_ids: Iterable[str]) -> np.ndarray:
    """``faiss_id`` of each, as int64."""
    return np.fromiter((faiss_id(s) for s in image_ids), dtype=np.int64)


def shard_of(image_id: str, n_shards: int) -> int:
    """Shard of an ``image_id`` among ``n_shards`` (stable hash mod N)."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    return faiss_id(image_id) % n_shards


def shards_of_ids(ids: np.ndarray, n_shards: int) -> np.ndarray:
    """Vectorised ``shard_of`` from already computed FAISS ids."""
    return (np.asarray(ids, dtype=np.int64) % np.int64(n_shards)).astype(np.int64)


def check_unique(ids: np.ndarray, image_ids: Sequence[str], max_examples: int = 5) -> None:
    """Raise if an id repeats: ``DuplicateImageIdError`` (same ``image_id`` twice) or ``IdCollisionError``
    (two different ``image_id`` values with one hash). Examples are named in the message."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) != len(image_ids):
        raise ValueError(f"{len(ids)} ids for {len(image_ids)} image_ids")
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    dup = np.nonzero(sorted_ids[1:] == sorted_ids[:-1])[0]
    if len(dup) == 0:
        return
    collisions: list[tuple[int, str, str]] = []
    duplicates: list[str] = []
    for j in dup:
        a, b = image_ids[int(order[j])], image_ids[int(order[j + 1])]
        if a == b:
            duplicates.append(a)
        else:
            collisions.append((int(sorted_ids[j]), a, b))
    if collisions:
        shown = "; ".join(f"{x!r} and {y!r} -> id {i}" for i, x, y in collisions[:max_examples])
        raise IdCollisionError(f"{len(collisions)} FAISS id collision(s) between different image_ids: {shown}. "
                               "Rename one of each pair (ids are 63-bit hashes of image_id).")
    shown = ", ".join(repr(s) for s in sorted(set(duplicates))[:max_examples])
    raise DuplicateImageIdError(f"{len(duplicates)} duplicate row(s) for image_id(s) {shown}: every image_id must "
                                "appear once in the embeddings of one build.")
