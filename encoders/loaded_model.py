"""What the two model wrappers (``LightningDOT``'s bi-encoder, ``UniterReranker``'s cross-encoder) share: a torch
model in eval mode on one device and dtype, with its config, where its weights came from, a fingerprint of them
and its WordPiece tokenizer; and seeded random weights (BERT's init) for either, never made silently. Reading and
checking their checkpoints is ``encoders.checkpoint``'s."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from encoders.bert import init_bert_weights
from encoders.checkpoint import tensors_fingerprint
from encoders.config import EncoderConfig
from encoders.tokenizer import WordPieceTokenizer, find_vocab

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ArrayLike = np.ndarray | torch.Tensor
ConfigLike = str | Path | dict | EncoderConfig | None


class LoadedModel:
    """``model`` in eval mode on ``device`` in ``dtype``; ``source`` names its weights (a path or ``random:seed=N``)."""

    fingerprint_prefix: ClassVar[str]  # "ldot", "uniter": which model a fingerprint is of

    def __init__(self, model: nn.Module, config: EncoderConfig, *, device: str = "cpu", dtype: str = "float32",
                 source: str = "", random_seed: int | None = None, vocab: str | None = None) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.config = config
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        self.source = source
        self.random_seed = random_seed
        self.vocab = vocab
        self.model = model.eval().to(self.device, self.dtype)
        self._fingerprint: str | None = None
        self._tokenizer: WordPieceTokenizer | None = None

    @property
    def fingerprint(self) -> str:
        """sha256 of config + every tensor (name, shape, float32 bytes); stable across save/load, layouts and
        dtypes. ``mask_embedding`` is skipped: pre-training only, absent from some checkpoints."""
        if self._fingerprint is None:
            digest = tensors_fingerprint(self.config.to_dict(), self.model.state_dict(),
                                         skip=lambda name: name.endswith("mask_embedding.weight"))
            prefix = "random-" if self.random_seed is not None else ""
            self._fingerprint = f"{self.fingerprint_prefix}-{prefix}{digest[:16]}"
        return self._fingerprint

    def tokenizer(self, lowercase: bool = False) -> WordPieceTokenizer:
        """The WordPiece tokenizer of this model's vocab (``encoders.tokenizer.find_vocab``), made once."""
        if self._tokenizer is None:
            self._tokenizer = WordPieceTokenizer(find_vocab(self.vocab, self.source or None), lowercase=lowercase,
                                                 max_length=self.config.max_position_embeddings)
        return self._tokenizer

    def describe(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "source": self.source, "config": self.config.to_dict(),
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", "")}


def random_model(build: Callable[[EncoderConfig], nn.Module], config: ConfigLike,
                 seed: int) -> tuple[nn.Module, EncoderConfig]:
    """``build(cfg)`` with BERT's N(0, 0.02) init from ``seed``, and its config."""
    cfg = EncoderConfig.load(config)
    return init_bert_weights(build(cfg), seed), cfg
