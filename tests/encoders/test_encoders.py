"""LightningDOT towers against an independent reference built from HuggingFace's BertModel.

The reference re-derives docs/conventions.md with transformers' own layers, so a wrong name, a
missing LayerNorm or a wrong readout in ``encoders/`` shows up as a numeric mismatch, not a shape error.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from encoders.checkpoint import CheckpointError
from encoders.config import TINY_CONFIG, ConfigError, EncoderConfig
from encoders.lightningdot import LightningDOT
from tests.helpers_uniter import reference_regions, region_embedding_weights

CFG = EncoderConfig.from_json(TINY_CONFIG)
H = CFG.hidden_size


def _hf_bert(seed: int) -> BertModel:
    torch.manual_seed(seed)
    hf = BertModel(BertConfig(vocab_size=CFG.vocab_size, hidden_size=H, num_hidden_layers=CFG.num_layers,
                              num_attention_heads=CFG.num_heads, intermediate_size=CFG.intermediate_size,
                              max_position_embeddings=CFG.max_position_embeddings, layer_norm_eps=CFG.layer_norm_eps,
                              attn_implementation="eager"))
    with torch.no_grad():  # non-trivial LayerNorm affine params so a skipped norm cannot go unnoticed
        for name, p in hf.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return hf.eval()


def _proj_state(prefix: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    shapes = {"0.weight": (2 * H, H), "0.bias": (2 * H,), "2.weight": (2 * H,), "2.bias": (2 * H,),
              "3.weight": (CFG.project_dim, 2 * H), "3.bias": (CFG.project_dim,)}
    state = {f"{prefix}.encode_proj.{k}": torch.randn(s, generator=gen) * 0.05 for k, s in shapes.items()}
    state[f"{prefix}.encode_proj.2.weight"] += 1.0
    return state


@pytest.fixture(scope="module")
def published() -> dict:
    """A random model in the fine-tuned layout, plus the HF modules that serve as the reference."""
    gen = torch.Generator().manual_seed(7)
    img_hf, txt_hf = _hf_bert(1), _hf_bert(2)
    state: dict[str, torch.Tensor] = {}
    for prefix, hf in (("img_model", img_hf), ("txt_model", txt_hf)):
        state.update({f"{prefix}.bert.{k}": v.clone() for k, v in hf.state_dict().items()})  # incl. pooler
        state[f"{prefix}.bert.embeddings.position_ids"] = torch.arange(CFG.max_position_embeddings)[None]
        state.update(_proj_state(prefix, gen))
    for k, value in region_embedding_weights(CFG, gen).items():
        state[f"img_model.bert.img_embeddings.{k}"] = value
    return {"state": state, "img_hf": img_hf, "txt_hf": txt_hf}


def _reference_image(ref: dict, feats: np.ndarray, boxes7: np.ndarray) -> np.ndarray:
    """The image tower of docs/conventions.md, one unpadded image at a time, on HF's embeddings and encoder layers."""
    s, hf = ref["state"], ref["img_hf"]
    prefix = "img_model.bert.img_embeddings."
    weights = {k[len(prefix):]: v for k, v in s.items() if k.startswith(prefix)}
    with torch.no_grad():
        regions = reference_regions(weights, CFG, hf.embeddings.token_type_embeddings.weight[1], feats, boxes7)
        cls = hf.embeddings(input_ids=torch.tensor([[101]]))
        hidden = hf.encoder(torch.cat([cls, regions], 1)).last_hidden_state[:, 0]
        return _proj(s, "img_model", hidden).numpy()


