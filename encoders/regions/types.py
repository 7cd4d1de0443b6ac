"""The per-image result of region-feature extraction (numpy only: no torch, no detectron2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURE_DIM = 2048
NUM_CLASSES_WITH_BG = 1601  # Visual Genome: 1600 object classes + background (index 0)
NUM_ATTRIBUTES_WITH_NONE = 401  # Visual Genome: 400 attributes + "no attribute" (index 0)


def normalize_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[N,4]`` xyxy pixel boxes -> ``[N,6]`` ``x1/W, y1/H, x2/W, y2/H, w/W, h/H`` (float32)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = float(width), float(height)
    out = np.empty((boxes.shape[0], 6), dtype=np.float64)
    out[:, 0] = boxes[:, 0] / w
    out[:, 1] = boxes[:, 1] / h
    out[:, 2] = boxes[:, 2] / w
    out[:, 3] = boxes[:, 3] / h
    out[:, 4] = (boxes[:, 2] - boxes[:, 0]) / w
    out[:, 5] = (boxes[:, 3] - boxes[:, 1]) / h
    return out.astype(np.float32)


@dataclass
class Regions:
    """Bottom-up-attention region features of one image.

    Rows are regions, sorted by ``conf`` descending. ``boxes`` are xyxy pixels in the original image and
    ``norm_bb`` is ``[x1/W, y1/H, x2/W, y2/H, w/W, h/H]`` against the original size ``width`` x ``height``.
    ``soft_labels`` is the 1601-way class distribution with background at index 0 (``None`` when the
    source has none, e.g. BUTD TSV files).

    ``attr_ids`` / ``attr_conf`` (``None`` when the source has none): each region's most likely attribute, in
    the original Caffe model's order: id ``a`` in 1..400 is line ``a - 1`` of Visual Genome's
    ``attributes_vocab.txt`` (0, "no attribute", is never chosen), and its probability under Caffe's 401-way
    ``attr_prob`` softmax (which includes "no attribute", so confidences are small where a region has none).

    Sources that do not know the image size (UNITER image DBs store only ``norm_bb``) use
    ``width = height = 0`` and give ``boxes`` in normalised coordinates (``norm_bb[:, :4]``).
    """

    features: np.ndarray
    boxes: np.ndarray
    norm_bb: np.ndarray
    conf: np.ndarray
    soft_labels: np.ndarray | None
    width: int
    height: int
    attr_ids: np.ndarray | None = None
    attr_conf: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.features = np.ascontiguousarray(self.features, dtype=np.float32)
        n = self.features.shape[0]
        self.boxes = np.ascontiguousarray(self.boxes, dtype=np.float32).reshape(n, 4)
        self.norm_bb = np.ascontiguousarray(self.norm_bb, dtype=np.float32).reshape(n, 6)
        self.conf = np.ascontiguousarray(self.conf, dtype=np.float32).reshape(n)
        if self.soft_labels is not None:
            soft = np.ascontiguousarray(self.soft_labels, dtype=np.float32)
            self.soft_labels = soft.reshape(n, -1) if n else soft.reshape(0, soft.shape[-1] if soft.ndim else 0)
        if (self.attr_ids is None) != (self.attr_conf is None):
            raise ValueError("attr_ids and attr_conf come together (both or neither)")
        if self.attr_ids is not None:
            self.attr_ids = np.ascontiguousarray(self.attr_ids, dtype=np.int32).reshape(n)
            self.attr_conf = np.ascontiguousarray(self.attr_conf, dtype=np.float32).reshape(n)
        if self.features.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {self.features.shape}")
        self.width = int(self.width)
        self.height = int(self.height)

    @property
    def num_boxes(self) -> int:
        return int(self.features.shape[0])

    @classmethod
    def from_boxes(
        cls,
        features: np.ndarray,
        boxes: np.ndarray,
        conf: np.ndarray,
        soft_labels: np.ndarray | None,
        width: int,
        height: int,
        attr_ids: np.ndarray | None = None,
        attr_conf: np.ndarray | None = None,
    ) -> Regions:
        """Build from pixel boxes, computing ``norm_bb`` against ``width`` x ``height``."""
        return cls(features, boxes, normalize_boxes(boxes, width, height), conf, soft_labels, width, height,
                   attr_ids, attr_conf)
