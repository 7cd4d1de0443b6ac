"""Cased WordPiece tokenization for the text tower, from a vocab file the user gives (never downloaded).

Built on the ``tokenizers`` library from an explicit vocab dict: ``transformers``' ``BertTokenizerFast(vocab_file=…)``
can silently fall back to another vocab, which would make every query embedding wrong without an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import numpy as np
from tokenizers import BertWordPieceTokenizer

from core.errors import UsageError

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


class VocabError(UsageError):
    """No vocab, or a file that is not a BERT WordPiece vocab."""


class WordPieceTokenizer:
    """``[CLS] tokens [SEP]``, truncated to ``max_length``; cased unless ``lowercase`` (for uncased vocabs)."""

    def __init__(self, vocab_file: str | Path, lowercase: bool = False, max_length: int = 512) -> None:
        self.vocab_file = str(vocab_file)
        self.vocab = read_vocab(vocab_file)
        missing = [t for t in SPECIAL if t not in self.vocab]
        if missing:
            raise VocabError(f"{vocab_file}: not a BERT WordPiece vocab, it lacks {missing}")
        self.max_length = max_length
        self.pad_id = self.vocab["[PAD]"]
        self._tok = BertWordPieceTokenizer(self.vocab, lowercase=lowercase, strip_accents=lowercase)
        self._tok.enable_truncation(max_length)

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text).tokens

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> input_ids [B, L] int64, attention_mask [B, L] int64, padded to the longest text."""
        encoded = self._tok.encode_batch(list(texts))
        width = max((len(e.ids) for e in encoded), default=2)
        ids = np.full((len(encoded), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        return ids, mask


def read_vocab(path: str | Path) -> dict[str, int]:
    with fsspec.open(str(path), "r", encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    if not tokens:
        raise VocabError(f"{path}: empty vocab file")
    return {tok: i for i, tok in enumerate(tokens) if tok}


def find_vocab(vocab: str | Path | None, checkpoint: str | Path | None = None) -> str:
    """The vocab to use: the one given, else $LDOT_VOCAB, else ``vocab.txt`` beside the checkpoint."""
    if vocab:
        return str(vocab)
    if os.environ.get("LDOT_VOCAB"):
        return os.environ["LDOT_VOCAB"]
    if checkpoint and "://" not in str(checkpoint):
        beside = Path(checkpoint).parent / "vocab.txt"
        if beside.is_file():
            return str(beside)
    raise VocabError(
        "text encoding needs the bert-base-cased WordPiece vocab (vocab.txt, 28996 lines): pass --vocab PATH, "
        "set LDOT_VOCAB, or put vocab.txt beside the checkpoint; nothing is downloaded"
    )
