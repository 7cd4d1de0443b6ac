"""Length bucketing (order items by length, cut batches that pad only to their own longest item) and padding.

A batch of 10-box images then costs a 11-token sequence, not 101, and results come back in input order.
With a token budget, short items also travel in proportionally larger batches: every batch then holds about the
same number of tokens, so the GEMMs keep the row count (and the efficiency) of a full padded batch instead of
running 16 x 11 rows for the short images. bench/encoders.py measures what that buys against the FLOP ratio.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def length_buckets(lengths: np.ndarray, batch_size: int, max_tokens: int | None = None) -> Iterator[np.ndarray]:
    """Yield index arrays (into ``lengths``) of at most ``batch_size`` items of similar length; with ``max_tokens``,
    also at most ``max_tokens`` items x longest item per batch (an item longer than that goes alone)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    if max_tokens is None:
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]
        return
    start = 0
    while start < len(order):
        end = start + 1  # sorted ascending: the item at end - 1 is the batch's longest
        while end < len(order) and end - start < batch_size and (end - start + 1) * lengths[order[end]] <= max_tokens:
            end += 1
        yield order[start:end]
        start = end


def pad_regions(features: Sequence[np.ndarray], boxes: Sequence[np.ndarray], feature_dim: int,
                width: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One [N_i, F] and one [N_i, 6|7] array per image -> zero-padded [B, N, F], [B, N, 6|7] float32 and [B]
    counts; N = ``width``, by default the largest N_i."""
    if len(features) != len(boxes):
        raise ValueError(f"{len(features)} feature arrays but {len(boxes)} box arrays")
    counts = np.array([len(f) for f in features], dtype=np.int64)
    longest = int(counts.max()) if len(counts) else 0
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width {width} is less than the {longest} regions of the largest image")
    box_dim = np.asarray(boxes[0]).shape[-1] if len(boxes) else 6
    feats = np.zeros((len(features), width, feature_dim), dtype=np.float32)
    bxs = np.zeros((len(features), width, box_dim), dtype=np.float32)
    for i, (f, b) in enumerate(zip(features, boxes, strict=True)):
        if len(b) != len(f):
            raise ValueError(f"image {i}: {len(f)} feature rows but {len(b)} boxes")
        feats[i, : len(f)] = np.asarray(f, dtype=np.float32)
        bxs[i, : len(b)] = np.asarray(b, dtype=np.float32)
    return feats, bxs, counts
