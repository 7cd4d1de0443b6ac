"""``CaffeAnchorGenerator`` (ANCHOR_GENERATOR_REGISTRY): py-faster-rcnn's ``generate_anchors`` (base 16, rounded
widths, "+1" centres, ratio-major order), so RPN weights converted from Caffe line up."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from detectron2.modeling import ANCHOR_GENERATOR_REGISTRY
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

# detectron2 v0.6's anchor grid calls torch.meshgrid without ``indexing=`` (same result, a warning per call)
warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)


def caffe_generate_anchors(base_size: int, ratios, scales) -> np.ndarray:
    """py-faster-rcnn ``generate_anchors``: ratio-major, rounded sizes, "+1" pixel convention."""
    base = np.array([0.0, 0.0, base_size - 1.0, base_size - 1.0])

    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mk(ws, hs, xc, yc):
        ws, hs = np.asarray(ws)[:, None], np.asarray(hs)[:, None]
        return np.hstack((xc - 0.5 * (ws - 1), yc - 0.5 * (hs - 1), xc + 0.5 * (ws - 1), yc + 0.5 * (hs - 1)))

    w, h, xc, yc = whctrs(base)
    ws = np.round(np.sqrt(w * h / np.asarray(ratios, dtype=np.float64)))
    hs = np.round(ws * np.asarray(ratios, dtype=np.float64))
    ratio_anchors = mk(ws, hs, xc, yc)
    out = []
    for a in ratio_anchors:
        w, h, xc, yc = whctrs(a)
        s = np.asarray(scales, dtype=np.float64)
        out.append(mk(w * s, h * s, xc, yc))
    return np.vstack(out)


@ANCHOR_GENERATOR_REGISTRY.register()
class CaffeAnchorGenerator(DefaultAnchorGenerator):
    """Anchors as the Caffe model was trained with: ``SIZES`` are ``base * scales`` (64..512 = 16 * 4..32)."""

    def generate_cell_anchors(self, sizes=(64, 128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0)):
        base = int(self.strides[0])
        scales = [float(s) / base for s in sizes]
        return torch.tensor(caffe_generate_anchors(base, aspect_ratios, scales), dtype=torch.float32)
