"""``CaffeRPN`` (PROPOSAL_GENERATOR_REGISTRY): the RPN head of detectron2 with the proposal rule of the Caffe
proposal layer: "+1" box decoding, clip to ``[0, W-1]``, drop boxes under ``MIN_SIZE * im_scale`` (original-image
pixels) *before* taking the top ``PRE_NMS_TOPK_TEST`` by score, NMS with "+1" areas."""

from __future__ import annotations

import torch
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.structures import Boxes, ImageList, Instances
from torchvision.ops import nms


@PROPOSAL_GENERATOR_REGISTRY.register()
class CaffeRPN(RPN):
    """detectron2's RPN with py-faster-rcnn's test-time proposal layer (see the module docstring).

    ``forward`` takes the per-image test scales (``im_scales``) so that the minimum proposal size is measured
    in original-image pixels, as Caffe does; without them the scale is 1.
    """

    def forward(self, images: ImageList, features, gt_instances=None, im_scales=None):
        if self.training:
            return super().forward(images, features, gt_instances)
        feats = [features[f] for f in self.in_features]
        if len(feats) != 1:
            raise ValueError("CaffeRPN supports one feature level (the C4 model)")
        anchors = self.anchor_generator(feats)[0].tensor
        logits, deltas = self.rpn_head(feats)
        logits = logits[0].permute(0, 2, 3, 1).flatten(1)  # (N, H*W*A)
        b = self.anchor_generator.box_dim
        d = deltas[0]
        deltas = d.view(d.shape[0], -1, b, d.shape[-2], d.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
        scales = list(im_scales) if im_scales is not None else [1.0] * len(images)
        out = []
        for i, (h, w) in enumerate(images.image_sizes):
            boxes, scores = caffe_proposals(
                anchors, logits[i], deltas[i], (h, w), scales[i], self.min_box_size,
                self.pre_nms_topk[False], self.post_nms_topk[False], self.nms_thresh,
                self.box2box_transform.weights,
            )
            inst = Instances((h, w))
            inst.proposal_boxes = Boxes(boxes)
            inst.objectness_logits = scores
            out.append(inst)
        return out, {}


def caffe_proposals(
    anchors: torch.Tensor, logits: torch.Tensor, deltas: torch.Tensor, image_size: tuple[int, int], im_scale: float,
    min_size: float, pre_nms_topk: int, post_nms_topk: int, nms_thresh: float, weights=(1.0, 1.0, 1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """py-faster-rcnn's ``ProposalLayer.forward`` (test) for one image: returns ``(boxes [R,4], logits [R])``."""
    h, w = image_size
    wx, wy, ww, wh = (float(v) for v in weights)
    anchors = anchors.float()
    widths = anchors[:, 2] - anchors[:, 0] + 1.0
    heights = anchors[:, 3] - anchors[:, 1] + 1.0
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    dx, dy, dw, dh = (deltas[:, k].float() for k in range(4))
    pred_ctr_x = dx / wx * widths + ctr_x
    pred_ctr_y = dy / wy * heights + ctr_y
    pred_w = torch.exp(dw / ww) * widths
    pred_h = torch.exp(dh / wh) * heights
    boxes = torch.stack(
        [pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h, pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h],
        dim=1,
    )
    boxes = torch.nan_to_num(boxes, nan=0.0)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
    min_px = float(min_size) * float(im_scale)
    keep = ((boxes[:, 2] - boxes[:, 0] + 1) >= min_px) & ((boxes[:, 3] - boxes[:, 1] + 1) >= min_px)
    if not bool(keep.any()):
        # a tiny image where no box reaches the minimum size: Caffe would have no proposal at all (and fail);
        # keep every box instead, so the image still gets regions
        keep = torch.ones_like(keep)
    boxes, scores = boxes[keep], logits[keep].float()
    order = torch.argsort(scores, descending=True, stable=True)
    if pre_nms_topk > 0:
        order = order[:pre_nms_topk]
    boxes, scores = boxes[order], scores[order]
    plus_one = boxes.clone()
    plus_one[:, 2:] += 1.0  # Caffe's NMS measures areas as (x2 - x1 + 1) * (y2 - y1 + 1)
    kept = nms(plus_one, scores, nms_thresh)
    if post_nms_topk > 0:
        kept = kept[:post_nms_topk]
    return boxes[kept], scores[kept]
