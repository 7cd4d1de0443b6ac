"""What a worker needs to load a model: small, picklable specs, loaded once per worker process.

Specs carry config *contents* (not local paths) and weights as fsspec URLs, so they work unchanged on
Dataflow or Flink workers. ``load_shared`` loads one model per process and shares it across the DoFn threads
(Beam's ``shared.Shared``), as ``apache_beam.ml.inference`` does.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

from apache_beam.utils import shared

from core.device import resolve_device


@dataclass(frozen=True)
class EncoderSpec:
    """LightningDOT weights: a checkpoint URL, or ``None`` for explicit random weights (smoke runs only)."""

    config: tuple[tuple[str, Any], ...]
    checkpoint: str | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"

    def load(self) -> Any:
        from encoders.lightningdot import LightningDOT

        return LightningDOT.load(self.checkpoint, dict(self.config), random_weights=self.checkpoint is None,
                                 seed=self.seed, device=self.device, dtype=self.dtype)


@dataclass(frozen=True)
class DetectorSpec:
    """The bottom-up-attention detector: its YAML config text, and weights (``None`` = damped random)."""

    config_text: str
    config_name: str
    weights: str | None = None
    device: str = "auto"
    batch_size: int = 4

    def load(self) -> Any:
        from encoders.regions import RegionExtractor

        fd, path = tempfile.mkstemp(suffix=".yaml", prefix="ldot-detector-")
        with os.fdopen(fd, "w") as f:
            f.write(self.config_text)
        try:
            return RegionExtractor.from_config(path, weights=self.weights, device=resolve_device(self.device),
                                               batch_size=self.batch_size)
        finally:
            os.unlink(path)


class SharedModel:
    """A handle a DoFn keeps; ``get()`` returns the one model of this spec in this process."""

    def __init__(self, spec: EncoderSpec | DetectorSpec) -> None:
        self.spec = spec
        self._shared = shared.Shared()

    def get(self) -> Any:
        return self._shared.acquire(self.spec.load, tag=repr(self.spec))
