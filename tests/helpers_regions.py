"""Shared helpers for the region-feature tests: small real photos, random well-formed regions, and a transcription of
the original Caffe selection code (py_cpu_nms + generate_tsv.py's loop) to check our rule against."""

from __future__ import annotations

import functools

import numpy as np

from encoders.regions.types import Regions


@functools.cache
def photo(name: str, height: int, width: int) -> np.ndarray:
    """A real photograph from skimage.data, resized to ``height`` x ``width`` (uint8 RGB)."""
    from PIL import Image
    from skimage import data

    arr = getattr(data, name)()
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    arr = arr[:, :, :3]
    im = Image.fromarray(arr).resize((width, height), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8).copy()


def photos() -> list[np.ndarray]:
    """Four photos: two share a size (batched without padding), two differ."""
    return [
        photo("astronaut", 256, 256),
        photo("coffee", 200, 300),
        photo("chelsea", 200, 300),
        photo("rocket", 300, 200),
    ]


# ---- the original Caffe code, transcribed (peteanderson80/bottom-up-attention) ------------------------------
def py_cpu_nms(dets: np.ndarray, thresh: float) -> list[int]:
    """Fast R-CNN's py_cpu_nms (with the "+1" pixel convention)."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        inds = np.where(ovr <= thresh)[0]
        order = order[inds + 1]
    return keep


def caffe_max_conf(cls_boxes: np.ndarray, scores: np.ndarray, nms_thresh: float = 0.3) -> np.ndarray:
    """generate_tsv.py's loop; ``scores`` [N, 1+C] with background at column 0."""
    max_conf = np.zeros(cls_boxes.shape[0], dtype=np.float32)
    for cls_ind in range(1, scores.shape[1]):
        cls_scores = scores[:, cls_ind]
        dets = np.hstack((cls_boxes, cls_scores[:, np.newaxis])).astype(np.float32)
        keep = np.array(py_cpu_nms(dets, nms_thresh))
        max_conf[keep] = np.where(cls_scores[keep] > max_conf[keep], cls_scores[keep], max_conf[keep])
    return max_conf


def caffe_keep(max_conf: np.ndarray, conf_thresh=0.2, min_boxes=10, max_boxes=100) -> np.ndarray:
    """generate_tsv.py's choice, then sorted by conf descending (docs/conventions.md, "Which regions", step 4)."""
    keep_boxes = np.where(max_conf >= conf_thresh)[0]
    order = np.argsort(-max_conf, kind="stable")
    if len(keep_boxes) < min_boxes:
        keep_boxes = order[:min_boxes]
    elif len(keep_boxes) > max_boxes:
        keep_boxes = order[:max_boxes]
    return keep_boxes[np.argsort(-max_conf[keep_boxes], kind="stable")]


def caffe_proposal_layer(anchors, fg_scores, deltas, im_h, im_w, im_scale, min_size=16, pre=6000, post=300,
                         nms_thresh=0.7):
    """py-faster-rcnn's ProposalLayer.forward at test time (bbox_transform_inv, clip_boxes, _filter_boxes)."""
    widths = anchors[:, 2] - anchors[:, 0] + 1.0
    heights = anchors[:, 3] - anchors[:, 1] + 1.0
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    dx, dy, dw, dh = deltas[:, 0], deltas[:, 1], deltas[:, 2], deltas[:, 3]
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = np.exp(dw) * widths
    pred_h = np.exp(dh) * heights
    boxes = np.stack([pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                      pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h], axis=1)
    boxes[:, 0::2] = np.maximum(np.minimum(boxes[:, 0::2], im_w - 1), 0)
    boxes[:, 1::2] = np.maximum(np.minimum(boxes[:, 1::2], im_h - 1), 0)
    ws = boxes[:, 2] - boxes[:, 0] + 1
    hs = boxes[:, 3] - boxes[:, 1] + 1
    keep = np.where((ws >= min_size * im_scale) & (hs >= min_size * im_scale))[0]
    boxes, scores = boxes[keep], fg_scores[keep]
    order = np.argsort(-scores, kind="stable")[:pre]
    boxes, scores = boxes[order], scores[order]
    keep = py_cpu_nms(np.hstack([boxes, scores[:, None]]).astype(np.float32), nms_thresh)[:post]
    return boxes[keep], scores[keep]


def caffe_attributes(pool5: np.ndarray, w: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The attribute branch of the Caffe test net (test.prototxt: ``predicted_cls`` ArgMax over ``cls_score``,
    ``cls_embedding`` Embed, concat with pool5, ``fc_attr`` + ReLU, ``attr_score``, ``attr_prob`` Softmax) and the
    reading of tools/demo.ipynb (best attribute skipping column 0). ``w``: Caffe-ordered blobs ``cls_score_w/b``,
    ``cls_embedding_w``, ``fc_attr_w/b``, ``attr_score_w/b``. Returns ``(attr_prob, ids, conf)``."""
    x = pool5.astype(np.float64)
    predicted_cls = np.argmax(x @ w["cls_score_w"].T + w["cls_score_b"], axis=1)
    concat = np.hstack([x, w["cls_embedding_w"][predicted_cls]])
    fc_attr = np.maximum(concat @ w["fc_attr_w"].T + w["fc_attr_b"], 0)
    score = fc_attr @ w["attr_score_w"].T + w["attr_score_b"]
    e = np.exp(score - score.max(axis=1, keepdims=True))
    attr_prob = e / e.sum(axis=1, keepdims=True)
    ids = np.argmax(attr_prob[:, 1:], axis=1) + 1
    return attr_prob, ids, attr_prob[np.arange(len(ids)), ids]


def make_regions(seed: int, n: int, width: int = 640, height: int = 480, soft: bool = True,
                 attrs: bool = False) -> Regions:
    """Random but well-formed regions (sorted conf, boxes inside the image) for the feature-file tests."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, [width * 0.6, height * 0.6], size=(n, 2))
    wh = rng.uniform(10, [width * 0.4, height * 0.4], size=(n, 2))
    boxes = np.hstack([xy, xy + wh]).astype(np.float32)
    conf = np.sort(rng.uniform(0.05, 0.95, size=n))[::-1].astype(np.float32)
    probs = rng.dirichlet(np.full(1601, 0.05), size=n).astype(np.float32) if soft else None
    feats = rng.gamma(1.0, 1.0, size=(n, 2048)).astype(np.float32)
    attr_ids = rng.integers(1, 401, size=n) if attrs else None
    attr_conf = rng.uniform(0, 1, size=n) if attrs else None
    return Regions.from_boxes(feats, boxes, conf, probs, width, height, attr_ids, attr_conf)


def uniter_record(r: Regions) -> dict[str, np.ndarray]:
    """A UNITER image-DB record (fp16 arrays) of these regions."""
    return {
        "features": r.features.astype(np.float16),
        "norm_bb": r.norm_bb.astype(np.float16),
        "conf": r.conf.astype(np.float16),
        "soft_labels": r.soft_labels.astype(np.float16),
    }


def write_lmdb(path, records: dict[str, bytes]) -> None:
    """A UNITER image DB (LMDB) holding these packed records and the ``__keys__`` list."""
    import json

    import lmdb

    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for k, v in records.items():
            txn.put(k.encode(), v)
        txn.put(b"__keys__", json.dumps(list(records)).encode())
    env.close()
