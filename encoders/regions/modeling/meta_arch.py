"""``ButdRCNN`` (META_ARCH_REGISTRY): a GeneralizedRCNN whose ``extract`` returns, per image, the RPN proposals
(raw boxes), the class (and attribute) probabilities and the mean-pooled res5 features, with images of the same
size batched together and no padding, so an image's result never depends on its batch-mates."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList

from encoders.regions.modeling.rpn import CaffeRPN


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

