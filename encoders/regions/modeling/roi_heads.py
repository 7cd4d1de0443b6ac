"""``ButdRes5ROIHeads`` (ROI_HEADS_REGISTRY): res5 on ROI-pooled crops with a configurable stride
(``MODEL.BUTD.RES5_STRIDE``, 1 = res5 not halved) and ``MODEL.RESNETS.RES5_DILATION``; its box predictor
``ButdOutputLayers`` (a detectron2 ``FastRCNNOutputLayers``) carries the attribute head (``cls_embedding`` ->
``fc_attr`` -> ``attr_score``) under py-bottom-up-attention's parameter names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet
from detectron2.modeling.roi_heads import Res5ROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from torch import nn

from encoders.regions.modeling.config import blocks_per_stage


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
        num_blocks = blocks_per_stage(cfg)[3]
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
