"""Which torch device a model runs on: the one place that resolves ``auto``."""

from __future__ import annotations


def resolve_device(device: str | None) -> str:
    """``auto`` (or ``None``) picks CUDA when this process (a worker, on Dataflow) has a GPU, else the CPU."""
    if device not in (None, "auto"):
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
