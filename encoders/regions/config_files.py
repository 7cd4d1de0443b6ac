"""The detector configs that ship with the package (package data), found by name or given as a path."""

from __future__ import annotations

from pathlib import Path

from core.errors import UsageError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "butd_r101_c4.yaml"  # the published bottom-up-attention R101-C4 model
TINY_CONFIG = CONFIG_DIR / "tiny.yaml"  # a few-layer model for tests and the demo (random weights)


class DetectorConfigError(UsageError):
    """A detector config that cannot be read: missing, not YAML, an unsafe tag, or an unknown key."""


def config_path(config: str | Path | None) -> str:
    """``None`` = the published model; a shipped config's stem (``tiny``) = that file; else the path as given."""
    if config is None:
        return str(DEFAULT_CONFIG)
    text = str(config)
    named = CONFIG_DIR / f"{text}.yaml"
    return str(named) if "/" not in text and not text.endswith((".yaml", ".yml")) and named.is_file() else text