def _proj(s: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    w = {k: s[f"{prefix}.encode_proj.{k}"] for k in ("0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias")}
    x = F.gelu(F.linear(x, w["0.weight"], w["0.bias"]))
    x = F.layer_norm(x, (2 * H,), w["2.weight"], w["2.bias"], 1e-12)
    return F.linear(x, w["3.weight"], w["3.bias"])


def _reference_text(ref: dict, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = ref["txt_hf"](input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).last_hidden_state
        return _proj(ref["state"], "txt_model", out[:, 0]).numpy()


def _regions(counts: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = max(counts)
    feats = rng.random((len(counts), n, CFG.feature_dim), dtype=np.float32) * 2
    xy1 = rng.random((len(counts), n, 2)) * 0.5
    wh = rng.random((len(counts), n, 2)) * 0.5 + 0.01
    boxes = np.concatenate([xy1, xy1 + wh, wh], -1).astype(np.float32)
    for i, c in enumerate(counts):  # garbage in the padding must not matter
        feats[i, c:] = 1e3
        boxes[i, c:] = -7
    return feats, boxes, np.array(counts)


def _with_area(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes, boxes[..., 4:5] * boxes[..., 5:6]], -1)


@pytest.fixture(scope="module")
def finetuned_path(published, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ckpt") / "flickr-ft.pt"
    torch.save({"model_dict": published["state"], "optimizer": {"state": {}, "param_groups": []}, "epoch": 3,
                "scheduler": {"last_epoch": 10}}, path)
    return str(path)


@pytest.fixture(scope="module")
def pretrained_path(published, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ckpt") / "LightningDot.pt"
    flat = {f"bert.{k}": v for k, v in published["state"].items()}
    flat.update({"cls.predictions.bias": torch.zeros(CFG.vocab_size), "feat_regress.weight": torch.zeros(4, 4),
                 "region_classifier.net.0.weight": torch.zeros(4, 4), "itm_output.weight": torch.zeros(2, H)})
    torch.save(flat, path)
    return str(path)


def test_image_tower_matches_reference(published, finetuned_path):
    model = LightningDOT.from_checkpoint(finetuned_path, TINY_CONFIG)
    feats, boxes, counts = _regions([1, 7, 30])
    got = model.encode_images(feats, boxes, counts)
    for i, c in enumerate(counts):
        want = _reference_image(published, feats[i, :c], _with_area(boxes[i, :c]))
        np.testing.assert_allclose(got[i : i + 1], want, rtol=1e-4, atol=1e-5)


def test_text_tower_matches_hf_bert(published, finetuned_path):
    model = LightningDOT.from_checkpoint(finetuned_path, TINY_CONFIG)
    ids = np.array([[101, 1000, 2000, 3000, 102], [101, 4000, 102, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    np.testing.assert_allclose(model.encode_texts(ids, mask), _reference_text(published, ids, mask),
                               rtol=1e-4, atol=1e-5)


def test_both_published_layouts_give_identical_embeddings(finetuned_path, pretrained_path):
    a = LightningDOT.from_checkpoint(finetuned_path, TINY_CONFIG)
    b = LightningDOT.from_checkpoint(pretrained_path, TINY_CONFIG)
    feats, boxes, counts = _regions([3, 12])
    np.testing.assert_array_equal(a.encode_images(feats, boxes, counts), b.encode_images(feats, boxes, counts))
    ids, mask = np.array([[101, 555, 102]]), np.ones((1, 3), dtype=np.int64)
    np.testing.assert_array_equal(a.encode_texts(ids, mask), b.encode_texts(ids, mask))
    assert a.fingerprint == b.fingerprint


def test_save_load_round_trip(tmp_path):
    model = LightningDOT.random(TINY_CONFIG, seed=3)
    path = tmp_path / "ours.pt"
    model.save(path)
    loaded = LightningDOT.from_checkpoint(path)  # config travels inside our checkpoints
    feats, boxes, counts = _regions([5, 9])
    np.testing.assert_array_equal(model.encode_images(feats, boxes, counts), loaded.encode_images(feats, boxes, counts))
    assert loaded.config == model.config
    assert loaded.fingerprint.removeprefix("ldot-") == model.fingerprint.removeprefix("ldot-random-")


def test_padding_and_batch_invariance_with_1_10_100_boxes():
    model = LightningDOT.random(TINY_CONFIG, seed=1)
    feats, boxes, counts = _regions([100, 1, 10, 100, 10, 1], seed=4)
    together = model.encode_images(feats, boxes, counts, batch_size=6)
    bucketed = model.encode_images(feats, boxes, counts, batch_size=2)
    alone = np.concatenate([model.encode_images(feats[i : i + 1, :c], boxes[i : i + 1, :c], counts[i : i + 1])
                            for i, c in enumerate(counts)])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(bucketed, alone, atol=1e-5, rtol=0)
    assert np.abs(alone[0] - alone[3]).max() > 1e-3  # different images really differ


def test_six_and_seven_dim_boxes_agree():
    model = LightningDOT.random(TINY_CONFIG, seed=2)
    feats, boxes, counts = _regions([4, 8])
    np.testing.assert_allclose(model.encode_images(feats, boxes, counts),
                               model.encode_images(feats, _with_area(boxes), counts), atol=1e-6)
    changed = _with_area(boxes)
    changed[..., 6] += 0.5  # the 7th value is really used
    assert np.abs(model.encode_images(feats, changed, counts) - model.encode_images(feats, boxes, counts)).max() > 1e-4


def test_text_bucketing_matches_one_at_a_time():
    model = LightningDOT.random(TINY_CONFIG, seed=5)
    ids = np.array([[101, 7, 8, 9, 10, 102], [101, 11, 102, 0, 0, 0], [101, 12, 13, 102, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    batched = model.encode_texts(ids, mask, batch_size=2)
    alone = np.concatenate([model.encode_texts(ids[i : i + 1, : mask[i].sum()], mask[i : i + 1, : mask[i].sum()])
                            for i in range(3)])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_wrong_shape_names_the_key(published, tmp_path):
    state = dict(published["state"])
    state["txt_model.encode_proj.3.weight"] = torch.zeros(512, 2 * H)
    torch.save({"model_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"txt_model\.encode_proj\.3\.weight.*\(512, 128\).*\(768, 128\)"):
        LightningDOT.from_checkpoint(tmp_path / "bad.pt", TINY_CONFIG)


def test_foreign_and_missing_keys_are_named(published, tmp_path):
    state = dict(published["state"])
    state["img_model.bert.extra_head.weight"] = torch.zeros(3)
    del state["img_model.bert.encoder.layer.1.output.dense.bias"]
    torch.save({"model_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        LightningDOT.from_checkpoint(tmp_path / "bad.pt", TINY_CONFIG)
    assert "img_model.bert.extra_head.weight" in str(err.value)
    assert "img_model.bert.encoder.layer.1.output.dense.bias" in str(err.value)


def test_foreign_key_in_pretrained_layout(published, tmp_path):
    flat = {f"bert.{k}": v for k, v in published["state"].items()} | {"discriminator.weight": torch.zeros(1)}
    torch.save(flat, tmp_path / "pre.pt")
    with pytest.raises(CheckpointError, match=r"discriminator\.weight"):
        LightningDOT.from_checkpoint(tmp_path / "pre.pt", TINY_CONFIG)


def test_base_config_refuses_tiny_checkpoint(finetuned_path):
    with pytest.raises(CheckpointError, match="shape mismatch"):
        LightningDOT.from_checkpoint(finetuned_path)  # config=None is BERT-base


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoints_are_never_unpickled(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model_dict": _Payload()}, f)
    with pytest.raises(CheckpointError, match="weights-only"):
        LightningDOT.from_checkpoint(tmp_path / "evil.pt", TINY_CONFIG)


def test_not_a_lightningdot_checkpoint(tmp_path):
    torch.save({"state_dict": {"fc.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a LightningDOT checkpoint"):
        LightningDOT.from_checkpoint(tmp_path / "other.pt", TINY_CONFIG)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="hidden_szie"):
        EncoderConfig.from_dict({"hidden_szie": 3})
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        EncoderConfig(hidden_size=10, num_heads=3)
    bert_style = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                  "hidden_dropout_prob": 0.1, "vocab_size": 28996}
    assert EncoderConfig.from_dict(bert_style).num_layers == 2
    assert EncoderConfig.load(None).hidden_size == 768


def test_image_input_validation(tiny_encoder):
    model = tiny_encoder
    feats, boxes, counts = _regions([3])
    with pytest.raises(ValueError, match="6 or 7"):
        model.encode_images(feats, boxes[..., :4], counts)
    with pytest.raises(ValueError, match="num_boxes"):
        model.encode_images(feats, boxes, np.array([0]))


def test_fingerprint_tracks_weights():
    a, b = LightningDOT.random(TINY_CONFIG, seed=0), LightningDOT.random(TINY_CONFIG, seed=1)
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == LightningDOT.random(TINY_CONFIG, seed=0).fingerprint
