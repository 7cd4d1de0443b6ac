"""The two LightningDOT towers: a UNITER image encoder used image-only, and a BERT text encoder.

Module names mirror the published checkpoints (``img_model.bert.img_embeddings.img_linear`` ...), so a
state dict loads without renaming. Conventions: docs/conventions.md, "Image tower".
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.bert import BertEmbeddings, BertEncoder
from encoders.config import EncoderConfig

CLS_ID = 101  # [CLS] in the bert-base-cased vocab: the single text token of the image tower


class ProjectionHead(nn.Sequential):
    """Linear(H, 2H) -> GELU -> LayerNorm(2H) -> Linear(2H, D): ``encode_proj.{0,2,3}`` in checkpoints."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(
            nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size),
            nn.GELU(),
            nn.LayerNorm(2 * cfg.hidden_size, eps=1e-12),
            nn.Linear(2 * cfg.hidden_size, cfg.project_dim),
        )


class ImageEmbeddings(nn.Module):
    """Region embeddings: LayerNorm(LN(W_f f) + LN(W_b box) + type_emb[1]). Regions get no position."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.img_linear = nn.Linear(cfg.feature_dim, cfg.hidden_size)
        self.img_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.pos_linear = nn.Linear(cfg.box_dim, cfg.hidden_size)
        self.pos_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        # Pre-training only (masked region modelling); kept so checkpoints round-trip unchanged.
        self.mask_embedding = nn.Embedding(2, cfg.feature_dim, padding_idx=0)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, region_type: torch.Tensor) -> torch.Tensor:
        feats = self.img_layer_norm(self.img_linear(features))
        pos = self.pos_layer_norm(self.pos_linear(boxes))
        return self.LayerNorm(feats + pos + region_type)


class UniterBody(nn.Module):
    """UNITER's text embeddings, region embeddings and BERT layers, under the names both LightningDOT's image tower
    (``img_model.bert``) and UNITER's retrieval model (``uniter``) give them."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.img_embeddings = ImageEmbeddings(cfg)
        self.encoder = BertEncoder(cfg, fuse_qkv=True)  # both users run eager: never exported or quantized

    def embed_regions(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """[B,N,F] features, [B,N,7] boxes -> [B,N,H] region embeddings, token type 1 (text tokens are type 0)."""
        return self.img_embeddings(features, boxes, self.embeddings.token_type_embeddings.weight[1])


class UniterImageModel(UniterBody):
    """``img_model.bert``: the [CLS] slot (word 101, position 0, type 0) followed by the regions, through the layers."""

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
                unpad: bool = True) -> torch.Tensor:
        b = features.shape[0]
        cls_ids = torch.full((b, 1), CLS_ID, dtype=torch.long, device=features.device)
        cls = self.embeddings(cls_ids)  # word[101] + pos[0] + type[0], LayerNorm
        hidden = torch.cat([cls, self.embed_regions(features, boxes)], dim=1)
        mask = torch.cat([torch.ones_like(region_mask[:, :1]), region_mask], dim=1)
        return self.encoder(hidden, mask, unpad=unpad)


class BertTextModel(nn.Module):
    """``txt_model.bert``: a plain BERT (no pooler: the readout is the final [CLS] state)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        return self.encoder(self.embeddings(input_ids), attention_mask, cls_only=cls_only)


class ImageTower(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.bert = UniterImageModel(cfg)
        self.encode_proj = ProjectionHead(cfg)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
                unpad: bool = True) -> torch.Tensor:
        """features [B,N,F], boxes [B,N,7], region_mask [B,N] -> [B, project_dim]. ``unpad=False`` computes the
        padding too (same result; what bench/encoders.py compares against)."""
        return self.encode_proj(self.bert(features, boxes, region_mask, unpad)[:, 0])


class TextTower(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.bert = BertTextModel(cfg)
        self.encode_proj = ProjectionHead(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask [B, L] -> [B, project_dim]. The head runs on [B, 1, H] so that an ONNX export
        holds MatMul + Add (which ONNX Runtime's int8 quantizer handles) rather than Gemm."""
        return self.encode_proj(self.bert(input_ids, attention_mask, cls_only=True))[:, 0]


class BiEncoder(nn.Module):
    """Both towers under the names of the fine-tuned checkpoints' ``model_dict``."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.img_model = ImageTower(cfg)
        self.txt_model = TextTower(cfg)


def add_box_area(boxes: torch.Tensor) -> torch.Tensor:
    """6-d ``[x1,y1,x2,y2,w,h]`` (normalised) -> 7-d with ``w*h`` appended; 7-d passes through."""
    if boxes.shape[-1] == 7:
        return boxes
    if boxes.shape[-1] != 6:
        raise ValueError(f"boxes must have 6 or 7 values per region, got {boxes.shape[-1]}")
    return torch.cat([boxes, boxes[..., 4:5] * boxes[..., 5:6]], dim=-1)
