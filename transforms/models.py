"""What a worker needs to load a model: small, picklable specs.

Specs carry config *contents* (not local paths) and weights as fsspec URLs, so they work unchanged on Dataflow
or Flink workers, which cannot see the launcher's disk. Beam's ``RunInference`` (see ``transforms.inference``)
decides how often a spec is loaded: once per worker process, or once per GPU for the whole machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.device import resolve_device
from core.threads import share_cpu_threads


@dataclass(frozen=True)
class EncoderSpec:
    """LightningDOT weights: a checkpoint URL, or ``None`` for explicit random weights (smoke runs only)."""

    config: tuple[tuple[str, Any], ...]
    checkpoint: str | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    cpu_processes: int | None = None  # worker processes sharing this machine's cores (``--workers N``)

    @property
    def feature_dim(self) -> int:
        """Region feature size the image tower takes (checked per record before a batch reaches the model)."""
        return int(dict(self.config)["feature_dim"])

    def load(self, device: str | None = None) -> Any:
        """The model on ``device`` (default: this spec's device, ``auto`` resolved in this process)."""
        from encoders.lightningdot import LightningDOT

        share_cpu_threads(self.cpu_processes)  # in the worker, before its first forward pass
        return LightningDOT.load(self.checkpoint, dict(self.config), random_weights=self.checkpoint is None,
                                 seed=self.seed, device=device or self.device, dtype=self.dtype)


@dataclass(frozen=True)
class DetectorSpec:
    """The bottom-up-attention detector: its merged YAML config text, and weights (``None`` = damped random)."""

    config_text: str
    config_name: str
    weights: str | None = None
    device: str = "auto"
    batch_size: int = 4
    cpu_processes: int | None = None  # worker processes sharing this machine's cores (``--workers N``)

    def load(self, device: str | None = None) -> Any:
        """The extractor on ``device`` (default: this spec's device), built from the config text itself."""
        from encoders.regions import RegionExtractor

        share_cpu_threads(self.cpu_processes)
        return RegionExtractor.from_config_text(self.config_text, weights=self.weights,
                                                device=resolve_device(device or self.device),
                                                batch_size=self.batch_size)
