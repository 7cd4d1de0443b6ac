"""The size of a LightningDOT tower pair, read from a JSON file.

Accepts our own key names and the BERT/UNITER config names (``num_hidden_layers`` ...) so that a user can
point at the config JSON that came with a checkpoint. Unknown keys are an error, not a silent default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from core.errors import UsageError

# Shipped as package data, so an installed wheel finds them too; ``load("tiny")`` names one by its stem.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
BASE_CONFIG = CONFIG_DIR / "base.json"
TINY_CONFIG = CONFIG_DIR / "tiny.json"

_ALIASES = {
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "img_dim": "feature_dim",
}
# Training-only or fixed-by-design keys found in BERT/UNITER configs: accepted and ignored.
_IGNORED = {
    "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "model_type",
    "architectures", "pad_token_id", "output_hidden_states", "output_attentions", "_name_or_path",
    "torch_dtype", "transformers_version", "position_embedding_type", "use_cache", "classifier_dropout",
    "gradient_checkpointing",
}


def config_path(config: str | Path) -> str:
    """A path or URL as given, or the shipped config of that name (``base``, ``tiny``)."""
    text = str(config)
    named = CONFIG_DIR / f"{text}.json"
    return str(named) if "/" not in text and not text.endswith(".json") and named.is_file() else text


class ConfigError(UsageError):
    """A config file or value that does not describe a LightningDOT model."""


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of both towers (they share it in the published model) and of the projection head."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 28996
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    feature_dim: int = 2048
    box_dim: int = 7
    project_dim: int = 768

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.hidden_act != "gelu":
            raise ConfigError(f"hidden_act must be 'gelu' (erf GELU, as in BERT), got {self.hidden_act!r}")
        if self.type_vocab_size < 2:
            raise ConfigError("type_vocab_size must be >= 2: regions use token type 1")
        if self.box_dim != 7:
            raise ConfigError(f"box_dim must be 7 (6-d box + area), got {self.box_dim}")
        for name in ("hidden_size", "num_layers", "intermediate_size", "vocab_size", "max_position_embeddings",
                     "feature_dim", "project_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        unknown = []
        for key, value in data.items():
            name = _ALIASES.get(key, key)
            if name in known:
                values[name] = value
            elif key not in _IGNORED:
                unknown.append(key)
        if unknown:
            raise ConfigError(f"{source}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> EncoderConfig:
        with fsspec.open(str(path), "r") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def load(cls, config: str | Path | dict[str, Any] | EncoderConfig | None) -> EncoderConfig:
        """None means the published BERT-base size."""
        if config is None:
            return cls.from_json(BASE_CONFIG)
        if isinstance(config, EncoderConfig):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        return cls.from_json(config_path(config))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
