"""The query fast path (ONNX Runtime) against our eager text tower: fp32 equal within 1e-5, int8 within a bound."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from bench.query import make_queries
from encoders.config import TINY_CONFIG
from encoders.lightningdot import LightningDOT
from encoders.query_encoder import QueryEncoder, split_outlier_channels
from index.search import SearchIndex
from index.settings import BuildSettings
from pipeline.build_index_job import build_index
from tests.helpers_index import BEAM, write_embeddings
from tests.helpers_minilm import CAPTIONS

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def _ragged_ids(model: LightningDOT, lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(5, model.config.vocab_size, n)
        mask[row, :n] = 1
    return ids, mask


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def tiny() -> LightningDOT:
    model = LightningDOT.random(TINY_CONFIG, seed=3)
    with torch.no_grad():  # spread N(0, 0.02) weights, whose outputs are near-parallel, so differences show
        for p in model.model.txt_model.parameters():
            if p.ndim == 2:
                p.mul_(5)
    return model


def test_fp32_graph_matches_eager_at_any_length_and_batch(tiny):
    fast = QueryEncoder(tiny, "fp32", threads=2)
    ids, mask = _ragged_ids(tiny, [1, 2, 5, 16, 3, 40, 7])
    want = tiny.encode_texts(ids, mask)
    for i in range(len(ids)):  # batch 1, trimmed to its own length: the serving case
        n = int(mask[i].sum())
        np.testing.assert_allclose(fast.encode_texts(ids[i:i + 1, :n], mask[i:i + 1, :n]), want[i:i + 1], atol=1e-5)
    assert fast._pool is None  # a budget of 2 threads: one query still runs on the calling thread alone
    np.testing.assert_allclose(fast.encode_texts(ids, mask), want, rtol=0, atol=1e-5)
    assert fast._pool is not None  # a batch is split across the budget
    assert np.abs(want[0] - want[1]).max() > 1e-2  # different texts really differ
    # concurrent callers (a server's threads) share one session
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: fast.encode_texts(ids[i:i + 1], mask[i:i + 1]), range(len(ids))))
    np.testing.assert_allclose(np.concatenate(got), want, atol=1e-5)
    fast.close()


def test_bad_inputs_and_settings_are_clear_errors(tiny):
    fast = QueryEncoder(tiny, "fp32", threads=1)
    with pytest.raises(ValueError, match="outside the vocab"):
        fast.encode_texts(np.array([[101, tiny.config.vocab_size]]), np.ones((1, 2), np.int64))
    with pytest.raises(ValueError, match=r"must be \[B, L\]"):
        fast.encode_texts(np.array([101, 102]), np.ones((1, 2), np.int64))
    assert fast.encode_texts(np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64)).shape == (0, 768)
    with pytest.raises(ValueError, match="precision must be one of"):
        QueryEncoder(tiny, "int4")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        QueryEncoder(tiny, "fp32", threads=0)


@pytest.mark.slow
def test_real_weights_fp32_exact_and_int8_bounded_with_top10_agreement(minilm, tmp_path_factory):
    ids, mask = minilm.tokenizer().encode(CAPTIONS)
    assert not any("[UNK]" in minilm.tokenizer().tokenize(c) for c in CAPTIONS)  # a real vocab, really used
    eager = minilm.encode_texts(ids, mask)
    fp32 = QueryEncoder(minilm, "fp32").encode_captions(CAPTIONS)
    np.testing.assert_allclose(fp32, eager, rtol=0, atol=1e-5)

    tower, split = split_outlier_channels(minilm)  # an exact rewrite in fp32; real weights do have outliers
    assert split >= 6
    with torch.inference_mode():
        np.testing.assert_allclose(tower(torch.as_tensor(ids), torch.as_tensor(mask)).numpy(), eager, atol=1e-5)

    int8 = QueryEncoder(minilm, "int8")
    q8 = int8.encode_captions(CAPTIONS)
    one_by_one = np.concatenate([int8.encode_captions([c]) for c in CAPTIONS])
    np.testing.assert_array_equal(q8, one_by_one)  # an int8 embedding does not depend on its batch-mates
    cos = _cosine(q8, eager)
    print(f"int8 vs fp32 on {len(CAPTIONS)} captions: min cosine {cos.min():.5f}, mean {cos.mean():.5f}, "
          f"max |err| {np.abs(q8 - eager).max():.3f}")
    # measured 0.99943 / 0.99962 (u8 x u8, outlier split at ratio 3, the six sensitive Linears in fp32); with
    # QInt8 7-bit weights and ratio 6 0.9978 / 0.9984, without any split 0.990 / 0.994
    assert cos.min() >= 0.999 and cos.mean() >= 0.9993

    # rank agreement on a built index whose "images" are fp32 embeddings of other real-word captions
    corpus = minilm.encode_captions(make_queries(400, seed=1) + CAPTIONS)
    root = tmp_path_factory.mktemp("int8-index")
    write_embeddings(root / "emb" / "part-0.parquet", corpus, model=minilm.fingerprint)
    build_index([str(root / "emb")], str(root / "index"), BuildSettings(selfcheck_queries=20), beam_args=BEAM)
    idx = SearchIndex.open(str(root / "index"))
    exact, approx = idx.search(eager, 10).ids, idx.search(q8, 10).ids
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx, strict=True)])
    top1 = np.mean(exact[:, 0] == approx[:, 0])
    print(f"int8 top-10 overlap {overlap:.3f}, top-1 agreement {top1:.3f}")
    assert overlap >= 0.9 and top1 >= 0.9  # measured 0.96 and 1.0
