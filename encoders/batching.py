"""Length bucketing: order items by length and cut batches that pad only to their own longest item.

A batch of 10-box images then costs a 11-token sequence, not 101, and results come back in input order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def length_buckets(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Yield index arrays (into ``lengths``) of at most ``batch_size`` items of similar length."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
