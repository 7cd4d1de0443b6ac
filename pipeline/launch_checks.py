"""What a command checks before it submits a job, so a distributed run cannot quietly look in the wrong place.

Workers run in other processes with another working directory (Flink, Dataflow, Beam's portable job service), so
the commands make every local path absolute at the CLI boundary (``core.paths.absolute``) and then, here:

- every local INPUT must exist (a missing one is reported now, not as an empty run later);
- the paths the *workers* open (inputs, outputs, checkpoint, detector weights, work dir, index root) must be
  reachable by them: refused on Dataflow, whose workers never see this machine's disk; a warning on other
  non-local runners, whose workers see them only on a filesystem they share at the same path;
- workers that extract regions need detectron2, which ``setup.py`` cannot install: a warning when the flags give
  them no way to get it.

Configs are read by the launcher and shipped to the workers as text, so they may stay local on any runner.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import fsspec
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, SetupOptions, WorkerOptions

from core.errors import UsageError
from core.paths import absolute, is_url
from pipeline.beam_args import runner_kind, runner_name

log = logging.getLogger(__name__)

# Environments whose workers run an interpreter the user set up (and may have given detectron2).
_USER_INTERPRETER_ENVIRONMENTS = ("PROCESS", "EXTERNAL", "LOOPBACK", "beam:env:harness_subprocess_python:v1")


# Settings of ``ldot index`` and ``ldot nightly`` that name files the workers open, and the configs (read by the
# launcher: a path, or the name of a shipped config).
MODEL_PATHS = ("checkpoint", "detector_weights", "regions")
CONFIGS = ("encoder_config", "detector_config")


def is_config_name(key: str, value: str) -> bool:
    """``tiny``, ``base``, ``butd_r101_c4``...: the name of a config that ships with the package, not a path."""
    from encoders.config import config_path as encoder_config_path
    from encoders.regions.config_files import config_path as detector_config_path

    return {"encoder_config": encoder_config_path, "detector_config": detector_config_path}[key](value) != value


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def absolute_model_paths(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with checkpoint, detector weights and regions absolute, and configs absolute unless named."""
    out = dict(values)
    for key in (*MODEL_PATHS, *CONFIGS):
        if out.get(key) is not None and not (key in CONFIGS and is_config_name(key, out[key])):
            out[key] = absolute(out[key])
    return out


def check_embed_launch(beam_args: list[str], inputs: Sequence[str], outputs: Mapping[str, str],
                       values: Mapping[str, Any]) -> None:
    """Before an embed job is submitted (``ldot index``, ``ldot nightly``): inputs and model files exist, the
    workers can reach them and ``outputs`` (flag -> path), and extraction has detectron2 on the workers."""
    require_existing("INPUT", inputs)
    for key in MODEL_PATHS:
        require_existing(_flag(key), [values.get(key)])
    check_worker_paths(beam_args, {"INPUT": list(inputs), **outputs,
                                   **{_flag(key): values.get(key) for key in MODEL_PATHS}})
    warn_if_workers_lack_detectron2(beam_args, extraction=values.get("regions") is None)


def _local(paths: Iterable[str | None]) -> list[str]:
    return [p for p in paths if p and not is_url(p)]


def require_existing(flag: str, paths: Sequence[str | None]) -> None:
    """Local paths (or globs) that name nothing are a usage error that names them, before anything runs."""
    local_fs = fsspec.filesystem("file")
    missing = []
    for path in _local(paths):
        if os.path.lexists(path):
            continue
        if any(c in path for c in "*?[") and local_fs.glob(path):  # a glob is listed the way the pipeline lists it
            continue
        missing.append(path)
    if missing:
        raise UsageError(f"{flag} not found: {', '.join(missing)} (local paths are taken relative to the current "
                         "directory)")


def check_worker_paths(beam_args: list[str], paths: Mapping[str, str | Sequence[str] | None]) -> None:
    """``paths``: flag -> the path(s) the workers open. Dataflow: local ones refused; other remote runners: a
    warning that the workers must share this filesystem."""
    kind = runner_kind(beam_args)
    if kind == "local":
        return
    local = {flag: found for flag, value in paths.items()
             if (found := _local([value] if isinstance(value, str) or value is None else value))}
    if not local:
        return
    named = "; ".join(f"{flag} {', '.join(found)}" for flag, found in local.items())
    if kind == "dataflow":
        raise UsageError(f"DataflowRunner workers run on Google's machines and cannot read or write this machine's "
                         f"disk: give URLs they can reach (gs://...) instead of the local path(s) {named}")
    log.warning("%s workers run in other processes, maybe on other machines: the local path(s) %s must be on a "
                "filesystem every worker shares, at the same path", runner_name(beam_args), named)


def workers_get_detectron2(beam_args: list[str]) -> bool:
    """Whether the flags give non-local workers a way to import detectron2: a container image (Dataflow:
    ``--sdk_container_image``; portable runners such as Flink: ``--environment_config`` of a DOCKER environment,
    which ignore the former), a detectron2 package (``--extra_package`` wheel from ``scripts/install_detectron2.py
    --wheel-dir``, or a requirements file that names one), or an environment that runs an interpreter the user set
    up."""
    options = PipelineOptions(list(beam_args))
    worker, setup, portable = (options.view_as(WorkerOptions), options.view_as(SetupOptions),
                               options.view_as(PortableOptions))
    if runner_kind(beam_args) == "dataflow":
        if worker.sdk_container_image or worker.worker_harness_container_image:
            return True
    else:
        env = portable.environment_type or "DOCKER"  # the portable runners' default
        if env in _USER_INTERPRETER_ENVIRONMENTS:
            return True
        image = portable.environment_config or any(o.startswith("docker_container_image=")
                                                   for o in portable.environment_options or [])
        if env == "DOCKER" and image:
            return True
    if any("detectron2" in os.path.basename(p) for p in setup.extra_packages or []):
        return True
    requirements = setup.requirements_file
    if requirements and os.path.isfile(requirements):
        with open(requirements, encoding="utf-8") as f:
            return "detectron2" in f.read()
    return False


def warn_if_workers_lack_detectron2(beam_args: list[str], extraction: bool) -> None:
    if not extraction or runner_kind(beam_args) == "local" or workers_get_detectron2(beam_args):
        return
    image = ("--sdk_container_image IMAGE" if runner_kind(beam_args) == "dataflow"
             else "--environment_type DOCKER --environment_config IMAGE")
    log.warning("%s workers extract regions with detectron2, which setup.py cannot install: give them "
                "--extra_package DIR/pb1_detectron2-0.6-py3-none-any.whl (built by scripts/install_detectron2.py "
                "--wheel-dir DIR) or %s (built from the Dockerfile), or the job fails in its Extract stage",
                runner_name(beam_args), image)
