"""The WordPiece tokenizer really uses the vocab file it is given (cased, [CLS] … [SEP], truncation)."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.config import TINY_CONFIG
from encoders.lightningdot import LightningDOT
from encoders.tokenizer import VocabError, WordPieceTokenizer, find_vocab

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "A", "a", "dog", "Dog", "run", "##ning", "on", "the",
         "beach", "play", "##ing", ",", ".", "café", "cafe"]


@pytest.fixture()
def vocab(tmp_path) -> str:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return str(path)


def test_real_words_split_with_the_given_vocab(vocab):
    tok = WordPieceTokenizer(vocab)
    assert tok.tokenize("A dog running on the beach.") == \
        ["[CLS]", "A", "dog", "run", "##ning", "on", "the", "beach", ".", "[SEP]"]
    assert tok.tokenize("playing") == ["[CLS]", "play", "##ing", "[SEP]"]


def test_cased_keeps_case_and_accents(vocab):
    tok = WordPieceTokenizer(vocab)
    assert tok.tokenize("Dog dog DOG") == ["[CLS]", "Dog", "dog", "[UNK]", "[SEP]"]
    assert tok.tokenize("café") == ["[CLS]", "café", "[SEP]"]
    assert WordPieceTokenizer(vocab, lowercase=True).tokenize("DOG Café") == ["[CLS]", "dog", "cafe", "[SEP]"]


def test_ids_come_from_the_file_and_batches_pad(vocab):
    ids, mask = WordPieceTokenizer(vocab).encode(["a dog", "the beach , a dog running"])
    assert ids[0].tolist()[:4] == [2, 6, 7, 3] and ids[0, 4:].tolist() == [0] * (ids.shape[1] - 4)
    assert mask.sum(1).tolist() == [4, 9]
    assert ids.dtype == np.int64


def test_truncation_keeps_sep(vocab):
    tok = WordPieceTokenizer(vocab, max_length=5)
    assert tok.tokenize("a dog on the beach a dog") == ["[CLS]", "a", "dog", "on", "[SEP]"]


def test_missing_or_bad_vocab_is_a_clear_error(tmp_path, monkeypatch, tiny_encoder):
    monkeypatch.delenv("LDOT_VOCAB", raising=False)
    with pytest.raises(VocabError, match="--vocab"):
        find_vocab(None, tmp_path / "model.pt")
    bad = tmp_path / "words.txt"
    bad.write_text("hello\nworld\n")
    with pytest.raises(VocabError, match=r"lacks \['\[PAD\]'"):
        WordPieceTokenizer(bad)
    model = tiny_encoder
    with pytest.raises(VocabError, match="vocab"):
        model.encode_captions(["a dog"])


def test_vocab_found_beside_checkpoint(tmp_path, vocab, monkeypatch):
    monkeypatch.delenv("LDOT_VOCAB", raising=False)
    (tmp_path / "vocab.txt").write_text("\n".join(WORDS))
    assert find_vocab(None, tmp_path / "coco-ft.pt") == str(tmp_path / "vocab.txt")


def test_encode_captions_equals_manual_tokens(vocab):
    model = LightningDOT.random(TINY_CONFIG, vocab=vocab)
    ids, mask = WordPieceTokenizer(vocab).encode(["a dog running", "the beach"])
    np.testing.assert_allclose(model.encode_captions(["a dog running", "the beach"]), model.encode_texts(ids, mask),
                               atol=1e-6)
