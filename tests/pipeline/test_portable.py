"""``ldot index``, ``ldot build-index`` and ``ldot nightly`` the way Flink and Dataflow run them: PortableRunner
against Beam's local job service, SDK workers as separate processes in another working directory. Given
relative paths (made absolute at the CLI boundary), they give what the in-process FnApiRunner gives, every input
accounted for; a run whose workers write where the launcher cannot see does not reconcile."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from index import layout
from index.shards import done_url
from jobs.cli import main as cli
from pipeline.accounting import CountsMismatchError, RunCounts, failure_breakdown, parquet_rows
from tests.helpers_nightly import copy_demo_photos
from tests.helpers_pipeline import DEMO_IMAGES, read_table

pytestmark = pytest.mark.slow

TINY = ["--random-weights", "--encoder-config", "tiny", "--detector-config", "tiny", "--device", "cpu"]
PHOTOS = sorted(p.name for p in DEMO_IMAGES.glob("*.jpg"))
BROKEN = {"empty.jpg": "empty_file", "notes.jpg": "not_an_image"}


@contextlib.contextmanager
def captured_warnings(name: str):
    """Warnings logged by logger ``name`` (the commands log, they do not print, their launch warnings)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """photos/ (the demo photos and two broken files) and a tiny LightningDOT checkpoint, under the launcher's cwd."""
    from encoders.lightningdot import LightningDOT

    root = tmp_path_factory.mktemp("launcher")
    shutil.copytree(DEMO_IMAGES, root / "photos", ignore=shutil.ignore_patterns("*.md"))
    (root / "photos" / "empty.jpg").write_bytes(b"")
    (root / "photos" / "notes.jpg").write_text("not a JPEG\n")
    (root / "models").mkdir()
    LightningDOT.random("tiny", seed=3).save(root / "models" / "tiny.pt")
    return root


@pytest.fixture(scope="module")
def in_process(corpus, ldot) -> Path:
    """The reference: the in-process FnApiRunner, absolute paths."""
    out = corpus / "in-process"
    result = ldot("index", str(corpus / "photos"), "--output", str(out), "--checkpoint",
                  str(corpus / "models" / "tiny.pt"), *TINY)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def portable(corpus, job_service, ldot) -> tuple[Path, list[str]]:
    """The same through PortableRunner, every path relative to the launcher's working directory."""
    with contextlib.chdir(corpus), captured_warnings("pipeline.launch_checks") as warnings:
        result = ldot("index", "photos", "--output", "portable", "--checkpoint", "models/tiny.pt", *TINY,
                      *job_service.beam_args())
    assert result.exit_code == 0, result.output
    assert not (job_service.workdir / "portable").exists()  # nothing landed in the workers' directory
    return corpus / "portable", warnings


def embeddings(out: Path) -> dict[str, np.ndarray]:
    return {r["image_id"]: np.asarray(r["embedding"], np.float32) for r in read_table(out / "embeddings")}


def test_index_equals_the_in_process_run(in_process, portable):
    out, _ = portable
    want, got = embeddings(in_process), embeddings(out)
    assert sorted(got) == PHOTOS and sorted(want) == PHOTOS
    for image_id in PHOTOS:
        np.testing.assert_allclose(got[image_id], want[image_id], atol=1e-6, rtol=0)
    rows = {r["image_id"]: r for r in read_table(out / "embeddings")}
    assert {r["uri"] for r in rows.values()} == {str(out.parent / "photos" / name) for name in PHOTOS}
    assert len({r["model"] for r in rows.values()}) == 1 and not rows[PHOTOS[0]]["model"].startswith("ldot-random")


def test_every_input_is_accounted_for(portable):
    out, _ = portable
    failures = {r["image_id"]: r["error"] for r in read_table(out / "failures")}
    assert failures == BROKEN
    report = json.loads((out / "run.json").read_text())
    counters = report["counters"]  # Beam's counters, reported by the worker processes through the runner
    assert counters["listed"] == len(PHOTOS) + len(BROKEN) and counters["encoded"] == len(PHOTOS)
    assert report["counts"]["embedded"] == len(PHOTOS) and report["counts"]["failed"] == len(BROKEN)
    counts = RunCounts(str(out), parquet_rows(str(out / "embeddings")), parquet_rows(str(out / "failures")),
                       *failure_breakdown(str(out / "failures")), counters)
    counts.check()
    assert counts.report()["listed"] == 9


def test_relative_paths_are_made_absolute_with_a_shared_filesystem_warning(corpus, portable):
    _, warnings = portable
    (warning,) = warnings
    assert warning.startswith("PortableRunner workers run in other processes")
    for path in ("photos", "portable", "models/tiny.pt"):
        assert str(corpus / path) in warning
    flags = json.loads((corpus / "portable" / "run.json").read_text())["flags"]
    assert flags["checkpoint"] == str(corpus / "models" / "tiny.pt") and flags["encoder_config"] == "tiny"


def test_worker_progress_lines_are_labelled_partial(portable, job_service):
    """Each worker prints only its share, and says so: no worker line is an unlabelled bar, none claims 100%."""
    lines = [line for line in job_service.log_path.read_text(errors="replace").splitlines() if "[ldot]" in line]
    assert lines, "the workers printed no progress line"
    for line in lines:
        m = re.search(r"\[ldot\] worker (\d+), partial: (embedded|extracted) \d+, failed \d+  [\d.]+ images/s$", line)
        assert m and int(m.group(1)) != os.getpid() and "%" not in line, line


def index_contents(root: Path) -> dict:
    manifest = layout.live_manifest(str(root))
    return {"count": manifest["count"], "factory": manifest["factory"], "nprobe": manifest["nprobe"],
            "trained": manifest["trained"]["sha256"],
            "shards": [(s["count"], s["sha256"], s["idmap"]["sha256"]) for s in manifest["shards"]]}


