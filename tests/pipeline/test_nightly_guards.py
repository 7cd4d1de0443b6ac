"""``ldot nightly`` against hostile and unlucky situations, each built here and followed by a real next run: a
failed mount or an emptied manifest (the vanished-share guard), a clock a day ahead, a run past its deadline,
lock files left by others, a damaged CURRENT."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.errors import EXIT_ERROR, EXIT_FAILURE_GUARD, EXIT_LOCKED, EXIT_OK
from index import layout
from pipeline.nightly import NightlyConfig, RunLock, WorkDir, base_snapshot, run_nightly
from tests.helpers_nightly import REPO, assert_same_index, cli_env, copy_demo_photos, live, live_vectors, settings
from tests.helpers_pipeline import DEMO_IMAGES

A = ("astronaut.jpg", "coffee.jpg", "rocket.jpg")
B = ("chelsea.jpg", "coins.jpg", "retina.jpg")


def two_inputs(root: Path, **over) -> dict:
    return settings(root, inputs=[str(root / "a"), str(root / "b")], **over)


def run(root: Path, clock=None, **over) -> tuple[int, dict]:
    return run_nightly(NightlyConfig(**two_inputs(root, **over)), clock=clock)


@pytest.fixture(scope="module")
def nightly_inputs() -> dict[str, tuple[str, ...]]:
    """``nightly_seeded`` (tests/pipeline/conftest.py): two folder inputs, a/ and b/, three photos each, after one
    clean published run."""
    return {"a": A, "b": B}


# ---- the vanished-share guard --------------------------------------------------------------------------------------

def test_an_emptied_input_folder_is_not_published_and_the_next_run_is_normal(nightly_state):
    root = nightly_state
    v1 = live(root)
    before = live_vectors(root)
    hidden = root / "b-offline"
    (root / "b").rename(hidden)  # the mount failed: the folder is there, and empty
    (root / "b").mkdir()

    code, r = run(root)
    assert code == EXIT_FAILURE_GUARD and r["status"] == "rejected" and not r["published"], r
    assert r["counts"]["failed"] == 1 and r["counts"]["vanished"] == 3 and r["version"] is None  # the INPUT's own row
    assert (f"3 of the 6 images of snapshot {v1} (50.0%) are missing from this run (3 no longer listed, 0 failed); "
            "most from ") in r["reason"]
    # named by the uris the snapshot recorded (those of the seeded folder this test's state was copied from)
    assert re.search(r"most from \S+/b \(3 of 3\): above max_vanished_rate 10\.0%", r["reason"]), r["reason"]
    assert r["reason"].endswith(f"not built, not published; {v1} stays live")
    assert live(root) == v1 and layout.list_versions(str(root / "index")) == [v1]
    assert_same_index(live_vectors(root), before)
    snaps = WorkDir(str(root / "work")).complete_snapshots()
    assert snaps[r["snapshot"]]["vanished_guard"] == "failed" and base_snapshot(snaps) == v1

    # the mount is back, with one new photo: carried from the last good snapshot, published
    shutil.rmtree(root / "b")
    hidden.rename(root / "b")
    copy_demo_photos(root / "b", "hubble_deep_field.jpg")
    code, r = run(root)
    assert code == EXIT_OK and r["published"] and r["base_snapshot"] == v1, r
    c = r["counts"]
    assert (c["new"], c["carried"], c["vanished"], c["failed"]) == (1, 6, 0, 0)
    assert len(live_vectors(root)) == 7


def write_manifest_csv(path: Path, uris: list[str]) -> None:
    path.write_text("uri\n" + "".join(f"{u}\n" for u in uris))


@pytest.fixture
def with_manifest(tmp_path) -> Path:
    """a/ and a manifest photos.csv of the three photos under mount/, after one clean published run."""
    root = tmp_path / "m"
    copy_demo_photos(root / "a", *A)
    copy_demo_photos(root / "mount", *B)
    write_manifest_csv(root / "photos.csv", [str(root / "mount" / n) for n in B])
    code, r = run_nightly(NightlyConfig(**settings(root, inputs=[str(root / "a"), str(root / "photos.csv")])))
    assert code == EXIT_OK and r["counts"]["embedded"] == 6, r
    return root


def manifest_run(root: Path) -> tuple[int, dict]:
    return run_nightly(NightlyConfig(**settings(root, inputs=[str(root / "a"), str(root / "photos.csv")])))


def test_images_of_a_manifest_that_now_fail_count_as_vanished(with_manifest):
    """The manifest is unchanged but its images are gone (their mount failed): each is a failure row, and an image
    of the last snapshot that failed is missing from the index all the same."""
    root = with_manifest
    v1 = live(root)
    shutil.rmtree(root / "mount")
    code, r = manifest_run(root)
    assert code == EXIT_FAILURE_GUARD and not r["published"] and live(root) == v1, r
    assert r["counts"]["failed"] == 3 and r["counts"]["failed_by_stage"] == {"read": 3}
    assert (f"3 of the 6 images of snapshot {v1} (50.0%) are missing from this run (0 no longer listed, 3 failed); "
            f"most from {root / 'photos.csv'} (3 of 3)") in r["reason"]


def test_an_emptied_manifest_is_not_published(with_manifest):
    root = with_manifest
    v1 = live(root)
    write_manifest_csv(root / "photos.csv", [])  # the export that writes it produced a header only
    code, r = manifest_run(root)
    assert code == EXIT_FAILURE_GUARD and not r["published"] and live(root) == v1, r
    assert "(3 no longer listed, 0 failed); most from " + str(root / "photos.csv") in r["reason"]


def test_a_manifest_that_gains_one_bad_row_never_shrinks_the_index(with_manifest):
    """One malformed row costs only itself (a failure row of its own): the manifest's good rows stay, nothing
    vanished, and the live index, built from the same images, stays as it is."""
    root = with_manifest
    v1 = live(root)
    copy_demo_photos(root / "mount", "hubble_deep_field.jpg")
    with (root / "photos.csv").open("a") as f:
        f.write(f"{root / 'mount' / 'hubble_deep_field.jpg'},one field too many\n")
    code, r = manifest_run(root)
    assert code == EXIT_OK and r["status"] == "unchanged" and live(root) == v1, r
    assert (r["counts"]["failed"], r["counts"]["vanished"], r["counts"]["carried"]) == (1, 0, 6)
    assert len(live_vectors(root)) == 6


def test_an_intended_removal_passes_with_the_guard_raised(nightly_state):
    shutil.rmtree(nightly_state / "b")
    (nightly_state / "b").mkdir()
    code, r = run(nightly_state, max_vanished_rate=1.0)
    assert code == EXIT_OK and r["published"] and r["counts"]["vanished"] == 3, r
    assert len(live_vectors(nightly_state)) == 3


# ---- a clock a day ahead ------------------------------------------------------------------------------------------

def test_one_run_with_its_clock_a_day_ahead_changes_nothing_for_the_next_runs(nightly_state):
    root = nightly_state
    v1 = live(root)
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    copy_demo_photos(root / "a", "hubble_deep_field.jpg")
    code, r2 = run(root, clock=lambda: tomorrow, keep=2)
    assert code == EXIT_OK and r2["published"], r2
    v2 = r2["version"]
    assert layout.version_time(v2) > dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)  # named "tomorrow"

    shutil.copyfile(DEMO_IMAGES / "coins.jpg", root / "a" / "rocket.jpg")  # the clock is right again; one changed
    code, r3 = run(root, keep=2)
    assert code == EXIT_OK and r3["published"] and r3["base_snapshot"] == v2, r3
    assert (r3["counts"]["carried"], r3["counts"]["changed"], r3["counts"]["new"]) == (6, 1, 0)
    assert r3["clock_skew"] == [v2] and r3["retention"]["versions_deleted"] == [v1]
    v3 = live(root)
    assert v3 == r3["version"] and v3 < v2  # named before "tomorrow", and still the newest

    # nothing changed: the run after it reuses v3 (with names as order it would re-embed against v2's snapshot
    # and retention would delete v3, the previous run's work)
    code, r4 = run(root, keep=2)
    assert code == EXIT_OK and r4["status"] == "unchanged" and r4["base_snapshot"] == v3, r4
    assert r4["counts"]["carried"] == 7 and r4["counts"].get("encoded", 0) == 0
    assert live(root) == v3 and sorted(layout.list_versions(str(root / "index"))) == sorted([v2, v3])
    assert list(WorkDir(str(root / "work")).complete_snapshots()) == [v2, v3]  # seq order: v2 first


# ---- the deadline --------------------------------------------------------------------------------------------------

def test_a_run_past_its_deadline_stops_frees_the_lock_and_keeps_the_live_index(nightly_state):
    root = nightly_state
    v1 = live(root)
    before = live_vectors(root)
    copy_demo_photos(root / "a", "hubble_deep_field.jpg")
    config = two_inputs(root)
    (root / "nightly.yaml").write_text(yaml.safe_dump(config))
    p = subprocess.run([sys.executable, "-m", "jobs.cli", "nightly", "--config", str(root / "nightly.yaml"),
                        "--deadline", "1"], cwd=REPO, env=cli_env(None), capture_output=True, text=True, timeout=120)
    assert p.returncode == EXIT_ERROR, p.stderr[-3000:]
    m = re.search(r"STOPPED: deadline of 1s passed during stage '(\w+)'", p.stderr)
    assert m, p.stderr[-3000:]
    latest = json.loads((root / "work" / "reports" / "latest.json").read_text())
    assert latest["status"] == "timeout" and latest["exit_code"] == EXIT_ERROR and not latest["published"]
    assert latest["reason"].startswith(f"deadline of 1s passed during stage '{m.group(1)}'")
    with RunLock(str(root / "work" / "nightly.lock")) as lock:
        lock.acquire({"pid": os.getpid()})  # free at once
    assert live(root) == v1
    assert_same_index(live_vectors(root), before)

    code, r = run(root)  # the next run, without a tight deadline, does the work
    assert code == EXIT_OK and r["published"] and r["counts"]["new"] == 1, r
    assert latest["run"] not in layout.list_versions(str(root / "index"))
    assert latest["run"] not in WorkDir(str(root / "work")).snapshot_names() or \
        WorkDir(str(root / "work")).read_marker(latest["run"]) is not None


# ---- lock files left by others -------------------------------------------------------------------------------------

def test_a_lock_file_naming_another_holder_is_no_lock(nightly_state):
    """The lock is the kernel's flock, not the file's content: a file left by a dead run, or naming a live pid on
    another host, does not stop a run."""
    root = nightly_state
    path = root / "work" / "nightly.lock"
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "run": "old", "started": "2020-01-01"}))
    code, r = run(root)
    assert code == EXIT_OK, r
    assert json.loads(path.read_text())["run"] == r["run"]  # the new holder's


def test_a_holder_past_its_deadline_is_named_as_stuck(nightly_state):
    lock = RunLock(str(nightly_state / "work" / "nightly.lock"))
    lock.acquire({"pid": os.getpid(), "host": "here", "run": "stuck-run", "started": "2020-01-01T00:00:00Z",
                  "deadline_at": "2020-01-01T23:00:00+00:00"})
    try:
        code, r = run(nightly_state)
    finally:
        lock.release()
    assert code == EXIT_LOCKED and "stuck-run" in r["reason"] and "past its deadline" in r["reason"], r


# ---- damaged CURRENT and snapshots ---------------------------------------------------------------------------------

def test_a_current_that_names_another_folder_stops_the_run(nightly_state):
    root = nightly_state
    (root / "index" / "CURRENT").write_text("../../etc\n")
    code, r = run(root)
    assert code == EXIT_ERROR and r["status"] == "error" and r["error"]["type"] == "IndexIntegrityError", r
    assert "'../../etc' is not a version name" in r["reason"] and r["snapshot"] is None
    assert (root / "index" / "CURRENT").read_text() == "../../etc\n"  # left for the operator to look at
    with RunLock(str(root / "work" / "nightly.lock")) as lock:
        lock.acquire({})  # and the lock is free


def test_current_at_a_half_deleted_version_is_replaced_by_the_next_run(nightly_state):
    root = nightly_state
    v1 = live(root)
    (Path(layout.manifest_url(str(root / "index"), v1))).unlink()  # a deletion cut short after the manifest
    code, r = run(root)
    assert code == EXIT_OK and r["published"] and r["live_before"] == v1, r
    assert live(root) != v1 and len(live_vectors(root)) == 6
    assert v1 not in layout.list_versions(str(root / "index"))  # its rest is removed


def test_a_table_file_added_to_a_snapshot_makes_it_incomplete(nightly_state):
    """Rows slipped into a finished snapshot would be carried into the next index unchecked."""
    work = WorkDir(str(nightly_state / "work"))
    (name,) = work.complete_snapshots()
    emb = nightly_state / "work" / "snapshots" / name / "embeddings"
    part = next(emb.glob("*.parquet"))
    shutil.copyfile(part, emb / "zz-injected.parquet")
    assert work.read_marker(name) is None and work.complete_snapshots() == {}
