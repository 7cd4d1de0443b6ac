"""BERT encoder layers under the parameter names of HuggingFace ``BertModel`` (and UNITER's copy of it).

Written out rather than imported from ``transformers`` so that checkpoint loading does not depend on how a
given ``transformers`` release names or registers its buffers, and so attention can use PyTorch's fused
``scaled_dot_product_attention`` with an additive padding mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from encoders.config import EncoderConfig


@dataclass(frozen=True)
class Unpadded:
    """Where the real tokens of a padded [B, N] batch are. Per-token layers (every Linear, LayerNorm and GELU: ~97%
    of the FLOPs) then run on the [T, H] real tokens only and only attention sees the padded layout; a batch of
    mixed lengths costs what its tokens cost, which bucketing alone cannot reach (padding inside buckets, and
    small GEMMs for buckets of short items). bench/encoders.py measures it.

    The layout changes around attention are memory-bound passes, and with 2 threads on a busy machine each pass
    (each parallel region) costs ~10 ms whatever its size, waiting on a descheduled thread (profiled on 16 images
    at 2 threads: every elementwise op, index_copy and the bias copy inside each addmm ~8-14 ms). So q, k and v
    come from one fused GEMM (``BertSelfAttention(fuse_qkv=True)``, the image tower) and are padded by ONE
    index_copy into a zero buffer kept for the whole forward, zero-filled once (padding positions are never
    written), and the attention output is gathered straight from its [B, heads, N, d] layout.

    Why pack at all rather than pad each length bucket and run plain SDPA: bench/encoders.py's "budget, padded"
    runs the same batches that way. On 32 images (10..100 boxes) at 1 thread it reaches 4.79 images/s against
    6.59 packed (padded-100: 3.81): the buckets' padding is 1.39x the real tokens' FLOPs, while the packing's
    passes cost ~4% of a forward at 1 thread (profiled: GEMMs 88%, SDPA 7%)."""

    index: torch.Tensor  # [T] positions of real tokens in the flattened [B * N]
    batch: int
    length: int
    buffer: list[torch.Tensor] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def of(cls, attention_mask: torch.Tensor) -> Unpadded:
        return cls(attention_mask.reshape(-1).nonzero().squeeze(1), *attention_mask.shape)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, H] -> [T, H]."""
        return x.reshape(-1, x.shape[-1]).index_select(0, self.index)

    def unpad_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, heads, N, d] (attention's output layout) -> [T, heads * d], in one gather."""
        rows = x.transpose(1, 2)[self.index // self.length, self.index % self.length]
        return rows.reshape(rows.shape[0], -1)

    def pad(self, x: torch.Tensor, reuse: bool = False) -> torch.Tensor:
        """[T, H] -> [B, N, H], zeros at padding. ``reuse``: into this layout's one buffer, which the next
        ``reuse`` call overwrites (so the result must be consumed before, as attention consumes q, k, v)."""
        shape = (self.batch * self.length, x.shape[-1])
        out = self.buffer[0] if reuse and self.buffer else None
        if out is None or out.shape != shape or out.dtype != x.dtype:
            out = x.new_zeros(shape)
            if reuse:
                self.buffer[:] = [out]
        return out.index_copy_(0, self.index, x).view(self.batch, self.length, x.shape[-1])


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig, fuse_qkv: bool = False) -> None:
        """``fuse_qkv``: q, k, v in one GEMM on their stacked weights (same numbers to rounding). Only for a tower
        that is never exported: the query path's ONNX export and int8 pass work on the three Linears' MatMuls."""
        super().__init__()
        self.fuse_qkv = fuse_qkv
        self._stacked: tuple[torch.Tensor, torch.Tensor] | None = None  # weight, bias
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor, queries: torch.Tensor | None = None,
                layout: Unpadded | None = None) -> torch.Tensor:
        """Every position of ``hidden`` is attended; outputs are computed for ``queries`` (default: all of them).
        With ``layout``, ``hidden`` is [T, H] real tokens (see ``Unpadded``) and so is the output."""
        if layout is not None:
            if self.fuse_qkv:
                # the buffer is overwritten by the next layer: not while autograd keeps this one for backward
                q, k, v = layout.pad(self._qkv(hidden), reuse=not torch.is_grad_enabled()).chunk(3, dim=-1)
            else:
                q, k, v = (layout.pad(lin(hidden)) for lin in (self.query, self.key, self.value))
            return layout.unpad_heads(self._context(q, k, v, additive_mask))
        if self.fuse_qkv and queries is None:
            q, k, v = self._qkv(hidden).chunk(3, dim=-1)
        else:
            queries = hidden if queries is None else queries
            q, k, v = self.query(queries), self.key(hidden), self.value(hidden)
        ctx = self._context(q, k, v, additive_mask)
        return ctx.transpose(1, 2).reshape(ctx.shape[0], ctx.shape[2], -1)

    def _qkv(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., 3H] (q | k | v) in one GEMM. The stacked weight and bias are cached, and the three
        Linears' weights and biases are then made views of them: a write in place reaches the stacked copy however
        it is made (``param.data.copy_`` bumps no version counter), and a replaced tensor (``load_state_dict``,
        ``.to``, ``.half``) no longer lies where its view did, which rebuilds the cache."""
        linears = (self.query, self.key, self.value)
        if torch.is_grad_enabled():  # gradients flow to the three Linears: no cache
            weights, biases = zip(*((lin.weight, lin.bias) for lin in linears), strict=True)
            return F.linear(hidden, torch.cat(weights), torch.cat(biases))
        if self._stacked is None or not self._views_of(self._stacked):
            with torch.no_grad(), torch.inference_mode(False):  # normal tensors, usable outside inference mode
                weight = torch.cat([lin.weight for lin in linears])
                bias = torch.cat([lin.bias for lin in linears])
                for lin, w, b in zip(linears, weight.chunk(3), bias.chunk(3), strict=True):
                    lin.weight.data, lin.bias.data = w, b
            self._stacked = weight, bias
        return F.linear(hidden, *self._stacked)

    def _views_of(self, stacked: tuple[torch.Tensor, torch.Tensor]) -> bool:
        """Whether the three Linears' weights and biases are still the views of ``stacked`` made by ``_qkv``."""
        weight, bias = stacked
        pairs = zip((self.query, self.key, self.value), weight.chunk(3), bias.chunk(3), strict=True)
        return all(lin.weight.data_ptr() == w.data_ptr() and lin.weight.dtype == w.dtype
                   and lin.weight.device == w.device and lin.bias.data_ptr() == b.data_ptr()
                   for lin, w, b in pairs)

    def _context(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """[B, Nq, H], [B, N, H] x 2 -> [B, heads, Nq, head_dim]."""
        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        return F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=additive_mask)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        return dense_add_norm(self.dense, self.LayerNorm, x, residual, in_place)


class BertAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig, fuse_qkv: bool = False) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg, fuse_qkv)
        self.output = BertSelfOutput(cfg)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor, queries: torch.Tensor | None = None,
                layout: Unpadded | None = None) -> torch.Tensor:
        return self.output(self.self(hidden, additive_mask, queries, layout), hidden if queries is None else queries,
                           in_place=layout is not None)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # erf GELU, as in BERT and UNITER


class BertOutput(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        return dense_add_norm(self.dense, self.LayerNorm, x, residual, in_place)


class BertLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig, fuse_qkv: bool = False) -> None:
        super().__init__()
        self.attention = BertAttention(cfg, fuse_qkv)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor, queries: torch.Tensor | None = None,
                layout: Unpadded | None = None) -> torch.Tensor:
        attended = self.attention(hidden, additive_mask, queries, layout)
        return self.output(self.intermediate(attended), attended, in_place=layout is not None)


class BertEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, fuse_qkv: bool = False) -> None:
        """``fuse_qkv``: see ``BertSelfAttention``."""
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg, fuse_qkv) for _ in range(cfg.num_layers))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, cls_only: bool = False,
                unpad: bool = False) -> torch.Tensor:
        """attention_mask: [B, N], 1 for real tokens and 0 for padding -> [B, N, H] (zeros at padding if ``unpad``).

        ``cls_only``: -> [B, 1, H], the final state of position 0 alone. The last layer then computes its query,
        attention output and FFN for that one position (its keys and values still cover every token): the same
        numbers for ~1/L less work, which matters for a text query of ~12 tokens (7% of BERT-base's FLOPs).
        ``unpad``: per-token layers skip padding (``Unpadded``); a data-dependent shape, so not for ONNX export.
        """
        if cls_only and unpad:
            raise ValueError("cls_only and unpad do not combine")
        additive = additive_attention_mask(attention_mask, hidden.dtype)
        if unpad:
            layout = Unpadded.of(attention_mask)
            hidden = layout.unpad(hidden)
            for layer in self.layer:
                hidden = layer(hidden, additive, layout=layout)
            return layout.pad(hidden)
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            hidden = layer(hidden, additive, hidden[:, :1] if cls_only and i == last else None)
        return hidden


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm (dropout is inference-free)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        embedded = (self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
                    + self.token_type_embeddings.weight[0])
        return self.LayerNorm(embedded)


class BertPooler(nn.Module):
    """``pooler.dense`` + tanh on the first position: the readout of BERT's (and UNITER's) classification heads."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


def dense_add_norm(dense: nn.Linear, norm: nn.LayerNorm, x: torch.Tensor, residual: torch.Tensor,
                   in_place: bool = False) -> torch.Tensor:
    """``norm(dense(x) + residual)``, BERT's sublayer output. ``in_place`` (the unpadded layout, where the encoder
    owns every hidden state and the residual is dead after this): the GEMM accumulates straight into
    ``residual``, skipping the pass in which addmm first copies the bias into a fresh output (one of the ~10 ms
    passes at 2 threads that ``Unpadded`` describes); the same sum to rounding. Not while autograd records:
    ``residual`` is then saved for the backward of the GEMMs that read it."""
    if not in_place or torch.is_grad_enabled():
        return norm(dense(x) + residual)
    flat = residual.view(-1, residual.shape[-1])
    return norm(flat.addmm_(x.reshape(-1, x.shape[-1]), dense.weight.t()).add_(dense.bias).view_as(residual))


def additive_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, N] 0/1 mask -> [B, 1, 1, N] additive mask: 0 where attended, a large negative on padding."""
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def init_bert_weights(model: nn.Module, seed: int) -> nn.Module:
    """BERT's initialisation, seeded: N(0, 0.02) for linear and embedding weights, zero biases, unit LayerNorms.
    For explicit random models (smoke runs, tests, benchmarks); returns ``model``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, nn.Linear | nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.02)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    return model
