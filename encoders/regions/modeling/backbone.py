"""``build_butd_resnet_backbone`` (BACKBONE_REGISTRY): ResNet res2..res4 with the Caffe stem, whose max-pool has
no padding and rounds up (``ceil_mode``), as in the converted Caffe model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BottleneckBlock, CNNBlockBase, ResNet
from fvcore.nn import weight_init

from encoders.regions.modeling.config import blocks_per_stage


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
    blocks = blocks_per_stage(cfg)
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
