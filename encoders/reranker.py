"""UNITER's image-text retrieval model (``UniterForImageTextRetrieval``): the cross-encoder that re-ranks the top
M of LightningDOT's dot-product search (docs/conventions.md, "UNITER re-ranker"). Stable API::

    r = UniterReranker.from_checkpoint(path, config=None, device="cpu", head="rank")
    scores = r.score(input_ids, attention_mask, features, boxes, num_boxes)
    #   row i of every argument is pair i: [P,L] int ([CLS] ... [SEP], zero-padded), [P,L] text mask,
    #   [P,N,F] features (zero-padded), [P,N,6|7] boxes, [P] box counts  ->  [P] float32 raw logits

One sequence per pair: its T text tokens (positions 0..T-1, token type 0) directly followed by its N regions
(the LightningDOT image tower's region embedding, token type 1), padding only after both, as UNITER's gather
index packs them; BERT layers; the BERT pooler (dense + tanh) on position 0; then a linear head:

- ``head="rank"``: ``rank_output`` (the fine-tuned ranking head, UNITER's ``train_itm.py`` validation). A
  pre-trained checkpoint has none: it is set to ``itm_output`` row 1, the "match" logit (UNITER's
  ``init_output()``, the zero-shot score).
- ``head="itm"``: ``itm_output`` row 1 even when ``rank_output`` exists. This reproduces the score files of
  UNITER's ``inf_itm.py``: it calls ``init_output()`` when ``'rank_output' not in checkpoint``, a test on the
  flat state dict's keys (``rank_output.weight`` ...) that is always true, so its published ``results.bin`` /
  ``scores.json`` come from the ITM head.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from encoders.batching import length_buckets, pad_regions
from encoders.bert import BertPooler
from encoders.checkpoint import (
    UNITER_IGNORABLE,
    UNITER_OPTIONAL,
    CheckpointError,
    extract_uniter_state_dict,
    load_checked,
    read_checkpoint,
)
from encoders.config import EncoderConfig
from encoders.loaded_model import ArrayLike, ConfigLike, LoadedModel, random_model
from encoders.towers import UniterBody, add_box_area

log = logging.getLogger(__name__)

HEADS = ("rank", "itm")


class UniterModel(UniterBody):
    """``uniter``: text embeddings, region embeddings, BERT layers and pooler, under UNITER's names."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        self.pooler = BertPooler(cfg)

    def forward(self, input_ids: torch.Tensor, text_len: torch.Tensor, features: torch.Tensor,
                boxes: torch.Tensor, num_boxes: torch.Tensor) -> torch.Tensor:
        """[B,L] ids, [B] text lengths, [B,N,F] features, [B,N,7] boxes, [B] box counts -> pooled [B, H]."""
        width_txt = input_ids.shape[1]
        text = self.embeddings(input_ids)  # positions 0..L-1, token type 0
        # [B, L+N, H]: each pair's text, its padding, its regions
        both = torch.cat([text, self.embed_regions(features, boxes)], dim=1)
        lengths = text_len + num_boxes
        j = torch.arange(int(lengths.max()), device=input_ids.device)[None, :]
        # pair i, slot j: text token j while j < T_i, then region j - T_i (UNITER's gather index); slots past
        # T_i + N_i are padding (masked) and read any in-range row
        gather = torch.where(j < text_len[:, None], j, width_txt + j - text_len[:, None])
        gather = gather.clamp(max=both.shape[1] - 1)
        packed = both.gather(1, gather[..., None].expand(-1, -1, both.shape[-1]))
        mask = (j < lengths[:, None]).long()
        return self.pooler(self.encoder(packed, mask))


class UniterForRetrieval(nn.Module):
    """The whole fine-tuned model: ``uniter`` + ``itm_output`` Linear(H, 2) + ``rank_output`` Linear(H, 1)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.uniter = UniterModel(cfg)
        self.itm_output = nn.Linear(cfg.hidden_size, 2)
        self.rank_output = nn.Linear(cfg.hidden_size, 1)

    def init_output(self) -> None:
        """``rank_output`` := ``itm_output`` row 1 (the "match" logit), as UNITER's ``init_output()``."""
        with torch.no_grad():
            self.rank_output.weight.copy_(self.itm_output.weight[1:])
            self.rank_output.bias.copy_(self.itm_output.bias[1:])

    def forward(self, input_ids: torch.Tensor, text_len: torch.Tensor, features: torch.Tensor,
                boxes: torch.Tensor, num_boxes: torch.Tensor, head: str = "rank") -> torch.Tensor:
        pooled = self.uniter(input_ids, text_len, features, boxes, num_boxes)
        if head == "itm":  # row 1 of itm_output: the "match" logit
            return nn.functional.linear(pooled, self.itm_output.weight[1:], self.itm_output.bias[1:])[:, 0]
        return self.rank_output(pooled)[:, 0]


