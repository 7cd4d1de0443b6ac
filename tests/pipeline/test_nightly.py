"""``ldot nightly``: incremental counts, the lock, the publish guards, retention, and crash safety with real
processes killed (SIGKILL) at every stage, ending in the same index as a clean run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from core.errors import EXIT_FAILURE_GUARD, EXIT_LOCKED, EXIT_OK, EXIT_RECALL_GUARD, EXIT_USAGE
from index import layout
from pipeline import nightly
from pipeline.nightly import NightlyConfig, RunLock, WorkDir, base_snapshot, run_nightly
from tests.helpers_nightly import REPO, assert_same_index, cli_env, copy_demo_photos, live, live_vectors, settings
from tests.helpers_pipeline import TINY_ENCODER

FIRST = ("astronaut.jpg", "coffee.jpg", "rocket.jpg")
FINAL = ("astronaut.jpg", "coffee.jpg", "retina.jpg")  # after change_corpus


def run(root: Path, **over) -> tuple[int, dict]:
    return run_nightly(NightlyConfig(**settings(root, **over)))


def put(root: Path, name: str, source: str | None = None) -> None:
    copy_demo_photos(root / "corpus", name, **({name: source} if source else {}))


def change_corpus(root: Path) -> None:
    """One deleted, one changed (new bytes under the same id), one new image."""
    (root / "corpus" / "rocket.jpg").unlink()
    put(root, "coffee.jpg", "chelsea.jpg")
    put(root, "retina.jpg")


def report_of(root: Path, run_id: str) -> dict:
    return json.loads((root / "work" / "reports" / f"{run_id}.json").read_text())


def newest_report(root: Path) -> dict:
    names = sorted(p for p in (root / "work" / "reports").glob("*.json") if p.name != "latest.json")
    return json.loads(names[-1].read_text())


def write_config(root: Path, **over) -> Path:
    """A config file with paths relative to it (as a user's would be)."""
    values = settings(root, **over)
    for key in ("work_dir", "index_root"):
        values[key] = os.path.relpath(values[key], root)
    values["inputs"] = [os.path.relpath(p, root) for p in values["inputs"]]
    path = root / "nightly.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def cli(root: Path, crash: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", "nightly", "--config", str(root / "nightly.yaml")],
                          cwd=REPO, env=cli_env(crash), capture_output=True, text=True, timeout=timeout)


def killed(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-3000:])


@pytest.fixture(scope="module")
def nightly_inputs() -> dict[str, tuple[str, ...]]:
    """``nightly_seeded`` (tests/pipeline/conftest.py): one clean nightly run over FIRST (published)."""
    return {"corpus": FIRST}


@pytest.fixture(scope="module")
def clean_final(tmp_path_factory) -> dict[str, np.ndarray]:
    """The index a clean run over FINAL gives (no earlier snapshot)."""
    root = tmp_path_factory.mktemp("clean")
    for name in FINAL:
        put(root, name, "chelsea.jpg" if name == "coffee.jpg" else None)
    code, report = run(root)
    assert code == EXIT_OK, report
    assert (report["counts"]["new"], report["counts"]["carried"]) == (3, 0)
    return live_vectors(root)


# ---- incremental, unchanged, retention --------------------------------------------------------------------------

def test_incremental_counts_then_unchanged_then_retention(nightly_state, clean_final):
    root = nightly_state
    v1 = live(root)
    before = live_vectors(root)
    change_corpus(root)

    code, r = run(root, keep=2, max_vanished_rate=0.5)  # one of three photos deleted on purpose
    assert code == EXIT_OK and r["status"] == "published" and r["published"], r
    c = r["counts"]
    assert (c["new"], c["changed"], c["carried"], c["dropped"], c["vanished"]) == (1, 1, 1, 1, 1)
    assert c["decoded"] == 2 and c["encoded"] == 2  # the carried image was neither decoded nor encoded
    v2 = live(root)
    assert v2 == r["version"] == r["snapshot"] != v1 and r["live_before"] == v1 and r["live_after"] == v2
    after = live_vectors(root)
    np.testing.assert_array_equal(after["astronaut.jpg"], before["astronaut.jpg"])
    assert_same_index(after, clean_final)
    assert report_of(root, r["run"]) == r
    assert json.loads((root / "work" / "reports" / "latest.json").read_text())["run"] == r["run"]
    assert set(r["timings"]) >= {"embed", "build", "publish", "retention", "total"}

    # nothing changed: no new version, no new snapshot, exit 0
    code, r = run(root, keep=2)
    assert code == EXIT_OK and r["status"] == "unchanged" and not r["published"], r
    assert r["counts"]["carried"] == 3 and r["counts"].get("decoded", 0) == 0
    assert live(root) == v2 and r["version"] == v2
    assert layout.list_versions(str(root / "index")) == [v1, v2]
    assert sorted(WorkDir(str(root / "work")).complete_snapshots()) == [v1, v2]

    # retention: a third version; keep=2 -> v1 (version and snapshot) goes, the live one stays
    put(root, "hubble_deep_field.jpg")
    code, r = run(root, keep=2)
    assert code == EXIT_OK and r["counts"]["new"] == 1 and r["counts"]["carried"] == 3, r
    v3 = live(root)
    assert layout.list_versions(str(root / "index")) == [v2, v3]
    assert sorted(WorkDir(str(root / "work")).complete_snapshots()) == [v2, v3]
    assert r["retention"] == {"snapshots_deleted": [v1], "versions_deleted": [v1]}