def test_build_index_equals_the_in_process_build(corpus, portable, job_service, ldot):
    out, _ = portable
    result = ldot("build-index", str(out / "embeddings"), "--output", str(corpus / "index-in-process"),
                  "--shards", "2")
    assert result.exit_code == 0, result.output
    with contextlib.chdir(corpus):
        result = ldot("build-index", "portable/embeddings", "--output", "index-portable", "--shards", "2",
                      *job_service.beam_args())
    assert result.exit_code == 0, result.output
    built = index_contents(corpus / "index-portable")
    assert built == index_contents(corpus / "index-in-process")
    assert built["count"] == len(PHOTOS) and sum(s[0] for s in built["shards"]) == len(PHOTOS)
    assert len(layout.list_versions(str(corpus / "index-portable"))) == 1
    # the last step, which joins every branch, ran in a worker process and wrote _done where the launcher reads it
    here, there = (done_record(corpus / name) for name in ("index-in-process", "index-portable"))
    assert here["written_by"] == f"{socket.gethostname()}:{os.getpid()}"
    assert there["written_by"].startswith(f"{socket.gethostname()}:") and there["written_by"] != here["written_by"]
    assert {k: there[k] for k in ("n_shards", "vectors")} == {"n_shards": 2, "vectors": len(PHOTOS)}


def done_record(root: Path) -> dict:
    return json.loads(Path(done_url(layout.version_dir(str(root), layout.read_current(str(root))))).read_text())


def test_failed_build_removes_its_incomplete_version(corpus, portable, job_service):
    """The pipeline cannot start (a job endpoint nobody serves) after the launcher wrote the version's trained index:
    the command fails and leaves no incomplete version behind."""
    out, _ = portable
    flags = [f for f in job_service.beam_args() if not f.startswith("--job_endpoint")]
    result = CliRunner().invoke(cli, ["build-index", str(out / "embeddings"), "--output", str(corpus / "index-failed"),
                                      *flags, "--job_endpoint=localhost:9", "--job_server_timeout=5"])
    assert result.exit_code != 0 and "FutureTimeoutError" in repr(result.exception)  # no job service there
    assert layout.list_versions(str(corpus / "index-failed")) == []


def live_ids(root: Path) -> list[str]:
    version = layout.read_current(str(root))
    files = sorted((root / "versions" / version / "idmap").glob("*.parquet"))
    return sorted(i for f in files for i in pq.read_table(f).column("image_id").to_pylist())


def test_nightly_counts_through_worker_processes(tmp_path, job_service, ldot):
    corpus = tmp_path / "corpus"
    copy_demo_photos(corpus, "astronaut.jpg", "coffee.jpg", "rocket.jpg")
    result = ldot("nightly", str(corpus), "--work-dir", str(tmp_path / "work"), "--index-root",
                  str(tmp_path / "index"), *TINY)
    assert result.exit_code == 0, result.output
    (corpus / "rocket.jpg").unlink()                                                    # dropped
    shutil.copyfile(DEMO_IMAGES / "chelsea.jpg", corpus / "coffee.jpg")                 # changed
    shutil.copyfile(DEMO_IMAGES / "retina.jpg", corpus / "retina.jpg")                  # new
    with contextlib.chdir(tmp_path):
        result = ldot("nightly", "corpus", "--work-dir", "work", "--index-root", "index", *TINY,
                      "--max-vanished-rate", "0.5", *job_service.beam_args())  # 1 of 3 dropped
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "published" and report["work_dir"] == str(tmp_path / "work")
    c = report["counts"]
    assert (c["new"], c["changed"], c["carried"], c["dropped"]) == (1, 1, 1, 1)
    assert (c["inputs"], c["embedded"], c["failed"], c["encoded"]) == (3, 3, 0, 2)
    assert live_ids(tmp_path / "index") == ["astronaut.jpg", "coffee.jpg", "retina.jpg"]


# An absolute path that names another directory in every process: the launcher's working directory in the launcher,
# the workers' in the workers. What a local path on a filesystem the workers do not share comes down to.
UNSEEN = "/proc/self/cwd/unseen"


def test_workers_writing_where_the_launcher_cannot_see_do_not_reconcile(corpus, job_service, ldot):
    with contextlib.chdir(corpus):  # its exit code: see the next test
        ldot("index", str(corpus / "photos"), "--output", UNSEEN, "--checkpoint", str(corpus / "models" / "tiny.pt"),
             *TINY, *job_service.beam_args())
    seen, written = corpus / "unseen", job_service.workdir / "unseen"
    assert parquet_rows(str(written / "embeddings")) == len(PHOTOS)  # the workers wrote them, in their directory
    report = json.loads((seen / "run.json").read_text())
    assert (report["counts"]["embedded"], report["counts"]["failed"]) == (0, 0)  # what the launcher can see
    counts = RunCounts(str(seen), parquet_rows(str(seen / "embeddings")), parquet_rows(str(seen / "failures")),
                       {}, {}, report["counters"])
    with pytest.raises(CountsMismatchError, match=r"9 input\(s\) listed \(Beam counters\) but 0 embedding row\(s\)"):
        counts.check()


def test_a_run_that_does_not_reconcile_exits_non_zero(corpus, job_service, ldot):
    with contextlib.chdir(corpus):
        result = ldot("index", str(corpus / "photos"), "--output", f"{UNSEEN}-cli", "--checkpoint",
                      str(corpus / "models" / "tiny.pt"), *TINY, *job_service.beam_args())
    assert result.exit_code == 1 and "counts do not reconcile: 9 input(s) listed" in result.output
