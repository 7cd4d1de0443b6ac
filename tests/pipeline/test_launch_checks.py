"""What the commands check before they submit a job: runner kinds, absolute paths, missing inputs, paths the
workers cannot reach, and whether non-local workers get detectron2."""

from __future__ import annotations

import logging
import os

import pytest
from click.testing import CliRunner

from core.errors import UsageError
from jobs.cli import main as cli
from pipeline.beam_args import runner_kind, runs_in_process
from pipeline.launch_checks import (
    absolute_model_paths,
    check_worker_paths,
    require_existing,
    warn_if_workers_lack_detectron2,
    workers_get_detectron2,
)
from tests.helpers_pipeline import DEMO_IMAGES

DATAFLOW = ["--runner", "DataflowRunner", "--project", "p", "--region", "r", "--temp_location", "gs://b/tmp"]


@pytest.mark.parametrize(("flags", "kind"), [
    ([], "local"), (["--runner", "DirectRunner"], "local"), (["--runner=FnApiRunner"], "local"),
    (["--runner", "PrismRunner"], "local"), (["--runner", "InteractiveRunner"], "local"),
    (["--runner", "DataflowRunner"], "dataflow"), (["--runner=dataflow"], "dataflow"),
    (["--runner", "apache_beam.runners.dataflow.dataflow_runner.DataflowRunner"], "dataflow"),
    (["--runner", "TestDataflowRunner"], "dataflow"),
    (["--runner", "FlinkRunner"], "cluster"), (["--runner", "flink"], "cluster"),
    (["--runner", "PortableRunner"], "cluster"), (["--runner", "SparkRunner"], "cluster"),
])
def test_runner_kind(flags, kind):
    assert runner_kind(flags) == kind


