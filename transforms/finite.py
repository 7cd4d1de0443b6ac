"""The last check before an embedding becomes a row: a vector with a NaN or Inf is a failure row, never an index
entry (fp16 overflow, or weights gone bad on one worker, would otherwise "embed" images as NaN with exit 0)."""

from __future__ import annotations

import numpy as np

NON_FINITE_EMBEDDING = "non_finite_embedding"  # the failure row's ``error``


def non_finite_message(vector: np.ndarray) -> str | None:
    """None for a finite vector; else what is wrong with it (the failure row's ``message``)."""
    values = np.asarray(vector)
    finite = np.isfinite(values)
    if finite.all():
        return None
    nan = int(np.isnan(values).sum())
    return f"the embedding holds {nan} NaN and {int((~finite).sum()) - nan} infinite values of {values.size}"
