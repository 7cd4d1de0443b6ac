"""The UNITER re-ranker against an independent reference built from HuggingFace's BertModel.

The reference re-derives UNITER's retrieval model one unpadded pair at a time with transformers' own
embeddings, encoder and pooler (the region embedding written out by hand): text tokens at positions 0..T-1
with token type 0, then the regions with token type 1, the pooler's tanh on position 0, then the head.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from encoders.checkpoint import CheckpointError
from encoders.config import TINY_CONFIG, EncoderConfig
from encoders.reranker import UniterReranker
from tests.helpers_uniter import reference_regions, region_embedding_weights

CFG = EncoderConfig.from_json(TINY_CONFIG)
H = CFG.hidden_size


@pytest.fixture(scope="module")
def published() -> dict:
    """A random UNITER fine-tuned retrieval model (flat ``uniter.*`` + heads) and the HF BertModel it came from."""
    torch.manual_seed(11)
    hf = BertModel(BertConfig(vocab_size=CFG.vocab_size, hidden_size=H, num_hidden_layers=CFG.num_layers,
                              num_attention_heads=CFG.num_heads, intermediate_size=CFG.intermediate_size,
                              max_position_embeddings=CFG.max_position_embeddings, layer_norm_eps=CFG.layer_norm_eps,
                              attn_implementation="eager"), add_pooling_layer=True)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-trivial LayerNorms and larger weights, so that pairs score visibly differently
        for name, p in hf.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
            elif p.ndim == 2 and "embeddings" not in name:
                p.mul_(2)
    hf.eval()
    state = {f"uniter.{k}": v.clone() for k, v in hf.state_dict().items()}
    for k, value in region_embedding_weights(CFG, gen).items():
        state[f"uniter.img_embeddings.{k}"] = value
    # heads of a trained model's scale: logits of a few units
    state["itm_output.weight"] = torch.randn(2, H, generator=gen) * 0.3
    state["itm_output.bias"] = torch.randn(2, generator=gen)
    state["rank_output.weight"] = torch.randn(1, H, generator=gen) * 0.3
    state["rank_output.bias"] = torch.randn(1, generator=gen)
    return {"state": state, "hf": hf}


def reference_score(ref: dict, ids: np.ndarray, feats: np.ndarray, boxes7: np.ndarray, head: str = "rank") -> float:
    """UNITER's retrieval score for one unpadded pair: HF text embeddings + hand-made region embeddings."""
    s, hf = ref["state"], ref["hf"]
    prefix = "uniter.img_embeddings."
    weights = {k[len(prefix):]: v for k, v in s.items() if k.startswith(prefix)}
    with torch.no_grad():
        regions = reference_regions(weights, CFG, hf.embeddings.token_type_embeddings.weight[1], feats, boxes7)
        text = hf.embeddings(input_ids=torch.as_tensor(ids)[None])  # positions 0..T-1, token type 0
        pooled = hf.pooler(hf.encoder(torch.cat([text, regions], 1)).last_hidden_state)
        w, bias = ((s["itm_output.weight"][1:], s["itm_output.bias"][1:]) if head == "itm"
                   else (s["rank_output.weight"], s["rank_output.bias"]))
        return float(F.linear(pooled, w, bias)[0, 0])


def make_pairs(text_lens: list[int], box_counts: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """Zero-padded pair arrays in the score() contract, with garbage in every padded slot."""
    rng = np.random.default_rng(seed)
    p, width, n = len(text_lens), max(text_lens), max(box_counts)
    ids = rng.integers(1000, 20000, (p, width))
    ids[:, 0] = 101
    mask = np.zeros((p, width), dtype=np.int64)
    feats = rng.random((p, n, CFG.feature_dim), dtype=np.float32) * 2
    xy1 = rng.random((p, n, 2)) * 0.5
    wh = rng.random((p, n, 2)) * 0.5 + 0.01
    boxes = np.concatenate([xy1, xy1 + wh, wh], -1).astype(np.float32)
    for i, (t, c) in enumerate(zip(text_lens, box_counts, strict=True)):
        ids[i, t - 1] = 102
        mask[i, :t] = 1
        ids[i, t:] = 7  # not [PAD]: the mask alone must keep it out
        feats[i, c:] = 1e3
        boxes[i, c:] = -7
    return {"input_ids": ids, "attention_mask": mask, "features": feats, "boxes": boxes,
            "num_boxes": np.array(box_counts)}


def with_area(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes, boxes[..., 4:5] * boxes[..., 5:6]], -1)


