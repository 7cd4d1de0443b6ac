"""bench.gpu as a CPU smoke run (tiny configs): it ends with a complete, sane report, within its time budget."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("detectron2")

from bench import gpu

MODES = ["fp32", "bf16"]  # fp16 takes the same path; on CPU each reduced-precision mode costs seconds


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "gpu.json"
    report = gpu.main(["--device", "cpu", "--quick", "--modes", ",".join(MODES), "--images", "1",
                       "--detector-batches", "1", "--json", str(path)])
    return report, path


def test_report_is_complete_and_sane(smoke):
    report, path = smoke
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))  # the JSON is the printed report
    assert report["modes"] == MODES and report["skipped"] == [] and report["errors"] == []
    for part, batches in (("detector", [1]), ("tower", [1, 4])):
        rows = report[part]["throughput"]
        assert sorted((r["mode"], r["batch"]) for r in rows) == sorted((m, b) for m in MODES for b in batches)
        for r in rows:
            assert r["status"] == "ok" and _finite(r["images_per_s"]) and r["images_per_s"] > 0
            assert r["peak_memory_bytes"] is None and r["run_memory_bytes"] is None  # no device memory on CPU
        for mode in MODES:
            s = report[part]["summary"][mode]
            assert _finite(s["batch1_images_per_s"]) and s["best_batch"] in batches
            assert s["best_images_per_s"] >= s["batch1_images_per_s"]
    det = report["detector"]
    assert _finite(det["select_s_per_image"]) and all(10 <= n <= 100 for n in det["num_boxes_fp32"])
    for mode in MODES[1:]:
        p = det["parity_vs_fp32"][mode]
        assert 0 <= p["kept_agreement"] <= 1 and 0 <= p["same_num_boxes"] <= 1
        assert _finite(p["max_feature_abs_diff"]) and _finite(p["max_feature_rel_diff"])
        assert 0 <= p["max_feature_rel_diff"] < 0.5  # reduced precision, not a different model
        for cos in (report["tower"]["parity_vs_fp32"][mode], report["end_to_end_parity_vs_fp32"][mode]):
            assert 0.9 < cos["cosine_min"] <= cos["cosine_mean"] <= 1 + 1e-9


def test_time_budget_ends_with_a_report(capsys):
    report = gpu.main(["--device", "cpu", "--quick", "--modes", "fp32,bf16", "--budget-s", "0"])
    assert report["skipped"] and report["detector"]["parity_vs_fp32"] == {}
    assert {r["status"] for r in report["detector"]["throughput"] + report["tower"]["throughput"]} == {
        gpu.SKIPPED_BUDGET}
    assert "skipped (time budget)" in capsys.readouterr().out


def test_modes_must_start_with_the_reference():
    with pytest.raises(SystemExit):
        gpu.parse_args(["--modes", "bf16,fp32"])
