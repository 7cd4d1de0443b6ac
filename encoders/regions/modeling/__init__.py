"""The bottom-up-attention Faster R-CNN (ResNet C4, Visual Genome) built from detectron2 parts.

Everything stock detectron2 lacks is registered through its registries (nothing is forked), one registered
component a module, as in detectron2's ``projects/``; importing this package registers them all:

- ``backbone``: ``build_butd_resnet_backbone`` (BACKBONE_REGISTRY), ResNet res2..res4 with the Caffe stem.
- ``anchor_generator``: ``CaffeAnchorGenerator`` (ANCHOR_GENERATOR_REGISTRY), py-faster-rcnn's anchors.
- ``rpn``: ``CaffeRPN`` (PROPOSAL_GENERATOR_REGISTRY), the Caffe proposal layer's rule.
- ``roi_heads``: ``ButdRes5ROIHeads`` (ROI_HEADS_REGISTRY), res5 on pooled crops, with the attribute head of its
  box predictor ``ButdOutputLayers``.
- ``meta_arch``: ``ButdRCNN`` (META_ARCH_REGISTRY), a GeneralizedRCNN whose ``extract`` returns regions per image.

``config`` holds the ``MODEL.BUTD.*`` keys and the YAML loader.
"""

from encoders.regions.modeling.anchor_generator import CaffeAnchorGenerator, caffe_generate_anchors
from encoders.regions.modeling.backbone import build_butd_resnet_backbone
from encoders.regions.modeling.config import add_butd_config, load_config
from encoders.regions.modeling.meta_arch import ButdRCNN
from encoders.regions.modeling.roi_heads import ButdOutputLayers, ButdRes5ROIHeads
from encoders.regions.modeling.rpn import CaffeRPN, caffe_proposals

__all__ = ["ButdOutputLayers", "ButdRCNN", "ButdRes5ROIHeads", "CaffeAnchorGenerator", "CaffeRPN", "add_butd_config",
           "build_butd_resnet_backbone", "caffe_generate_anchors", "caffe_proposals", "load_config"]
