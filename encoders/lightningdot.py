"""LightningDOT: load a checkpoint once, then encode images (region features) and texts in batches.

This is the stable Python API other stages and outside checks use::

    model = LightningDOT.from_checkpoint(path, config=None, device="cpu")
    img = model.encode_images(features, boxes, num_boxes)  # [B,N,2048], [B,N,6|7], [B] -> [B,768] float32
    txt = model.encode_texts(input_ids, attention_mask)    # [B,L], [B,L] -> [B,768] float32
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import fsspec
import numpy as np
import torch

from core.device import resolve_device
from encoders.batching import length_buckets, pad_regions
from encoders.checkpoint import CheckpointError, extract_state_dict, load_checked, read_checkpoint
from encoders.config import EncoderConfig
from encoders.loaded_model import ArrayLike, ConfigLike, LoadedModel, random_model
from encoders.towers import BiEncoder, add_box_area

log = logging.getLogger(__name__)



class LightningDOT(LoadedModel):
    """Both towers in eval mode, on one device, with a fingerprint of weights + config for provenance."""

    fingerprint_prefix = "ldot"

    # ---- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: ConfigLike = None,
                        device: str = "cpu", dtype: str = "float32", vocab: str | None = None) -> LightningDOT:
        """Load either published layout (or ours). ``config=None``: the config saved in the checkpoint if it
        carries one (``LightningDOT.save``), else the published BERT-base size."""
        raw = read_checkpoint(path)
        if config is None and isinstance(raw.get("config"), dict):
            config = raw["config"]
        cfg = EncoderConfig.load(config)
        model = BiEncoder(cfg)
        load_checked(model, extract_state_dict(raw, str(path)), str(path))
        return cls(model, cfg, device=device, dtype=dtype, source=str(path), vocab=vocab)

    @classmethod
    def load(cls, checkpoint: str | Path | None, config: ConfigLike = None, *,
             random_weights: bool = False, seed: int = 0, device: str | None = "cpu", dtype: str = "float32",
             vocab: str | None = None) -> LightningDOT:
        """The one way a command gets a model: a checkpoint, or random weights only when asked for explicitly.

        ``device="auto"`` uses this process's GPU when it has one (a worker's, on Dataflow)."""
        if random_weights and checkpoint:
            raise CheckpointError("--random-weights and --checkpoint exclude each other")
        if not random_weights and not checkpoint:
            raise CheckpointError("no LightningDOT weights: give --checkpoint PATH (e.g. coco-ft.pt), or "
                                  "--random-weights for a smoke run")
        device = resolve_device(device)
        if random_weights:
            return cls.random(config, seed=seed, device=device, dtype=dtype, vocab=vocab)
        return cls.from_checkpoint(checkpoint, config, device=device, dtype=dtype, vocab=vocab)

    @classmethod
    def random(cls, config: ConfigLike = None, seed: int = 0, device: str = "cpu",
               dtype: str = "float32", vocab: str | None = None) -> LightningDOT:
        """Explicit random weights (BERT's N(0, 0.02) init) for smoke runs and tests; never silently."""
        model, cfg = random_model(BiEncoder, config, seed)
        return cls(model, cfg, device=device, dtype=dtype, source=f"random:seed={seed}", random_seed=seed, vocab=vocab)

    def save(self, path: str | Path) -> None:
        """Write the fine-tuned layout (``model_dict``) plus our config, loadable by ``from_checkpoint``."""
        state = {k: v.detach().to("cpu", torch.float32) for k, v in self.model.state_dict().items()}
        buffer = io.BytesIO()
        torch.save({"model_dict": state, "config": self.config.to_dict()}, buffer)
        with fsspec.open(str(path), "wb") as f:
            f.write(buffer.getvalue())

    # ---- encoding -----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_images(self, features: ArrayLike, boxes: ArrayLike, num_boxes: ArrayLike,
                      batch_size: int = 64) -> np.ndarray:
        """[B,N,F] features, [B,N,6|7] normalised boxes, [B] box counts -> [B, D] float32.

        Rows are regrouped by box count and each group is trimmed to its own longest image, so padding costs
        nothing and an image's embedding does not depend on its batch-mates. ``batch_size`` bounds the tokens of
        a group (``batch_size`` images of the input's width): groups of short images hold more of them.
        """
        feats = torch.as_tensor(features)
        bxs = torch.as_tensor(boxes)
        counts = torch.as_tensor(num_boxes).long().reshape(-1)
        self._check_image_inputs(feats, bxs, counts)
        out = np.empty((feats.shape[0], self.config.project_dim), dtype=np.float32)
        tokens = counts.numpy() + 1  # regions + the [CLS] slot
        for idx in length_buckets(tokens, max(len(tokens), 1), max_tokens=batch_size * (feats.shape[1] + 1)):
            width = int(counts[idx].max())
            sel = torch.as_tensor(idx)
            f = feats[sel, :width].to(self.device, self.dtype)
            b = add_box_area(bxs[sel, :width].to(self.device, torch.float32)).to(self.dtype)
            # Whatever the caller left in the padding is never read: the tower drops padded rows right after the
            # per-token embeddings (``Unpadded``), so no masking pass over the [B, W, 2048] features is needed.
            mask = (torch.arange(width)[None, :] < counts[sel][:, None]).to(self.device)
            out[idx] = self.model.img_model(f, b, mask.long()).float().cpu().numpy()
        return out

    def encode_regions(self, features: list[ArrayLike], boxes: list[ArrayLike], batch_size: int = 64) -> np.ndarray:
        """Ragged convenience: one [N_i,F] and one [N_i,6|7] array per image -> [B, D]."""
        if not features:
            return np.empty((0, self.config.project_dim), dtype=np.float32)
        feats, bxs, counts = pad_regions(features, boxes, self.config.feature_dim)
        return self.encode_images(feats, bxs, counts, batch_size=batch_size)

    @torch.inference_mode()
    def encode_texts(self, input_ids: ArrayLike, attention_mask: ArrayLike, batch_size: int = 128) -> np.ndarray:
        """[B,L] token ids (``[CLS] … [SEP]``), [B,L] 0/1 mask -> [B, D] float32, length-bucketed."""
        ids = torch.as_tensor(input_ids).long()
        mask = torch.as_tensor(attention_mask).long()
        self.check_text_inputs(ids, mask)
        lengths = mask.sum(1)
        out = np.empty((ids.shape[0], self.config.project_dim), dtype=np.float32)
        for idx in length_buckets(lengths.numpy(), batch_size):
            sel = torch.as_tensor(idx)
            width = max(int(lengths[sel].max()), 1)
            emb = self.model.txt_model(ids[sel, :width].to(self.device), mask[sel, :width].to(self.device))
            out[idx] = emb.float().cpu().numpy()
        return out

    def encode_captions(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Raw strings -> [B, D], tokenized with the model's vocab (see ``encoders.tokenizer.find_vocab``)."""
        ids, mask = self.tokenizer().encode(texts)
        return self.encode_texts(ids, mask, batch_size=batch_size)

    def check_text_inputs(self, ids: ArrayLike, mask: ArrayLike) -> None:
        """[B, L] token ids and mask of the same shape, within the positions and vocab of this model."""
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(f"input_ids {tuple(ids.shape)} and attention_mask {tuple(mask.shape)} must be [B, L]")
        if ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"texts of {ids.shape[1]} tokens exceed {self.config.max_position_embeddings} positions")
        if ids.shape[0] and ids.shape[1]:
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(f"token ids {low}..{high} are outside the vocab of {self.config.vocab_size}")

    def _check_image_inputs(self, feats: torch.Tensor, boxes: torch.Tensor, counts: torch.Tensor) -> None:
        if feats.ndim != 3 or feats.shape[-1] != self.config.feature_dim:
            raise ValueError(f"features must be [B, N, {self.config.feature_dim}], got {tuple(feats.shape)}")
        if boxes.ndim != 3 or boxes.shape[:2] != feats.shape[:2] or boxes.shape[-1] not in (6, 7):
            raise ValueError(f"boxes must be [B, N, 6 or 7] matching features {tuple(feats.shape[:2])}, "
                             f"got {tuple(boxes.shape)}")
        if counts.shape[0] != feats.shape[0]:
            raise ValueError(f"num_boxes has {counts.shape[0]} entries for {feats.shape[0]} images")
        if counts.numel() and (int(counts.min()) < 1 or int(counts.max()) > feats.shape[1]):
            raise ValueError(f"num_boxes must be in 1..{feats.shape[1]}, got {counts.min()}..{counts.max()}")
