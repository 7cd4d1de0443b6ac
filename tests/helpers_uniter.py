"""UNITER's region embedding written out by hand (an independent reference for LightningDOT's image tower and the
UNITER re-ranker, which both use it): ``LN(LN(W_f f + b_f) + LN(W_b box + b_b) + token_type[1])``, and the random
weights the reference tests give it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from encoders.config import EncoderConfig


def region_embedding_weights(cfg: EncoderConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``img_embeddings.*`` parameters: N(0, 0.05), LayerNorm weights around 1 (boxes are 7-d)."""
    h = cfg.hidden_size
    shapes = {
        "img_linear.weight": (h, cfg.feature_dim), "img_linear.bias": (h,), "img_layer_norm.weight": (h,),
        "img_layer_norm.bias": (h,), "pos_linear.weight": (h, 7), "pos_linear.bias": (h,),
        "pos_layer_norm.weight": (h,), "pos_layer_norm.bias": (h,), "LayerNorm.weight": (h,), "LayerNorm.bias": (h,),
        "mask_embedding.weight": (2, cfg.feature_dim),
    }
    out = {}
    for name, shape in shapes.items():
        value = torch.randn(shape, generator=gen) * 0.05
        out[name] = value + 1.0 if name.endswith(("norm.weight", "LayerNorm.weight")) else value
    return out


def reference_regions(weights: dict[str, torch.Tensor], cfg: EncoderConfig, type_row: torch.Tensor,
                      feats: np.ndarray, boxes7: np.ndarray) -> torch.Tensor:
    """[1, N, H] region embeddings of one image; ``weights``: ``img_embeddings.*`` by name, without the prefix;
    ``type_row``: the token-type-1 embedding."""

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (cfg.hidden_size,), weights[f"{name}.weight"], weights[f"{name}.bias"],
                            cfg.layer_norm_eps)

    f, b = torch.as_tensor(feats)[None], torch.as_tensor(boxes7)[None]
    return ln(ln(F.linear(f, weights["img_linear.weight"], weights["img_linear.bias"]), "img_layer_norm")
              + ln(F.linear(b, weights["pos_linear.weight"], weights["pos_linear.bias"]), "pos_layer_norm")
              + type_row, "LayerNorm")