class UniterReranker(LoadedModel):
    """A UNITER retrieval model in eval mode on one device; scores (text, image) pairs in length buckets."""

    fingerprint_prefix = "uniter"

    def __init__(self, model: UniterForRetrieval, config: EncoderConfig, *, head: str = "rank", device: str = "cpu",
                 dtype: str = "float32", source: str = "", zero_shot: bool = False, random_seed: int | None = None,
                 vocab: str | None = None) -> None:
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        super().__init__(model, config, device=device, dtype=dtype, source=source, random_seed=random_seed,
                         vocab=vocab)
        self.head = head
        self.zero_shot = zero_shot  # the checkpoint had no rank_output: "rank" scores with itm_output row 1

    # ---- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: ConfigLike = None,
                        device: str = "cpu", head: str = "rank", dtype: str = "float32",
                        vocab: str | None = None) -> UniterReranker:
        """Load any UNITER retrieval layout (local path or fsspec URL). ``config=None``: UNITER-base."""
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        raw = read_checkpoint(path)
        cfg = EncoderConfig.load(config)
        model = UniterForRetrieval(cfg)
        state = extract_uniter_state_dict(raw, str(path))
        has_rank = [k for k in ("rank_output.weight", "rank_output.bias") if k in state]
        load_checked(model, state, str(path), ignorable=UNITER_IGNORABLE, optional=UNITER_OPTIONAL,
                     config_flag="the re-ranker config")
        if len(has_rank) == 1:
            raise CheckpointError(f"{path}: has {has_rank[0]} but not its pair: a damaged rank_output head")
        zero_shot = not has_rank
        if zero_shot:
            model.init_output()
            if head == "rank":
                log.info("%s has no rank_output (a pre-trained checkpoint): scoring with itm_output row 1", path)
        return cls(model, cfg, head=head, device=device, dtype=dtype, source=str(path), zero_shot=zero_shot,
                   vocab=vocab)

    @classmethod
    def random(cls, config: ConfigLike = None, seed: int = 0, device: str = "cpu",
               head: str = "rank", dtype: str = "float32", vocab: str | None = None) -> UniterReranker:
        """Explicit random weights (BERT's init) for benchmarks and smoke runs; never silently."""
        model, cfg = random_model(UniterForRetrieval, config, seed)
        return cls(model, cfg, head=head, device=device, dtype=dtype, source=f"random:seed={seed}",
                   random_seed=seed, vocab=vocab)

    # ---- provenance ---------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        head = "itm_output[1]" if self.head == "itm" or self.zero_shot else "rank_output"
        return {**super().describe(), "head": self.head, "scores_with": head, "zero_shot": self.zero_shot}

    # ---- scoring ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, input_ids: ArrayLike, attention_mask: ArrayLike, features: ArrayLike, boxes: ArrayLike,
              num_boxes: ArrayLike, batch_size: int = 16, bucketing: bool = True) -> np.ndarray:
        """One raw logit per (text, image) pair, float32 [P] (no sigmoid), in input order.

        ``bucketing`` (default): pairs are grouped by sequence length (text tokens + boxes) and each group of
        ``batch_size`` is trimmed to its own longest pair, so short pairs do not pay for long ones (UNITER's
        evaluation also sorts images by box count); the default 16 suits re-ranking M = 10..100 candidates.
        ``bucketing=False`` keeps input order and pads every batch to the longest text and the most boxes of the
        whole call (for comparison only). A pair never attends to padding or to another pair, so its score does
        not depend on its batch-mates beyond float32 rounding (kernels sum in another order for other shapes: a
        few 1e-7 on logits of a few units, measured in tests/test_reranker.py).
        """
        ids = torch.as_tensor(input_ids).long()
        mask = torch.as_tensor(attention_mask).long()
        feats = torch.as_tensor(features)
        bxs = torch.as_tensor(boxes)
        counts = torch.as_tensor(num_boxes).long().reshape(-1)
        text_len = self._check_inputs(ids, mask, feats, bxs, counts)

        def batch(idx: np.ndarray, width_txt: int, width_img: int) -> tuple[torch.Tensor, ...]:
            sel = torch.as_tensor(idx)
            return ids[sel, :width_txt], feats[sel, :width_img], bxs[sel, :width_img]

        return self._run(text_len.numpy(), counts.numpy(), batch, batch_size, bucketing)

    @torch.inference_mode()
    def score_texts_images(self, texts: Sequence[str], features: Sequence[ArrayLike], boxes: Sequence[ArrayLike],
                           batch_size: int = 16, bucketing: bool = True) -> np.ndarray:
        """Ragged convenience: pair i = (``texts[i]``, the image with regions ``features[i]`` [N_i, F] and
        ``boxes[i]`` [N_i, 6|7]); captions are tokenized with the model's WordPiece vocab. Regions are padded
        one batch at a time, so many pairs cost no more memory than one batch of them."""
        if not len(texts) == len(features) == len(boxes):
            raise ValueError(f"{len(texts)} texts, {len(features)} feature arrays and {len(boxes)} box arrays")
        if not len(texts):
            return np.empty(0, dtype=np.float32)
        ids, mask = self.tokenizer().encode(list(texts))
        feats = [np.asarray(f) for f in features]
        bxs = [np.asarray(b) for b in boxes]
        box_dim = bxs[0].shape[-1] if bxs[0].ndim == 2 else -1
        for i, (f, b) in enumerate(zip(feats, bxs, strict=True)):
            if f.ndim != 2 or f.shape[1] != self.config.feature_dim or not len(f):
                raise ValueError(f"image {i}: features must be [N >= 1, {self.config.feature_dim}], got {f.shape}")
            if b.shape != (len(f), box_dim) or box_dim not in (6, 7):
                raise ValueError(f"image {i}: boxes must be [{len(f)}, 6 or 7] (one box size for all), got {b.shape}")
        if int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"the vocab has ids up to {int(ids.max())}, the model only {self.config.vocab_size}")

        def batch(idx: np.ndarray, width_txt: int, width_img: int) -> tuple[torch.Tensor, ...]:
            f, b, _ = pad_regions([feats[i] for i in idx], [bxs[i] for i in idx], self.config.feature_dim,
                                  width=width_img)
            return torch.as_tensor(ids[idx, :width_txt]), torch.from_numpy(f), torch.from_numpy(b)

        return self._run(mask.sum(1), np.array([len(f) for f in feats]), batch, batch_size, bucketing)

    def _run(self, text_len: np.ndarray, counts: np.ndarray,
             batch: Callable[[np.ndarray, int, int], tuple[torch.Tensor, ...]], batch_size: int,
             bucketing: bool) -> np.ndarray:
        """Score pairs batch by batch; ``batch(idx, width_txt, width_img)`` gives the batch's ids, features and
        boxes cut or padded to those widths."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out = np.empty(len(text_len), dtype=np.float32)
        if bucketing:
            batches = length_buckets(text_len + counts, batch_size)
        else:
            batches = (np.arange(a, min(a + batch_size, len(out))) for a in range(0, len(out), batch_size))
        for idx in batches:
            t, n = torch.as_tensor(text_len[idx]).long(), torch.as_tensor(counts[idx]).long()
            # padded: every batch as wide as the longest text plus the most boxes of the whole call
            width_txt = int(t.max()) if bucketing else int(text_len.max())
            width_img = int(n.max()) if bucketing else int(counts.max())
            ids, feats, boxes = batch(idx, width_txt, width_img)
            keep_txt = torch.arange(width_txt)[None, :] < t[:, None]
            keep_img = (torch.arange(width_img)[None, :] < n[:, None])[..., None]
            # whatever the caller left in the padding, it enters no pair's score
            ids = (ids.long() * keep_txt).to(self.device)
            feats = (feats.float() * keep_img).to(self.device, self.dtype)
            boxes = add_box_area(boxes.float() * keep_img).to(self.device, self.dtype)
            logits = self.model(ids, t.to(self.device), feats, boxes, n.to(self.device), head=self.head)
            out[idx] = logits.float().cpu().numpy()
        return out

    def _check_inputs(self, ids: torch.Tensor, mask: torch.Tensor, feats: torch.Tensor, boxes: torch.Tensor,
                      counts: torch.Tensor) -> torch.Tensor:
        """Validate shapes and ranges; return the text lengths [P]."""
        p = ids.shape[0] if ids.ndim else 0
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(f"input_ids {tuple(ids.shape)} and attention_mask {tuple(mask.shape)} must be [P, L]")
        if feats.ndim != 3 or feats.shape[0] != p or feats.shape[-1] != self.config.feature_dim:
            raise ValueError(f"features must be [{p}, N, {self.config.feature_dim}], got {tuple(feats.shape)}")
        if boxes.ndim != 3 or boxes.shape[:2] != feats.shape[:2] or boxes.shape[-1] not in (6, 7):
            raise ValueError(f"boxes must be [P, N, 6 or 7] matching features {tuple(feats.shape[:2])}, "
                             f"got {tuple(boxes.shape)}")
        if counts.shape[0] != p:
            raise ValueError(f"num_boxes has {counts.shape[0]} entries for {p} pairs")
        if p and (int(counts.min()) < 1 or int(counts.max()) > feats.shape[1]):
            raise ValueError(f"num_boxes must be in 1..{feats.shape[1]}, got {int(counts.min())}..{int(counts.max())}")
        text_len = mask.sum(1)
        prefix = torch.arange(mask.shape[1])[None, :] < text_len[:, None]
        if not torch.equal(mask != 0, prefix):
            raise ValueError("attention_mask must be 1 on each text's tokens from position 0 and 0 after them")
        if p and int(text_len.min()) < 1:
            raise ValueError("every pair needs at least one text token ([CLS])")
        if p and int(text_len.max()) > self.config.max_position_embeddings:
            raise ValueError(f"texts of {int(text_len.max())} tokens exceed "
                             f"{self.config.max_position_embeddings} positions")
        if ids.numel() and (int(ids.max()) >= self.config.vocab_size or int(ids.min()) < 0):
            raise ValueError(f"token ids must be in 0..{self.config.vocab_size - 1}")
        return text_len