def test_retention_never_deletes_the_live_version(nightly_state):
    """keep=1 while the newest complete version is one a guard refused: the live one stays."""
    root = nightly_state
    v1 = live(root)
    index_root = str(root / "index")
    refused = layout.new_version_name()
    shutil.copytree(Path(layout.version_dir(index_root, v1)), Path(layout.version_dir(index_root, refused)))
    manifest = json.loads(Path(layout.manifest_url(index_root, refused)).read_text())
    manifest["version"] = refused
    Path(layout.manifest_url(index_root, refused)).write_text(json.dumps(manifest))
    deleted = layout.apply_retention(index_root, 1)
    assert deleted == [] and layout.list_versions(index_root) == [v1, refused] and live(root) == v1


# ---- guards -----------------------------------------------------------------------------------------------------

def test_failure_rate_guard_keeps_the_live_index(nightly_state):
    root = nightly_state
    v1 = live(root)
    before = live_vectors(root)
    (root / "corpus" / "notes.jpg").write_text("not a JPEG")
    (root / "corpus" / "empty.jpg").write_bytes(b"")
    code, r = run(root, max_failure_rate=0.1)
    assert code == EXIT_FAILURE_GUARD and r["status"] == "rejected" and not r["published"], r
    assert "failure rate 40.0%" in r["reason"] and "max_failure_rate" in r["reason"]
    assert r["counts"]["failed"] == 2 and r["version"] is None
    assert live(root) == v1 and layout.list_versions(str(root / "index")) == [v1]
    assert_same_index(live_vectors(root), before)
    snaps = WorkDir(str(root / "work")).complete_snapshots()
    assert snaps[r["snapshot"]]["failure_guard"] == "failed"
    assert base_snapshot(snaps) == v1  # the next run carries from the last snapshot that passed


def test_recall_guard_keeps_the_live_index_and_never_publishes_the_refused_version(nightly_state):
    """A real build whose self-check falls below the floor. PCA to one (centred) dimension puts the two training
    vectors into two IVF lists by sign, so probing one list (nprobe 1) cannot return all 4 vectors, which are all
    true neighbours at recall@10: recall <= 3/4."""
    root = nightly_state
    v1 = live(root)
    put(root, "retina.jpg")
    coarse = dict(factory="PCA1,IVF2,Flat", nprobe=1, min_recall=0.9)
    code, r = run(root, **coarse)
    assert code == EXIT_RECALL_GUARD and r["status"] == "rejected" and not r["published"], r
    refused = r["version"]
    manifest = layout.read_manifest(str(root / "index"), refused)
    assert r["recall"] == manifest["selfcheck"]["recall_at_k"] < 0.9 and "below min_recall 0.9" in r["reason"]
    assert live(root) == v1 and layout.is_complete(str(root / "index"), refused)

    # nothing changed since, but the refused version is not published: a new one is built and checked
    code, r = run(root, **coarse)
    assert code == EXIT_RECALL_GUARD and r["version"] != refused and not r.get("reused_version"), r
    assert live(root) == v1

    code, r = run(root, min_recall=0.9)  # exact search: recall 1.0
    assert code == EXIT_OK and r["published"] and r["version"] != refused and not r.get("reused_version"), r
    assert live(root) == r["version"] and r["recall"] == 1.0


# ---- the lock and the command line ---------------------------------------------------------------------------------

