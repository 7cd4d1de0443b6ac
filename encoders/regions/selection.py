"""Which regions an image keeps: the rule of the original bottom-up-attention extraction script.

This is the rule UNITER's (and so LightningDOT's) features were made with (``generate_tsv.py`` of
peteanderson80/bottom-up-attention), not the class-agnostic rule of the detectron2 port
"py-bottom-up-attention":

1. candidates are the RPN proposals with their raw boxes (not the class-regressed boxes);
2. for every object class 1..C: NMS at IoU 0.3 over the raw boxes scored by that class; a proposal's
   ``max_conf`` is its highest class score among the classes for which it survived NMS (0 if none);
3. keep proposals with ``max_conf >= 0.2``; fewer than 10 -> the top 10 by ``max_conf``; more than
   100 -> the top 100 (an image with fewer than 10 proposals keeps them all);
4. rows sorted by ``max_conf`` descending (ties: lower proposal index first).

Caffe's NMS measures boxes with the "+1" pixel convention (``area = (x2 - x1 + 1) * (y2 - y1 + 1)``);
``legacy_plus_one=True`` reproduces it exactly (IoU of the boxes with ``x2 + 1, y2 + 1``).
Only torch and torchvision are needed here (no detectron2).

Each kept region's attribute follows the original code too (``tools/demo.ipynb``): the most likely of the
400 attributes, skipping column 0 ("no attribute"), with its probability in the 401-way softmax.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import nms


def per_class_max_conf(
    boxes: torch.Tensor | np.ndarray,
    class_scores: torch.Tensor | np.ndarray,
    nms_thresh: float = 0.3,
    legacy_plus_one: bool = True,
) -> np.ndarray:
    """``max_conf`` of step 2: ``boxes`` ``[N,4]`` xyxy, ``class_scores`` ``[N,C]`` (object classes only,
    background excluded). Returns ``[N]`` float32."""
    boxes_t = torch.as_tensor(np.asarray(boxes) if not torch.is_tensor(boxes) else boxes).float().reshape(-1, 4)
    scores_t = torch.as_tensor(
        np.asarray(class_scores) if not torch.is_tensor(class_scores) else class_scores
    ).float()
    n = boxes_t.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    scores_t = scores_t.reshape(n, -1)
    boxes_t = boxes_t.detach().cpu().contiguous()
    scores_t = scores_t.detach().cpu().contiguous()
    if legacy_plus_one:
        boxes_t = boxes_t.clone()
        boxes_t[:, 2:] += 1.0
    max_conf = torch.zeros(n, dtype=torch.float32)
    for c in range(scores_t.shape[1]):
        col = scores_t[:, c]
        keep = nms(boxes_t, col, nms_thresh)
        max_conf[keep] = torch.maximum(max_conf[keep], col[keep])
    return max_conf.numpy()


def select_from_max_conf(
    max_conf: np.ndarray, conf_thresh: float = 0.2, min_boxes: int = 10, max_boxes: int = 100
) -> np.ndarray:
    """Steps 3-4: indices of the kept proposals, sorted by ``max_conf`` descending."""
    max_conf = np.asarray(max_conf, dtype=np.float32).reshape(-1)
    order = np.argsort(-max_conf, kind="stable")  # descending, ties by index
    n_pass = int((max_conf >= conf_thresh).sum())
    n_keep = min(max(n_pass, min_boxes), max_boxes, max_conf.shape[0])
    return order[:n_keep]


def select_regions(
    boxes: torch.Tensor | np.ndarray,
    class_scores: torch.Tensor | np.ndarray,
    nms_thresh: float = 0.3,
    conf_thresh: float = 0.2,
    min_boxes: int = 10,
    max_boxes: int = 100,
    legacy_plus_one: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole rule: returns ``(keep, conf)``, indices into the proposals and their ``max_conf``,
    both in output order (conf descending)."""
    max_conf = per_class_max_conf(boxes, class_scores, nms_thresh, legacy_plus_one)
    keep = select_from_max_conf(max_conf, conf_thresh, min_boxes, max_boxes)
    return keep, max_conf[keep]


def best_attributes(attr_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``attr_probs`` ``[N, 1+A]`` in Caffe order ("no attribute" at column 0) -> ``(ids, conf)``: per row the
    argmax over columns 1..A (so ids are 1..A) and its probability."""
    attr_probs = np.asarray(attr_probs, dtype=np.float32)
    if attr_probs.ndim != 2 or attr_probs.shape[1] < 2:
        raise ValueError(f"attribute probabilities must be [N, 1+A], got shape {attr_probs.shape}")
    ids = attr_probs[:, 1:].argmax(axis=1) + 1
    return ids.astype(np.int32), np.take_along_axis(attr_probs, ids[:, None], axis=1)[:, 0]