def one(pairs: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t, c = int(pairs["attention_mask"][i].sum()), int(pairs["num_boxes"][i])
    return pairs["input_ids"][i, :t], pairs["features"][i, :c], with_area(pairs["boxes"][i, :c])


@pytest.fixture(scope="module")
def layouts(published, tmp_path_factory) -> dict[str, str]:
    """The same weights in each published layout."""
    d = tmp_path_factory.mktemp("uniter")
    state = published["state"]
    body = {k: v for k, v in state.items() if k.startswith("uniter.")}
    heads = {k: v for k, v in state.items() if not k.startswith("uniter.")}
    paths = {name: str(d / f"{name}.pt") for name in ("uniter", "ldot", "pretrained", "fp16", "fp16_as_fp32")}
    torch.save({**state, "uniter.embeddings.position_ids": torch.arange(CFG.max_position_embeddings)[None]},
               paths["uniter"])
    torch.save({**{"bert." + k.removeprefix("uniter."): v for k, v in body.items()}, **heads}, paths["ldot"])
    pre = {**body, "itm_output.weight": state["itm_output.weight"], "itm_output.bias": state["itm_output.bias"],
           "cls.predictions.bias": torch.zeros(CFG.vocab_size), "cls.predictions.transform.dense.weight":
           torch.zeros(H, H), "feat_regress.weight": torch.zeros(H, CFG.feature_dim),
           "region_classifier.net.0.weight": torch.zeros(H, H)}
    torch.save(pre, paths["pretrained"])
    torch.save({k: v.half() for k, v in state.items()}, paths["fp16"])
    torch.save({k: v.half().float() for k, v in state.items()}, paths["fp16_as_fp32"])
    return paths


@pytest.fixture(scope="module")
def reranker(layouts) -> UniterReranker:
    return UniterReranker.from_checkpoint(layouts["uniter"], TINY_CONFIG)


def test_scores_match_the_hf_reference_pair_by_pair(published, reranker):
    pairs = make_pairs([2, 7, 60, 13], [1, 100, 10, 36])
    got = reranker.score(**pairs)
    assert got.dtype == np.float32 and got.shape == (4,)
    want = [reference_score(published, *one(pairs, i)) for i in range(4)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.ptp(want) > 0.1  # the pairs really score differently


def test_itm_head_matches_reference_and_differs_from_rank(published, layouts):
    itm = UniterReranker.from_checkpoint(layouts["uniter"], TINY_CONFIG, head="itm")
    pairs = make_pairs([5, 9], [3, 20], seed=1)
    got = itm.score(**pairs)
    np.testing.assert_allclose(got, [reference_score(published, *one(pairs, i), head="itm") for i in range(2)],
                               rtol=0, atol=1e-5)
    rank = UniterReranker.from_checkpoint(layouts["uniter"], TINY_CONFIG).score(**pairs)
    assert np.abs(got - rank).min() > 1e-2
    assert itm.describe()["scores_with"] == "itm_output[1]" and not itm.zero_shot


def test_layouts_give_identical_scores(layouts, reranker):
    pairs = make_pairs([4, 11, 30], [10, 2, 55], seed=2)
    want = reranker.score(**pairs)
    ldot = UniterReranker.from_checkpoint(layouts["ldot"], TINY_CONFIG)
    np.testing.assert_array_equal(ldot.score(**pairs), want)
    assert ldot.fingerprint == reranker.fingerprint
    # the pre-trained layout has no rank_output: zero-shot = itm_output row 1, exactly like head="itm"
    pre = UniterReranker.from_checkpoint(layouts["pretrained"], TINY_CONFIG)
    assert pre.zero_shot and pre.describe()["scores_with"] == "itm_output[1]"
    itm = UniterReranker.from_checkpoint(layouts["uniter"], TINY_CONFIG, head="itm")
    np.testing.assert_array_equal(pre.score(**pairs), itm.score(**pairs))
    pre_itm = UniterReranker.from_checkpoint(layouts["pretrained"], TINY_CONFIG, head="itm")
    np.testing.assert_array_equal(pre_itm.score(**pairs), itm.score(**pairs))


def test_fp16_checkpoint_is_upcast(layouts, reranker):
    pairs = make_pairs([6, 20], [12, 40], seed=3)
    fp16 = UniterReranker.from_checkpoint(layouts["fp16"], TINY_CONFIG)
    assert all(p.dtype == torch.float32 for p in fp16.model.parameters())
    np.testing.assert_array_equal(fp16.score(**pairs),
                                  UniterReranker.from_checkpoint(layouts["fp16_as_fp32"], TINY_CONFIG).score(**pairs))
    np.testing.assert_allclose(fp16.score(**pairs), reranker.score(**pairs), atol=5e-2)  # only fp16 rounding


def test_fsspec_checkpoint_path(layouts, reranker):
    import fsspec

    with open(layouts["uniter"], "rb") as src, fsspec.open("memory://ckpt/model_step_5000.pt", "wb") as dst:
        dst.write(src.read())
    remote = UniterReranker.from_checkpoint("memory://ckpt/model_step_5000.pt", TINY_CONFIG)
    pairs = make_pairs([3], [4], seed=4)
    np.testing.assert_array_equal(remote.score(**pairs), reranker.score(**pairs))


def test_padding_and_batch_invariance(reranker):
    texts, boxes = [2, 60, 2, 60, 2, 60], [1, 10, 100, 1, 10, 100]
    pairs = make_pairs(texts, boxes, seed=5)
    together = reranker.score(**pairs, batch_size=6)
    bucketed = reranker.score(**pairs, batch_size=2)
    padded = reranker.score(**pairs, batch_size=4, bucketing=False)
    alone = np.array([reranker.score(ids[None], np.ones((1, len(ids)), np.int64), f[None], b[None], [len(f)])[0]
                      for ids, f, b in (one(pairs, i) for i in range(len(texts)))])
    for got in (together, bucketed, padded):
        np.testing.assert_allclose(got, alone, rtol=0, atol=1e-6)
    assert np.abs(alone[1] - alone[5]).max() > 1e-3  # different pairs really differ


def test_six_and_seven_dim_boxes_are_identical(reranker):
    pairs = make_pairs([5, 8], [4, 9], seed=6)
    seven = dict(pairs, boxes=with_area(pairs["boxes"]))
    np.testing.assert_array_equal(reranker.score(**pairs), reranker.score(**seven))
    seven["boxes"][..., 6] += 0.5  # the 7th value is really used
    assert np.abs(reranker.score(**seven) - reranker.score(**pairs)).max() > 1e-4


def test_score_texts_images_tokenizes_with_the_vocab(reranker, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "dog", "on", "the", "beach", "."]) + "\n")
    r = UniterReranker(reranker.model, reranker.config, vocab=str(vocab))
    feats, boxes = make_pairs([2, 2], [3, 7], seed=7)["features"], make_pairs([2, 2], [3, 7], seed=7)["boxes"]
    regions = [feats[0, :3], feats[1, :7]]
    got = r.score_texts_images(["a dog on the beach .", "the dog ."], regions, [boxes[0, :3], boxes[1, :7]])
    ids = np.array([[2, 4, 5, 6, 7, 8, 9, 3], [2, 7, 5, 9, 3, 0, 0, 0]])
    mask = (np.arange(8)[None] < np.array([[8], [5]])).astype(np.int64)
    np.testing.assert_array_equal(got, r.score(ids, mask, feats[:, :7], boxes[:, :7], [3, 7]))


