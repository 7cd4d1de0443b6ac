"""The bottom-up-attention Faster R-CNN (ResNet C4, Visual Genome) built from detectron2 parts.

Everything stock detectron2 lacks is registered through its registries (nothing is forked):

- ``build_butd_resnet_backbone`` (BACKBONE_REGISTRY): ResNet res2..res4 with the Caffe stem, whose
  max-pool has no padding and rounds up (``ceil_mode``), as in the converted Caffe model.
- ``CaffeAnchorGenerator`` (ANCHOR_GENERATOR_REGISTRY): py-faster-rcnn's ``generate_anchors`` (base 16,
  rounded widths, "+1" centres, ratio-major order), so RPN weights converted from Caffe line up.
- ``CaffeRPN`` (PROPOSAL_GENERATOR_REGISTRY): the RPN head of detectron2 with the proposal rule of the
  Caffe proposal layer: "+1" box decoding, clip to ``[0, W-1]``, drop boxes under ``MIN_SIZE * im_scale``
  (original-image pixels) *before* taking the top ``PRE_NMS_TOPK_TEST`` by score, NMS with "+1" areas.
- ``ButdRes5ROIHeads`` (ROI_HEADS_REGISTRY): res5 on ROI-pooled crops with a configurable stride
  (``MODEL.BUTD.RES5_STRIDE``, 1 = res5 not halved) and ``MODEL.RESNETS.RES5_DILATION``; its box
  predictor ``ButdOutputLayers`` (a detectron2 ``FastRCNNOutputLayers``) carries the attribute head
  (``cls_embedding`` -> ``fc_attr`` -> ``attr_score``) under py-bottom-up-attention's parameter names.
- ``ButdRCNN`` (META_ARCH_REGISTRY): a GeneralizedRCNN whose ``extract`` returns, per image, the RPN
  proposals (raw boxes), the class (and attribute) probabilities and the mean-pooled res5 features, with images of
  the same size batched together and no padding, so an image's result never depends on its batch-mates.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from detectron2.config import CfgNode, configurable, get_cfg
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import (
    ANCHOR_GENERATOR_REGISTRY,
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    ROI_HEADS_REGISTRY,
    GeneralizedRCNN,
)
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone.resnet import BottleneckBlock, CNNBlockBase, ResNet
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.modeling.roi_heads import Res5ROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, ImageList, Instances
from fvcore.nn import weight_init
from torch import nn
from torchvision.ops import nms

from encoders.regions.config_files import DetectorConfigError, config_path

# detectron2 v0.6's anchor grid calls torch.meshgrid without ``indexing=`` (same result, a warning per call)
warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)

_DEPTH_BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def add_butd_config(cfg: CfgNode) -> CfgNode:
    """Config keys of the bottom-up-attention model (``MODEL.BUTD.*``)."""
    cfg.MODEL.BUTD = CfgNode()
    # blocks in res2..res5; empty = the table for MODEL.RESNETS.DEPTH
    cfg.MODEL.BUTD.NUM_BLOCKS_PER_STAGE = []
    cfg.MODEL.BUTD.RES5_STRIDE = 1  # 1: res5 runs at the pooled resolution (not halved)
    cfg.MODEL.BUTD.RES5_OUT_CHANNELS = 2048  # the region feature size LightningDOT reads
    cfg.MODEL.BUTD.ATTRIBUTE_ON = True
    cfg.MODEL.BUTD.NUM_ATTRIBUTES = 400  # + 1 "no attribute" output
    cfg.MODEL.BUTD.ATTRIBUTE_EMBED_DIM = 256
    cfg.MODEL.BUTD.ATTRIBUTE_HIDDEN_DIM = 512
    # region selection (see encoders.regions.selection)
    cfg.MODEL.BUTD.NMS_THRESH = 0.3
    cfg.MODEL.BUTD.CONF_THRESH = 0.2
    cfg.MODEL.BUTD.MIN_BOXES = 10
    cfg.MODEL.BUTD.MAX_BOXES = 100
    cfg.MODEL.BUTD.LEGACY_PLUS_ONE = True
    # crops through res5 per chunk (bounds memory; results do not depend on it)
    cfg.MODEL.BUTD.ROI_CHUNK = 512
    return cfg


def load_config(path: str | None, device: str = "cpu") -> CfgNode:
    """A detector YAML (path, or a shipped config's name) on detectron2's defaults plus ours. Loaded with
    ``allow_unsafe=False``, ``_BASE_`` files included: a config file can never run code."""
    cfg = add_butd_config(get_cfg())
    source = config_path(path)
    try:
        cfg.merge_from_file(source, allow_unsafe=False)
    except (OSError, yaml.YAMLError, KeyError, ValueError, AssertionError) as e:  # yacs: KeyError, AssertionError
        raise DetectorConfigError(f"detector config {source}: {type(e).__name__}: {e}") from e
    cfg.MODEL.DEVICE = str(device)
    cfg.freeze()
    return cfg


def _blocks_per_stage(cfg: CfgNode) -> list[int]:
    blocks = list(cfg.MODEL.BUTD.NUM_BLOCKS_PER_STAGE)
    if blocks:
        if len(blocks) != 4:
            raise ValueError(f"MODEL.BUTD.NUM_BLOCKS_PER_STAGE needs 4 entries, got {blocks}")
        return blocks
    depth = cfg.MODEL.RESNETS.DEPTH
    if depth not in _DEPTH_BLOCKS:
        raise ValueError(f"MODEL.RESNETS.DEPTH {depth} not supported (bottleneck ResNets: {sorted(_DEPTH_BLOCKS)})")
    return _DEPTH_BLOCKS[depth]


class CaffeStem(CNNBlockBase):
    """7x7/2 conv + norm + relu + 3x3/2 max-pool with no padding and ``ceil_mode`` (Caffe's pooling)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "FrozenBN"):
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = Conv2d(
            in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False,
            norm=get_norm(norm, out_channels),
        )
        weight_init.c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)


@BACKBONE_REGISTRY.register()
def build_butd_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """ResNet res2..res4 (C4) with the Caffe stem; res5 lives in the ROI head."""
    r = cfg.MODEL.RESNETS
    if list(r.OUT_FEATURES) != ["res4"]:
        raise ValueError(f"the C4 model reads res4 only; MODEL.RESNETS.OUT_FEATURES is {r.OUT_FEATURES}")
    stem = CaffeStem(input_shape.channels, r.STEM_OUT_CHANNELS, r.NORM)
    blocks = _blocks_per_stage(cfg)
    in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    bottleneck = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for idx in range(3):  # res2, res3, res4
        stages.append(
            ResNet.make_stage(
                block_class=BottleneckBlock,
                num_blocks=blocks[idx],
                stride_per_block=[1 if idx == 0 else 2] + [1] * (blocks[idx] - 1),
                in_channels=in_channels,
                bottleneck_channels=bottleneck,
                out_channels=out_channels,
                num_groups=r.NUM_GROUPS,
                norm=r.NORM,
                stride_in_1x1=r.STRIDE_IN_1X1,
            )
        )
        in_channels, out_channels, bottleneck = out_channels, out_channels * 2, bottleneck * 2
    return ResNet(stem, stages, out_features=["res4"]).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


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


class ButdOutputLayers(FastRCNNOutputLayers):
    """detectron2's box predictor plus the attribute branch of the Caffe model (``cls_embedding`` -> ``fc_attr``
    -> relu -> ``attr_score``), under py-bottom-up-attention's names, so its published ``.pkl`` files load as
    they are (``roi_heads.box_predictor.{cls_embedding,fc_attr,attr_score}.*``).

    Rows indexed by object class (``cls_score``, ``cls_embedding``) or by attribute (``attr_score``) are in
    detectron2's order, as in those files: background / "no attribute" LAST. ``forward`` is detectron2's
    (class logits, box deltas); the attribute branch runs only when asked (:meth:`attribute_logits`).
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_attributes: int, attribute_embed_dim: int,
                 attribute_hidden_dim: int, **kwargs):
        super().__init__(input_shape, **kwargs)
        in_dim = self.cls_score.in_features
        self.cls_embedding = nn.Embedding(self.num_classes + 1, attribute_embed_dim)
        self.fc_attr = nn.Linear(in_dim + attribute_embed_dim, attribute_hidden_dim)
        self.attr_score = nn.Linear(attribute_hidden_dim, num_attributes + 1)
        for m in (self.fc_attr, self.attr_score):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict:
        ret = super().from_config(cfg, input_shape)
        b = cfg.MODEL.BUTD
        ret.update(num_attributes=b.NUM_ATTRIBUTES, attribute_embed_dim=b.ATTRIBUTE_EMBED_DIM,
                   attribute_hidden_dim=b.ATTRIBUTE_HIDDEN_DIM)
        return ret

    def attribute_logits(self, features: torch.Tensor, class_logits: torch.Tensor) -> torch.Tensor:
        """``[R, A+1]`` attribute logits, "no attribute" last. As Caffe's test net: the embedded class is the
        argmax over ALL class logits, background included (its ``predicted_cls`` ArgMax layer)."""
        x = torch.cat([features, self.cls_embedding(class_logits.argmax(dim=1))], dim=1)
        return self.attr_score(F.relu(self.fc_attr(x)))


@ROI_HEADS_REGISTRY.register()
class ButdRes5ROIHeads(Res5ROIHeads):
    """Res5 head of the bottom-up-attention model (stride and dilation from the config) + attributes."""

    @configurable
    def __init__(self, *, roi_chunk: int = 512, **kwargs):
        super().__init__(**kwargs)
        self.roi_chunk = int(roi_chunk)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        b = cfg.MODEL.BUTD
        ret["roi_chunk"] = b.ROI_CHUNK
        if b.ATTRIBUTE_ON:
            ret["box_predictor"] = ButdOutputLayers(cfg, ShapeSpec(channels=b.RES5_OUT_CHANNELS, height=1, width=1))
        return ret

    @property
    def has_attributes(self) -> bool:
        return isinstance(self.box_predictor, ButdOutputLayers)

    @classmethod
    def _build_res5_block(cls, cfg):
        r = cfg.MODEL.RESNETS
        num_blocks = _blocks_per_stage(cfg)[3]
        in_channels = r.RES2_OUT_CHANNELS * 4  # res4 output
        out_channels = cfg.MODEL.BUTD.RES5_OUT_CHANNELS
        blocks = ResNet.make_stage(
            block_class=BottleneckBlock,
            num_blocks=num_blocks,
            stride_per_block=[cfg.MODEL.BUTD.RES5_STRIDE] + [1] * (num_blocks - 1),
            in_channels=in_channels,
            bottleneck_channels=r.NUM_GROUPS * r.WIDTH_PER_GROUP * 8,
            out_channels=out_channels,
            num_groups=r.NUM_GROUPS,
            norm=r.NORM,
            stride_in_1x1=r.STRIDE_IN_1X1,
            dilation=r.RES5_DILATION,
        )
        return nn.Sequential(*blocks), out_channels

    def region_features(self, crops: torch.Tensor) -> torch.Tensor:
        """res5 on ROI-pooled crops ``[R, C, S, S]`` -> mean-pooled ``[R, 2048]`` (chunked, per-crop exact)."""
        outs = [self.res5(chunk).mean(dim=[2, 3]) for chunk in crops.split(max(1, self.roi_chunk))]
        if not outs:
            return crops.new_zeros((0, self.box_predictor.cls_score.in_features))
        return torch.cat(outs)


@META_ARCH_REGISTRY.register()
class ButdRCNN(GeneralizedRCNN):
    """GeneralizedRCNN with the feature-extraction path of the bottom-up-attention model."""

    @torch.no_grad()
    def extract(
        self, images: list[torch.Tensor], im_scales: list[float] | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """``images``: preprocessed ``[3, h, w]`` float tensors (BGR, mean already subtracted, resized);
        ``im_scales``: the resize factor of each (for the RPN's minimum size in original pixels).

        Returns per image: ``proposals`` ``[R,4]`` raw RPN boxes in the resized image, ``probs`` ``[R, K+1]``
        softmax with background LAST (detectron2 order), ``features`` ``[R, 2048]``, and with the attribute
        head ``attr_probs`` ``[R, A+1]``: softmax over all attribute outputs (Caffe's ``attr_prob``), "no
        attribute" LAST.
        """
        device = self.pixel_mean.device
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault((int(im.shape[-2]), int(im.shape[-1])), []).append(i)
        proposals: list[torch.Tensor | None] = [None] * len(images)
        crops: list[torch.Tensor | None] = [None] * len(images)
        heads = self.roi_heads
        for (h, w), idxs in groups.items():
            tensor = torch.stack([images[i] for i in idxs]).to(device)
            image_list = ImageList(tensor, [(h, w)] * len(idxs))
            features = self.backbone(tensor)
            if isinstance(self.proposal_generator, CaffeRPN):
                scales = [im_scales[i] if im_scales is not None else 1.0 for i in idxs]
                props, _ = self.proposal_generator(image_list, features, None, im_scales=scales)
            else:
                props, _ = self.proposal_generator(image_list, features, None)
            # ROI max-pooling in float32: lossless, and under autocast (bf16/fp16) torchvision's CPU roi_pool
            # has no autocast rule and refuses half features with float boxes
            feats = [features[f].float() for f in heads.in_features]
            boxes = [p.proposal_boxes for p in props]
            pooled = heads.pooler(feats, boxes)
            start = 0
            for i, p in zip(idxs, props, strict=True):
                proposals[i] = p.proposal_boxes.tensor
                crops[i] = pooled[start : start + len(p)]
                start += len(p)
        counts = [len(c) for c in crops]
        region_feats = heads.region_features(torch.cat(crops)) if sum(counts) else None
        out = []
        start = 0
        for i, n in enumerate(counts):
            if n == 0:
                feats = torch.zeros((0, heads.box_predictor.cls_score.in_features), device=device)
            else:
                feats = region_feats[start : start + n]
            start += n
            logits = heads.box_predictor.cls_score(feats)
            res = {"proposals": proposals[i], "probs": F.softmax(logits, dim=-1), "features": feats}
            if heads.has_attributes:
                res["attr_probs"] = F.softmax(heads.box_predictor.attribute_logits(feats, logits), dim=-1)
            out.append(res)
        return out

