"""The region-selection rule on constructed scores and boxes: exact, against the original Caffe code."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.regions.selection import per_class_max_conf, select_from_max_conf, select_regions
from tests.helpers_regions import caffe_keep, caffe_max_conf


def _random_case(rng: np.random.Generator, n: int, c: int, peak: float):
    """Clustered boxes (so NMS suppresses) and peaked class scores (so some pass 0.2)."""
    centres = rng.uniform(50, 450, size=(max(1, n // 6), 2))
    pick = centres[rng.integers(0, len(centres), size=n)] + rng.normal(0, 12, size=(n, 2))
    wh = rng.uniform(20, 160, size=(n, 2))
    boxes = np.hstack([pick - wh / 2, pick + wh / 2]).astype(np.float32)
    logits = rng.normal(0, 1, size=(n, c + 1)) + peak * (rng.random((n, c + 1)) < 0.02)
    scores = np.exp(logits - logits.max(1, keepdims=True))
    scores = (scores / scores.sum(1, keepdims=True)).astype(np.float32)
    return boxes, scores


@pytest.mark.parametrize("seed,n,c,peak", [(0, 150, 40, 6.0), (1, 300, 80, 9.0), (2, 60, 200, 0.0), (3, 40, 10, 12.0)])
def test_max_conf_matches_caffe_loop(seed, n, c, peak):
    rng = np.random.default_rng(seed)
    boxes, scores = _random_case(rng, n, c, peak)
    ours = per_class_max_conf(boxes, scores[:, 1:], 0.3, legacy_plus_one=True)
    ref = caffe_max_conf(boxes, scores, 0.3)
    np.testing.assert_array_equal(ours, ref)
    keep, conf = select_regions(boxes, scores[:, 1:])
    expected = caffe_keep(ref)
    np.testing.assert_array_equal(keep, expected)
    np.testing.assert_array_equal(conf, ref[expected])


def test_cases_cover_all_three_branches():
    counts = set()
    for seed, n, c, peak in [(0, 150, 40, 6.0), (1, 300, 80, 9.0), (2, 60, 200, 0.0)]:
        boxes, scores = _random_case(np.random.default_rng(seed), n, c, peak)
        mc = caffe_max_conf(boxes, scores)
        n_pass = int((mc >= 0.2).sum())
        counts.add("min" if n_pass < 10 else "max" if n_pass > 100 else "mid")
    assert counts == {"min", "mid", "max"}


def test_threshold_is_inclusive_and_clamped():
    conf = np.array([0.5, 0.2, 0.19999, 0.9] + [0.0] * 20, dtype=np.float32)
    keep = select_from_max_conf(conf, 0.2, min_boxes=2, max_boxes=100)
    assert keep.tolist() == [3, 0, 1]  # 0.2 itself passes; sorted descending
    keep = select_from_max_conf(conf, 0.2, min_boxes=10, max_boxes=100)
    assert len(keep) == 10 and keep[:4].tolist() == [3, 0, 1, 2]
    many = np.linspace(0.99, 0.21, 150).astype(np.float32)
    keep = select_from_max_conf(many[::-1].copy(), 0.2, 10, 100)
    assert len(keep) == 100 and keep[0] == 149 and np.all(np.diff(many[::-1][keep]) <= 0)


def test_fewer_proposals_than_min_boxes_keeps_all():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 90, 90], [1, 1, 11, 11]], dtype=np.float32)
    scores = np.array([[0.1, 0.05], [0.01, 0.02], [0.3, 0.01]], dtype=np.float32)
    keep, conf = select_regions(boxes, scores)
    # box 2 (0.3) suppresses box 0 in class 0; box 0 survives class 1 (0.05)
    assert keep.tolist() == [2, 0, 1]
    np.testing.assert_allclose(conf, [0.3, 0.05, 0.02])


def test_raw_boxes_nms_uses_plus_one_convention():
    # IoU 0.28 without +1 (kept), above 0.3 with Caffe's +1 areas (suppressed)
    a = np.array([0, 0, 10, 10], dtype=np.float32)
    b = np.array([0, 0, 10, 2.8], dtype=np.float32)  # IoU 0.28; with +1: 41.8 / 121 = 0.345
    boxes = np.stack([a, b])
    scores = np.array([[0.9], [0.8]], dtype=np.float32)
    assert per_class_max_conf(boxes, scores, 0.3, legacy_plus_one=True).tolist() == pytest.approx([0.9, 0.0])
    assert per_class_max_conf(boxes, scores, 0.3, legacy_plus_one=False).tolist() == pytest.approx([0.9, 0.8])


def test_empty_input():
    keep, conf = select_regions(np.zeros((0, 4), np.float32), np.zeros((0, 5), np.float32))
    assert keep.shape == (0,) and conf.shape == (0,)