def test_runs_in_process():
    assert runs_in_process([]) and runs_in_process(["--direct_running_mode=multi_threading"])
    assert not runs_in_process([], workers=2)
    assert not runs_in_process(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert not runs_in_process(["--runner", "PortableRunner"])


def test_paths_become_absolute_and_config_names_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = absolute_model_paths({"checkpoint": "models/ckpt.pt", "detector_weights": "gs://b/w.pkl", "regions": None,
                                "encoder_config": "tiny", "detector_config": "configs/det.yaml", "device": "cpu"})
    assert out == {"checkpoint": str(tmp_path / "models/ckpt.pt"), "detector_weights": "gs://b/w.pkl",
                   "regions": None, "encoder_config": "tiny", "detector_config": str(tmp_path / "configs/det.yaml"),
                   "device": "cpu"}
    # a name that ships with the package is a name only while no such file is meant: "tiny.json" is a path
    assert absolute_model_paths({"encoder_config": "tiny.json"})["encoder_config"] == str(tmp_path / "tiny.json")


def test_missing_inputs_are_named(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    require_existing("INPUT", [str(tmp_path / "a.jpg"), str(tmp_path / "*.jpg"), "gs://bucket/never-checked/"])
    with pytest.raises(UsageError, match=r"INPUT not found: .*/nope, .*/\*\.png"):
        require_existing("INPUT", [str(tmp_path / "nope"), str(tmp_path / "*.png"), str(tmp_path / "a.jpg")])


def test_dataflow_refuses_local_paths_other_runners_warn(tmp_path, caplog):
    paths = {"INPUT": ["gs://b/images/", str(tmp_path)], "--output": "gs://b/out", "--checkpoint": None}
    with pytest.raises(UsageError, match=rf"cannot read or write this machine's disk.*INPUT {tmp_path}$"):
        check_worker_paths(DATAFLOW, paths)
    check_worker_paths(DATAFLOW, {"INPUT": ["gs://b/images/"], "--output": "gs://b/out"})  # URLs only: fine
    with caplog.at_level(logging.WARNING):
        check_worker_paths(["--runner", "FlinkRunner"], paths)
        check_worker_paths([], paths)  # local runner: nothing to say
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "FlinkRunner workers" in warnings[0] and str(tmp_path) in warnings[0]
    assert "filesystem every worker shares" in warnings[0]


@pytest.mark.parametrize(("flags", "given"), [
    (DATAFLOW, False),
    (["--runner", "FlinkRunner"], False),                                     # Beam's default image: no detectron2
    ([*DATAFLOW, "--setup_file", "./setup.py"], False),                       # setup.py cannot install it
    ([*DATAFLOW, "--extra_package", "/w/pb1_detectron2-0.6-py3-none-any.whl"], True),
    ([*DATAFLOW, "--sdk_container_image", "reg/ldot-worker:0.1.0"], True),
    (["--runner", "FlinkRunner", "--sdk_container_image", "reg/ldot:1"], False),  # Dataflow's flag: Flink ignores it
    (["--runner", "FlinkRunner", "--environment_type", "DOCKER", "--environment_config", "reg/ldot:1"], True),
    (["--runner", "FlinkRunner", "--environment_config", "reg/ldot:1"], True),  # DOCKER is the default
    (["--runner", "FlinkRunner", "--environment_options", "docker_container_image=reg/ldot:1"], True),
    (["--runner", "PortableRunner", "--environment_type", "beam:env:harness_subprocess_python:v1"], True),
    (["--runner", "FlinkRunner", "--environment_type", "EXTERNAL", "--environment_config", "localhost:5000"], True),
])
def test_workers_get_detectron2(flags, given):
    assert workers_get_detectron2(flags) is given


def test_detectron2_warning_only_when_extraction_runs_remotely(tmp_path, caplog):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pb1-detectron2 @ file:///wheels/pb1_detectron2-0.6-py3-none-any.whl\n")
    with caplog.at_level(logging.WARNING):
        warn_if_workers_lack_detectron2(DATAFLOW, extraction=False)       # --regions: no detector on workers
        warn_if_workers_lack_detectron2([], extraction=True)              # local: the launcher's env is theirs
        warn_if_workers_lack_detectron2([*DATAFLOW, "--requirements_file", str(requirements)], extraction=True)
        assert not caplog.records
        warn_if_workers_lack_detectron2(DATAFLOW, extraction=True)
        warn_if_workers_lack_detectron2(["--runner", "FlinkRunner"], extraction=True)
    dataflow, flink = (r.getMessage() for r in caplog.records)
    assert "--extra_package" in dataflow and "--sdk_container_image IMAGE" in dataflow
    assert flink.startswith("FlinkRunner") and "--environment_type DOCKER --environment_config IMAGE" in flink


TINY_CLI = ["--random-weights", "--encoder-config", "tiny", "--detector-config", "tiny", "--device", "cpu"]


def test_cli_reports_missing_relative_input_before_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["index", "photos", "--output", "out", *TINY_CLI])
    assert result.exit_code == 2
    assert f"INPUT not found: {tmp_path / 'photos'}" in result.output
    assert not (tmp_path / "out").exists()  # nothing was started


def test_cli_refuses_local_paths_on_dataflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink(DEMO_IMAGES, tmp_path / "photos")
    index = CliRunner().invoke(cli, ["index", "photos", "--output", "gs://b/out", *TINY_CLI, *DATAFLOW])
    assert index.exit_code == 2 and f"INPUT {tmp_path / 'photos'}" in index.output, index.output
    (tmp_path / "emb").mkdir()
    build = CliRunner().invoke(cli, ["build-index", "emb", "--output", "idx", *DATAFLOW])
    assert build.exit_code == 2 and "DataflowRunner workers" in build.output
    assert f"EMBEDDINGS {tmp_path / 'emb'}; --output {tmp_path / 'idx'}" in build.output
    nightly = CliRunner().invoke(cli, ["nightly", "photos", "--work-dir", "work", "--index-root", "gs://b/idx",
                                       *TINY_CLI, *DATAFLOW])
    assert nightly.exit_code == 2 and f"--work-dir {tmp_path / 'work'}" in nightly.output, nightly.output
    assert not any(p.name in ("idx", "work", "out") for p in tmp_path.iterdir())