def test_lock_held_exits_at_once_and_kill_never_leaves_a_stale_lock(tmp_path):
    (tmp_path / "corpus").mkdir()  # a missing INPUT is refused before the lock is tried
    write_config(tmp_path)
    lock = RunLock(str(tmp_path / "work" / "nightly.lock"))
    lock.acquire({"pid": os.getpid(), "host": "test", "run": "holder-run", "started": "now"})
    try:
        code, r = run(tmp_path)  # in-process: flock locks are per open file, so this conflicts too
        assert code == EXIT_LOCKED and "holder-run" in r["reason"]
        t0 = time.time()
        p = cli(tmp_path)
        assert p.returncode == EXIT_LOCKED, p.stderr
        assert "another nightly run holds the lock" in p.stderr and "holder-run" in p.stderr
        assert time.time() - t0 < 30  # no model, no Beam: it only parses settings
        assert not (tmp_path / "work" / "reports").exists() and not (tmp_path / "work" / "snapshots").exists()
    finally:
        lock.release()
    killed(cli(tmp_path, crash="locked"))  # SIGKILLed while holding the lock
    again = RunLock(str(tmp_path / "work" / "nightly.lock"))
    again.acquire({"pid": os.getpid()})  # the kernel released it
    again.release()


def test_flags_override_the_config_file_and_paths_are_relative_to_it(tmp_path, monkeypatch):
    from jobs.cli import main

    (tmp_path / "conf" / "photos").mkdir(parents=True)  # a missing INPUT is refused before the run
    (tmp_path / "conf" / "n.yaml").write_text(yaml.safe_dump({
        "inputs": ["photos"], "work-dir": "w", "index_root": "/abs/index", "random_weights": True, "keep": 5,
        "min_recall": 0.5, "beam_args": ["--direct_num_workers=1"]}))
    seen = {}

    def fake_run(cfg, echo=None):
        seen["cfg"] = cfg
        return EXIT_OK, {"status": "published"}

    monkeypatch.setattr(nightly, "run_nightly", fake_run)
    result = CliRunner().invoke(main, ["nightly", "--config", str(tmp_path / "conf" / "n.yaml"), "--keep", "2",
                                       "--factory", "IDMap,Flat", "--runner", "FnApiRunner"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert cfg.inputs == [str(tmp_path / "conf" / "photos")] and cfg.work_dir == str(tmp_path / "conf" / "w")
    assert cfg.index_root == "/abs/index" and cfg.keep == 2 and cfg.min_recall == 0.5
    assert cfg.factory == "IDMap,Flat" and cfg.device == "auto"
    assert cfg.beam_args == ["--direct_num_workers=1", "--runner", "FnApiRunner"]  # a Beam flag's value stays its own

    (tmp_path / "conf" / "bad.yaml").write_text("inputs: [x]\nwork_dir: w\nindex_root: i\nkeeep: 3\n")
    result = CliRunner().invoke(main, ["nightly", "--config", str(tmp_path / "conf" / "bad.yaml")])
    assert result.exit_code == EXIT_USAGE and "unknown setting 'keeep'" in result.output


# ---- crash safety: real processes killed at every stage -------------------------------------------------------------

def _kill_during_pipeline(root: Path, timeout: float = 120) -> None:
    """Start a run and SIGKILL it as soon as its Beam pipeline has begun writing the snapshot."""
    work = WorkDir(str(root / "work"))
    before = set(work.snapshot_names())
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "nightly", "--config", str(root / "nightly.yaml")],
                            cwd=REPO, env=cli_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            new = [n for n in work.snapshot_names() if n not in before]
            if new and (root / "work" / "snapshots" / new[0] / "embeddings").exists():
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)


