"""``NightlyConfig``: the nightly job's settings (a YAML file and flags, one flat set of keys) and their checks.

The index-build keys (shards, factory, max_memory, nprobe, seed, selfcheck_queries, min_recall) take their
defaults from ``index.settings.BuildSettings`` and become one through ``build_settings()``, so ``ldot nightly``
and ``ldot build-index`` build the same index from the same values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, ClassVar

from core.errors import UsageError
from core.paths import is_url
from index.errors import SettingsError
from index.settings import BuildSettings

LOCK_NAME = "nightly.lock"
DEFAULT_DEADLINE_S = 23 * 3600.0  # a nightly run still going after 23 h would collide with the next night's


class ConfigError(UsageError):
    """A setting is unknown, missing or out of range (exit 2): the message names it."""


@dataclasses.dataclass
class NightlyConfig:
    inputs: list[str]
    work_dir: str
    index_root: str
    checkpoint: str | None = None
    encoder_config: str | None = None
    detector_config: str | None = None
    detector_weights: str | None = None
    regions: str | None = None
    random_weights: bool = False
    device: str = "auto"
    max_failure_rate: float | None = None
    max_vanished_rate: float | None = 0.1   # share of the base snapshot that may be missing from a run (None: off)
    min_recall: float | None = BuildSettings.min_recall
    keep: int = 3
    shards: int | None = BuildSettings.shards
    factory: str = BuildSettings.factory
    max_memory: str | None = BuildSettings.max_memory
    nprobe: int | None = BuildSettings.nprobe
    seed: int = BuildSettings.seed
    selfcheck_queries: int = BuildSettings.selfcheck_queries
    workers: int | None = None
    lock_file: str | None = None
    report: str | None = None
    force_build: bool = False
    deadline: float | None = DEFAULT_DEADLINE_S  # seconds: past it the run stops itself (None: no deadline)
    verify_content: bool = False
    beam_args: list[str] = dataclasses.field(default_factory=list)

    PATH_KEYS: ClassVar[tuple[str, ...]] = ("work_dir", "index_root", "checkpoint", "encoder_config",
                                            "detector_config", "detector_weights", "regions", "lock_file", "report")
    BUILD_KEYS: ClassVar[tuple[str, ...]] = ("shards", "factory", "max_memory", "nprobe", "seed", "selfcheck_queries",
                                             "min_recall")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def normalize(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Keys with ``-`` or ``_`` -> field names; unknown keys are an error (a typo must not pass silently)."""
        known = set(cls.keys())
        clean: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
            if value is not None:  # null in a file: the default
                clean[name] = value
        if isinstance(clean.get("inputs"), str):
            clean["inputs"] = [clean["inputs"]]
        if isinstance(clean.get("beam_args"), str):
            clean["beam_args"] = clean["beam_args"].split()
        return clean

    @classmethod
    def rebase_paths(cls, values: dict[str, Any], base_dir: str) -> dict[str, Any]:
        """Relative local paths -> relative to ``base_dir`` (a config file's folder: cron runs from $HOME)."""
        def rebase(p: Any) -> Any:
            if p is None or is_url(str(p)):
                return p
            p = os.path.expanduser(str(p).removeprefix("file://"))
            return p if os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))

        out = dict(values)
        for key in cls.PATH_KEYS:
            if key in out:
                out[key] = rebase(out[key])
        if "inputs" in out:
            out["inputs"] = [rebase(p) for p in out["inputs"]]
        return out

    @classmethod
    def from_mapping(cls, values: dict[str, Any], base_dir: str | None = None) -> NightlyConfig:
        clean = cls.normalize(values)
        if base_dir is not None:
            clean = cls.rebase_paths(clean, base_dir)
        missing = [k for k in ("inputs", "work_dir", "index_root") if not clean.get(k) and not
                   (k == "inputs" and clean.get("regions"))]
        if missing:
            raise ConfigError(f"missing setting(s): {', '.join(missing)}")
        clean.setdefault("inputs", [])
        cfg = cls(**clean)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not self.inputs and not self.regions:
            raise ConfigError("no inputs: give INPUT paths (or 'inputs:' in the config file) or --regions")
        if not self.work_dir or not self.index_root:
            raise ConfigError("give --work-dir and --index-root")
        if self.keep < 1:
            raise ConfigError(f"keep must be >= 1, got {self.keep}")
        for name in ("max_failure_rate", "max_vanished_rate"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and 0 <= value <= 1):
                raise ConfigError(f"{name} must be a number within 0..1, got {value!r}")
        if self.deadline is not None and not (_is_number(self.deadline) and self.deadline > 0):
            raise ConfigError(f"deadline must be a number of seconds > 0, got {self.deadline!r}")
        if self.checkpoint is None and not self.random_weights:
            raise ConfigError("no LightningDOT weights: set checkpoint (or random_weights for a smoke run)")
        if self.regions is None and self.detector_weights is None and not self.random_weights:
            raise ConfigError("no detector weights: set detector_weights, regions, or random_weights")
        self.build_settings()  # the index settings are checked before anything runs, not after the embedding

    def build_settings(self) -> BuildSettings:
        """The index build of a run. The build never publishes and keeps no versions itself: the run publishes
        after its guards, and retention runs under its lock with what the run still needs protected."""
        try:
            return BuildSettings(**{key: getattr(self, key) for key in self.BUILD_KEYS}, publish=False,
                                 keep_versions=None)
        except SettingsError as e:
            raise ConfigError(str(e)) from e

    def lock_path(self) -> str:
        if self.lock_file:
            return self.lock_file
        if not is_url(self.work_dir):
            return os.path.join(self.work_dir.removeprefix("file://"), LOCK_NAME)
        # an object-store work dir cannot hold an flock: use a local file named after it (one machine runs cron)
        digest = hashlib.sha256(self.work_dir.encode()).hexdigest()[:16]
        return os.path.join(os.path.expanduser("~"), ".cache", "ldot", f"nightly-{digest}.lock")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def load_config_file(path: str) -> dict[str, Any]:
    """The raw mapping of a YAML settings file (``NightlyConfig.normalize`` checks its keys)."""
    import yaml

    text = Path(path).read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data