def test_missing_foreign_and_misshapen_keys_are_named(published, tmp_path):
    state = dict(published["state"])
    del state["uniter.pooler.dense.weight"]
    state["uniter.encoder.layer.1.output.dense.bias"] = torch.zeros(H + 1)
    state["vqa_output.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        UniterReranker.from_checkpoint(tmp_path / "bad.pt", TINY_CONFIG)
    assert "vqa_output.weight" in str(err.value)
    torch.save({k: v for k, v in state.items() if k != "vqa_output.weight"}, tmp_path / "bad2.pt")
    with pytest.raises(CheckpointError) as err:
        UniterReranker.from_checkpoint(tmp_path / "bad2.pt", TINY_CONFIG)
    msg = str(err.value)
    assert "missing keys: uniter.pooler.dense.weight" in msg
    assert "uniter.encoder.layer.1.output.dense.bias: checkpoint (65,) vs model (64,)" in msg


def test_wrong_size_half_head_and_wrong_model_are_refused(published, layouts, tmp_path):
    with pytest.raises(CheckpointError, match=r"shape mismatch.*re-ranker config"):
        UniterReranker.from_checkpoint(layouts["uniter"])  # config=None is UNITER-base
    state = {k: v for k, v in published["state"].items() if k != "rank_output.bias"}
    torch.save(state, tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match=r"rank_output\.weight but not its pair"):
        UniterReranker.from_checkpoint(tmp_path / "half.pt", TINY_CONFIG)
    torch.save({"model_dict": {"img_model.bert.x": torch.zeros(1)}}, tmp_path / "biencoder.pt")
    with pytest.raises(CheckpointError, match="bi-encoder checkpoint, not a UNITER"):
        UniterReranker.from_checkpoint(tmp_path / "biencoder.pt", TINY_CONFIG)
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"not a UNITER checkpoint.*fc\.weight"):
        UniterReranker.from_checkpoint(tmp_path / "other.pt", TINY_CONFIG)
    with pytest.raises(ValueError, match="head must be one of"):
        UniterReranker.from_checkpoint(layouts["uniter"], TINY_CONFIG, head="match")


def test_tf_style_layer_norm_names_load(published, reranker, tmp_path):
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in published["state"].items()}
    torch.save(renamed, tmp_path / "old.pt")
    pairs = make_pairs([4], [6], seed=8)
    np.testing.assert_array_equal(UniterReranker.from_checkpoint(tmp_path / "old.pt", TINY_CONFIG).score(**pairs),
                                  reranker.score(**pairs))


def test_input_validation(reranker):
    pairs = make_pairs([3, 4], [2, 5])
    with pytest.raises(ValueError, match="6 or 7"):
        reranker.score(**dict(pairs, boxes=pairs["boxes"][..., :4]))
    with pytest.raises(ValueError, match="num_boxes"):
        reranker.score(**dict(pairs, num_boxes=np.array([0, 5])))
    holes = pairs["attention_mask"].copy()
    holes[0, 1] = 0
    with pytest.raises(ValueError, match="attention_mask must be 1"):
        reranker.score(**dict(pairs, attention_mask=holes))
    with pytest.raises(ValueError, match="token ids"):
        reranker.score(**dict(pairs, input_ids=pairs["input_ids"] + CFG.vocab_size))