@pytest.mark.slow
def test_killed_at_every_stage_then_rerun_gives_the_clean_index(nightly_state, clean_final):
    root = nightly_state
    index_root = str(root / "index")
    work = WorkDir(str(root / "work"))
    v1 = live(root)
    old = live_vectors(root)
    change_corpus(root)
    write_config(root, keep=1, max_vanished_rate=0.5)  # one of three photos deleted on purpose

    def live_is_old_and_whole() -> None:
        assert live(root) == v1
        assert_same_index(live_vectors(root), old)  # opens with checksums verified

    # listing: nothing written yet
    killed(cli(root, crash="listing"))
    live_is_old_and_whole()

    # after the pipeline wrote the tables, before SNAPSHOT.json: an unmarked snapshot, never read
    killed(cli(root, crash="embedded"))
    live_is_old_and_whole()
    unmarked = [n for n in work.snapshot_names() if work.read_marker(n) is None]
    assert len(unmarked) == 1 and not work.complete_snapshots().keys() - {v1}

    # in the middle of the Beam pipeline (a timed kill)
    _kill_during_pipeline(root)
    live_is_old_and_whole()
    assert unmarked[0] not in work.snapshot_names()  # removed by that run's recovery

    # in the index build: the version has its trained index but no manifest
    killed(cli(root, crash="build"))
    live_is_old_and_whole()
    c = newest_report(root)
    assert c["status"] == "running" and c["stage"] == "build"
    assert c["recovered"][-1]["died_at_stage"] == "embed"  # the timed kill hit the pipeline
    assert c["counts"]["new"] == 1 and c["counts"]["changed"] == 1 and c["counts"]["dropped"] == 1
    assert not layout.is_complete(index_root, c["version"])
    assert (Path(layout.version_dir(index_root, c["version"])) / "trained.index").exists()

    # just before publishing: the new version is complete, CURRENT still names the old one
    killed(cli(root, crash="publish"))
    live_is_old_and_whole()
    d = newest_report(root)
    assert d["base_snapshot"] == c["run"]  # the killed run's complete snapshot is reused ...
    assert d["counts"]["carried"] == 3 and d["counts"].get("decoded", 0) == 0  # ... nothing decoded again
    assert c["version"] not in layout.list_versions(index_root)  # the half-built version was removed
    assert [s["run"] for s in d["recovered"]][-1] == c["run"]
    assert layout.is_complete(index_root, d["version"])

    # right after CURRENT flipped: the new version is live and whole; it was published, not rebuilt
    killed(cli(root, crash="published"))
    e = newest_report(root)
    assert e["reused_version"] and e["version"] == d["version"] and "build" not in e["timings"]
    assert live(root) == d["version"]
    assert_same_index(live_vectors(root), clean_final)

    # in retention, after its first deletion
    killed(cli(root, crash="retention"))
    assert live(root) == d["version"]
    assert_same_index(live_vectors(root), clean_final)
    for name, marker in work.complete_snapshots().items():
        assert marker["id"] == name

    # the next run completes: nothing to redo, the index equals a clean run's, retention is finished
    p = cli(root)
    assert p.returncode == EXIT_OK, p.stderr[-3000:]
    g = json.loads(p.stdout)
    assert g["status"] == "unchanged" and g["version"] == d["version"]
    assert [x["died_at_stage"] for x in g["recovered"]] == ["retention"]
    e = report_of(root, e["run"])
    assert e["status"] == "died" and e["stage"] == "published" and "killed during stage 'published'" in e["reason"]
    assert_same_index(live_vectors(root), clean_final)
    assert layout.list_versions(index_root) == [d["version"]]
    assert list(work.complete_snapshots()) == [d["version"]] == work.snapshot_names()
    statuses = [json.loads(p.read_text())["status"] for p in sorted((root / "work" / "reports").glob("2*.json"))]
    assert statuses.count("running") == 0 and statuses.count("died") >= 6


def test_new_model_reembeds_everything(nightly_state):
    root = nightly_state
    config = json.loads(Path(TINY_ENCODER).read_text())
    config["num_layers"] = 1
    (root / "encoder.json").write_text(json.dumps(config))
    code, r = run(root, encoder_config=str(root / "encoder.json"))
    assert code == EXIT_OK and r["published"], r
    c = r["counts"]
    assert (c["new"], c["changed"], c["carried"], c["dropped"], c["encoded"]) == (0, 3, 0, 0, 3)
    seeded_run = sorted(p.stem for p in (root / "work" / "reports").glob("2*.json"))[0]
    assert layout.live_manifest(str(root / "index"))["model"] == r["model"] != report_of(root, seeded_run)["model"]


def test_a_damaged_snapshot_is_never_taken_as_complete(nightly_state):
    work = WorkDir(str(nightly_state / "work"))
    (name,) = work.complete_snapshots()
    part = next((nightly_state / "work" / "snapshots" / name / "embeddings").glob("*.parquet"))
    part.write_bytes(part.read_bytes()[:-10])  # a file cut short after the marker was written
    assert work.read_marker(name) is None and work.complete_snapshots() == {}
    (nightly_state / "work" / "snapshots" / "20990101T000000.000000Z-abcdef" / "embeddings").mkdir(parents=True)
    assert work.complete_snapshots() == {}  # no marker: not a snapshot
    assert base_snapshot(work.complete_snapshots()) is None  # the next run is a full one
