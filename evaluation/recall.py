"""Recall@K exactly as LightningDOT (and UNITER's ``itm_eval``) reports it.

- text → image: one query per caption over the image gallery; a hit when the caption's own image is in the top k;
  R@k = hits / number of captions (an image with five captions counts five times).
- image → text: one query per image over all captions; a hit when *any* of its captions is in the top k;
  R@k = hits / number of images (each image counts once).

Exact search computes the full rank of the ground truth for every query, by chunked matmul (at most
``max_bytes`` of scores in memory at once), so recall at every k comes out of one pass. Ties are broken by
position in the gallery (lower first: the gallery is sorted by ``image_id``, captions are in file order), the
same for every run; queries whose ground-truth score ties another candidate are counted in ``ties``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_BYTES = 256 << 20


@dataclass
class Ranks:
    """0-based rank of the (best) ground truth for each query; ``ties``: queries whose ground truth tied."""

    ranks: np.ndarray  # [Q] int64
    ties: int = 0

    def recall(self, k: int) -> float:
        return float((self.ranks < k).mean()) if len(self.ranks) else float("nan")

    def recall_at(self, ks: Sequence[int]) -> dict[int, float]:
        return {int(k): self.recall(int(k)) for k in ks}

    def median_rank(self) -> float:
        """1-based median rank (MedR), as retrieval papers report it."""
        return float(np.median(self.ranks + 1)) if len(self.ranks) else float("nan")

    def mean_rank(self) -> float:
        return float(np.mean(self.ranks + 1)) if len(self.ranks) else float("nan")


def _rows_per_chunk(n_cols: int, max_bytes: int) -> int:
    # scores (4 bytes) + two boolean masks (2 bytes) per cell, with room for temporaries
    return max(1, int(max_bytes // max(1, n_cols * 8)))


def text_to_image_ranks(text: np.ndarray, images: np.ndarray, caption_image: np.ndarray,
                        max_bytes: int = DEFAULT_MAX_BYTES) -> Ranks:
    """Rank of each caption's own image (``caption_image[c]`` = gallery row) among all gallery images."""
    text, images, gt = _check(text, images, caption_image)
    n = len(images)
    cols = np.arange(n)
    ranks = np.empty(len(text), dtype=np.int64)
    ties = 0
    step = _rows_per_chunk(n, max_bytes)
    for a in range(0, len(text), step):
        s = text[a : a + step] @ images.T  # [q, N]
        g = gt[a : a + step]
        own = s[np.arange(len(g)), g][:, None]
        equal = s == own
        ranks[a : a + step] = (s > own).sum(1) + (equal & (cols[None, :] < g[:, None])).sum(1)
        ties += int((equal.sum(1) > 1).sum())
    return Ranks(ranks, ties)


def image_to_text_ranks(images: np.ndarray, text: np.ndarray, caption_image: np.ndarray,
                        max_bytes: int = DEFAULT_MAX_BYTES) -> Ranks:
    """Rank of the best-ranked own caption of each image among all captions.

    An image's own captions are those ``c`` with ``caption_image[c] == row``; an image without captions gets
    rank ``len(text)`` (never a hit) and should not be passed as a query.
    """
    text, images, owner = _check(text, images, caption_image)
    c = len(text)
    cols = np.arange(c)
    ranks = np.empty(len(images), dtype=np.int64)
    ties = 0
    step = _rows_per_chunk(c, max_bytes)
    for a in range(0, len(images), step):
        s = images[a : a + step] @ text.T  # [q, C]
        rows = np.arange(a, a + len(s))
        mine = owner[None, :] == rows[:, None]
        best = np.where(mine, s, -np.inf).max(1, initial=-np.inf)[:, None]  # best own score
        at_best = mine & (s == best)
        first = np.where(at_best.any(1), at_best.argmax(1), c)[:, None]  # lowest-index own caption at best
        equal = s == best
        r = (s > best).sum(1) + (equal & (cols[None, :] < first)).sum(1)
        r[~mine.any(1)] = c
        ranks[a : a + step] = r
        ties += int((equal & ~mine).any(1).sum())  # an own caption ties a foreign one
    return Ranks(ranks, ties)


def hits_from_topk(retrieved: Sequence[Sequence[str]], expected: Sequence[str], ks: Sequence[int]) -> dict[int, float]:
    """Text → image recall from an ANN top-k list per query (image ids, best first)."""
    if len(retrieved) != len(expected):
        raise ValueError(f"{len(retrieved)} result lists for {len(expected)} queries")
    first = np.full(len(expected), np.iinfo(np.int64).max, dtype=np.int64)
    for q, (ids, want) in enumerate(zip(retrieved, expected, strict=True)):
        for r, image_id in enumerate(ids):
            if image_id == want:
                first[q] = r
                break
    return {int(k): float((first < k).mean()) if len(first) else float("nan") for k in ks}


def _check(text: np.ndarray, images: np.ndarray, caption_image: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 contiguous text and images of one width, and each caption's image row inside the gallery."""
    text = np.ascontiguousarray(text, dtype=np.float32)
    images = np.ascontiguousarray(images, dtype=np.float32)
    if text.ndim != 2 or images.ndim != 2 or text.shape[1] != images.shape[1]:
        raise ValueError(f"text {text.shape} and images {images.shape} must be [*, D] with the same D")
    owner = np.asarray(caption_image, dtype=np.int64)
    if owner.shape != (len(text),):
        raise ValueError(f"caption_image has shape {owner.shape}, expected ({len(text)},)")
    if len(owner) and (owner.min() < 0 or owner.max() >= len(images)):
        raise ValueError("caption_image points outside the gallery")
    return text, images, owner
