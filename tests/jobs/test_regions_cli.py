"""``ldot regions`` end to end on a few small real photos (tiny config, random weights): the Beam pipeline in its
regions-only mode, with the output tables of ``ldot index``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytest.importorskip("detectron2")

from encoders.regions.config_files import TINY_CONFIG
from encoders.regions.formats import read_regions
from encoders.regions.formats.regions_lookup import build_regions_map, open_region_store, read_regions_map
from tests.helpers_pipeline import read_table
from tests.helpers_regions import photo


@pytest.fixture()
def image_dir(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(photo("astronaut", 160, 160)).save(root / "astronaut.jpg", quality=90)
    Image.fromarray(photo("coffee", 120, 180)).convert("L").save(root / "sub" / "coffee.png")  # grayscale
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image, not listed")
    return root


def test_cli_end_to_end(tmp_path, image_dir, ldot):
    out = tmp_path / "out"
    extra = tmp_path / "chelsea.jpg"
    Image.fromarray(photo("chelsea", 150, 200)).save(extra)
    result = ldot("regions", str(image_dir), str(extra), str(tmp_path / "missing.jpg"), "--output", str(out),
                  "--detector-config", str(TINY_CONFIG), "--random-weights", "--batch-size", "2", "--device", "cpu",
                  "--rows-per-file", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["images"] == 3 and summary["failures"] == 2
    assert summary["fingerprint"].startswith("random-")
    assert "broken.jpg" in result.stderr and "--random-weights" in result.stderr
    files = sorted((out / "regions").glob("*.parquet"))
    assert summary["files"] == [str(f) for f in files]
    assert sum(pq.read_metadata(f).num_rows for f in files) == 3
    assert all(pq.read_metadata(f).num_rows <= 2 for f in files)  # --rows-per-file
    got = dict(read_regions(out / "regions"))
    assert set(got) == {"astronaut.jpg", "sub/coffee.png", "chelsea.jpg"}
    assert (got["astronaut.jpg"].width, got["astronaut.jpg"].height) == (160, 160)
    assert (got["sub/coffee.png"].width, got["sub/coffee.png"].height) == (180, 120)
    for r in got.values():
        assert 10 <= r.num_boxes <= 100 and r.features.shape[1] == 2048
        assert r.soft_labels.shape == (r.num_boxes, 1601)
        assert np.all(np.diff(r.conf) <= 0)
    # one image per row group, and the image_id map re-ranking looks regions up with
    assert all(pq.read_metadata(f).num_row_groups == pq.read_metadata(f).num_rows for f in files)
    assert read_regions_map(str(out / "regions")).equals(build_regions_map(str(out / "regions")), check_metadata=True)
    fetched = open_region_store(str(out / "regions"), write_map=False).fetch(["chelsea.jpg", "missing.jpg"])
    assert list(fetched) == ["chelsea.jpg"]
    np.testing.assert_array_equal(fetched["chelsea.jpg"].features, got["chelsea.jpg"].features)
    uris = [r["uri"] for r in read_table(out / "regions")]
    assert str(extra) in uris
    failures = read_table(out / "failures")
    assert {(f["image_id"], f["stage"]) for f in failures} == {("broken.jpg", "decode"), ("missing.jpg", "read")}
    assert all(f["error"] and f["message"] and f["uri"] for f in failures)


def test_cli_glob_and_no_soft_labels(tmp_path, image_dir, ldot):
    out = tmp_path / "out2"
    result = ldot("regions", str(image_dir / "**" / "*.png"), "--output", str(out), "--detector-config",
                  str(TINY_CONFIG), "--random-weights", "--no-soft-labels", "--device", "cpu")
    assert result.exit_code == 0, result.output
    got = dict(read_regions(out / "regions"))
    assert list(got) == ["sub/coffee.png"] and got["sub/coffee.png"].soft_labels is None
    assert read_table(out / "failures") == []


def test_cli_requires_weights_or_random(tmp_path, image_dir, ldot):
    result = ldot("regions", str(image_dir), "--output", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "--detector-weights" in result.output and "--random-weights" in result.output
    both = ldot("regions", str(image_dir), "--output", str(tmp_path / "o"),
                "--random-weights", "--detector-weights", "w.pkl")
    assert both.exit_code == 2 and "not both" in both.output
