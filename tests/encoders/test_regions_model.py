"""The bottom-up-attention extractor on real photos (skimage.data) with the tiny config and damped random
weights: the 10-100 rule, ordering, boxes, soft labels, determinism, batching, weight loading."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

from encoders.regions import RegionExtractor, Regions, normalize_boxes
from encoders.regions.config_files import DEFAULT_CONFIG, TINY_CONFIG
from encoders.regions.weights import WeightsError
from tests.helpers_pipeline import REPO
from tests.helpers_regions import (
    caffe_attributes,
    caffe_keep,
    caffe_max_conf,
    photos,
)


@pytest.fixture(scope="module")
def extracted(tiny_detector) -> tuple[list[np.ndarray], list[dict], list[Regions]]:
    """One batch of four photos: the raw model outputs and the selected regions."""
    ims = photos()
    ex = tiny_detector
    raws = ex.extract_raw(ims)
    return ims, raws, [ex.select(raw) for raw in raws]


@pytest.fixture(scope="module")
def results(extracted) -> tuple[list[np.ndarray], list[Regions]]:
    return extracted[0], extracted[2]


def test_contract_shapes_and_types(results):
    ims, regs = results
    assert len(regs) == len(ims)
    for im, r in zip(ims, regs, strict=True):
        n = r.num_boxes
        assert 10 <= n <= 100
        assert r.features.shape == (n, 2048) and r.features.dtype == np.float32
        assert r.boxes.shape == (n, 4) and r.norm_bb.shape == (n, 6) and r.conf.shape == (n,)
        assert r.soft_labels.shape == (n, 1601)
        assert (r.height, r.width) == im.shape[:2]
        assert np.isfinite(r.features).all() and np.isfinite(r.boxes).all()


def test_rule_matches_original_caffe_code(extracted):
    """Selection on the model's own proposals/scores == the transcribed generate_tsv.py loop."""
    _, raws, regs = extracted
    for raw, r in zip(raws[:2], regs[:2], strict=True):
        ref = caffe_max_conf(raw["proposals"], raw["probs"], 0.3)
        keep = caffe_keep(ref)
        np.testing.assert_array_equal(r.conf, ref[keep])
        np.testing.assert_array_equal(r.boxes, raw["proposals"][keep])
        np.testing.assert_array_equal(r.features, raw["features"][keep])
        n_pass = int((ref >= 0.2).sum())
        assert r.num_boxes == min(max(n_pass, 10), 100)
    # every kept row with conf below the threshold exists only because of the minimum of 10
    for r in regs:
        if (r.conf < 0.2).any():
            assert r.num_boxes == 10


def test_sorted_by_conf_descending(results):
    for r in results[1]:
        assert np.all(np.diff(r.conf) <= 0)
        assert r.conf.max() <= 1.0 and r.conf.min() >= 0.0


def test_boxes_in_original_pixels_and_norm_bb(results):
    for r in results[1]:
        np.testing.assert_allclose(r.norm_bb, normalize_boxes(r.boxes, r.width, r.height), rtol=1e-6, atol=1e-7)
        x1, y1, x2, y2 = r.boxes.T
        assert (x1 >= 0).all() and (y1 >= 0).all()
        assert (x2 <= r.width + 1).all() and (y2 <= r.height + 1).all()  # +1: rounding of the resized size
        assert (x2 >= x1).all() and (y2 >= y1).all()
        np.testing.assert_allclose(r.norm_bb[:, 4], r.norm_bb[:, 2] - r.norm_bb[:, 0], atol=1e-6)
        np.testing.assert_allclose(r.norm_bb[:, 5], r.norm_bb[:, 3] - r.norm_bb[:, 1], atol=1e-6)


def test_soft_labels_background_first(extracted, tiny_detector):
    _, raws, regs = extracted
    raw = raws[0]
    for r in regs:
        np.testing.assert_allclose(r.soft_labels.sum(1), 1.0, atol=1e-5)
        # conf is one of the object-class probabilities (never background)
        assert np.all(r.conf <= r.soft_labels[:, 1:].max(1) + 1e-7)
    # background is column 0: the model's last logit moved to the front
    model = tiny_detector.model
    feats = torch.from_numpy(raw["features"][:5])
    probs = torch.softmax(model.roi_heads.box_predictor.cls_score(feats), dim=-1).detach().numpy()
    np.testing.assert_allclose(raw["probs"][:5, 0], probs[:, -1], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(raw["probs"][:5, 1:], probs[:, :-1], rtol=1e-4, atol=1e-8)


def test_deterministic_and_fingerprint(results, tmp_path, tiny_detector):
    """A freshly built extractor gives bit-identical regions for the same batch."""
    ims, regs = results
    a = tiny_detector
    b = RegionExtractor.from_config(TINY_CONFIG, batch_size=4)
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("random-")
    # workers build from a dump of the merged config: same fingerprint
    dumped = tmp_path / "merged.yaml"
    dumped.write_text(a.cfg.dump())
    assert RegionExtractor.from_config(dumped).fingerprint == a.fingerprint
    for ra, rb in zip(regs, b.extract(ims), strict=True):
        np.testing.assert_array_equal(ra.features, rb.features)
        np.testing.assert_array_equal(ra.boxes, rb.boxes)
        np.testing.assert_array_equal(ra.conf, rb.conf)


def test_batch_equals_single(results, tiny_detector):
    ims, batched = results
    ex = tiny_detector
    singles = [ex.extract([im])[0] for im in ims]
    for rs, rb in zip(singles, batched, strict=True):
        assert rs.num_boxes == rb.num_boxes
        np.testing.assert_allclose(rs.boxes, rb.boxes, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(rs.conf, rb.conf, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rs.features, rb.features, rtol=1e-4, atol=1e-4)
    # other batch-mates (of the same size and of other sizes), in another order, change nothing
    mixed = ex.extract([ims[2], ims[0], ims[1]])[2]
    np.testing.assert_allclose(singles[1].features, mixed.features, rtol=1e-4, atol=1e-4)


def test_rejects_bad_images(tiny_detector):
    ex = tiny_detector
    with pytest.raises(ValueError, match="uint8 RGB"):
        ex.extract([np.zeros((20, 20), dtype=np.uint8)])
    with pytest.raises(ValueError, match="uint8 RGB"):
        ex.extract([np.zeros((20, 20, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match="too narrow"):
        ex.extract([np.zeros((2000, 3, 3), dtype=np.uint8)])
    # degenerate but valid: a single pixel still gives the minimum of 10 regions
    r = ex.extract([np.full((1, 1, 3), 128, dtype=np.uint8)])[0]
    assert r.num_boxes == 10 and (r.width, r.height) == (1, 1)


# ---- weights -------------------------------------------------------------------------------------------------
def _to_c2_name(key: str) -> str:
    """detectron2 name -> Caffe2/Detectron name (the inverse of detectron2's conversion)."""
    norm = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
    simple = {
        "proposal_generator.rpn_head.conv": "conv_rpn",
        "proposal_generator.rpn_head.objectness_logits": "rpn_cls_logits",
        "proposal_generator.rpn_head.anchor_deltas": "rpn_bbox_pred",
        "roi_heads.box_predictor.cls_score": "cls_score",
        "roi_heads.box_predictor.bbox_pred": "bbox_pred",
        "roi_heads.box_predictor.cls_embedding": "cls_embedding",
        "roi_heads.box_predictor.fc_attr": "fc_attr",
        "roi_heads.box_predictor.attr_score": "attr_score",
    }
    module, param = key.rsplit(".", 1)
    if module in simple:
        return f"{simple[module]}_{'w' if param == 'weight' else 'b'}"
    if module == "backbone.stem.conv1":
        return "conv1_w"
    if module == "backbone.stem.conv1.norm":
        return f"res_conv1_bn_{norm[param]}"
    parts = module.split(".")
    if parts[0] == "backbone" or parts[0] == "roi_heads":
        parts = parts[1:]
    stage, block, conv = parts[0], parts[1], parts[2]
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}[conv]
    if len(parts) == 4:  # .norm
        return f"{stage}_{block}_{branch}_bn_{norm[param]}"
    return f"{stage}_{block}_{branch}_w"


def _perturbed_state(model) -> dict[str, torch.Tensor]:
    sd = {k: v.clone() for k, v in model.state_dict().items() if k not in ("pixel_mean", "pixel_std")}
    gen = torch.Generator().manual_seed(7)
    sd["roi_heads.box_predictor.cls_score.weight"] += 0.05 * torch.randn(
        sd["roi_heads.box_predictor.cls_score.weight"].shape, generator=gen)
    sd["proposal_generator.rpn_head.objectness_logits.bias"] += 0.5
    return sd


def _caffe_pkl(sd: dict[str, torch.Tensor], num_anchors: int) -> dict[str, np.ndarray]:
    blobs = {}
    for k, v in sd.items():
        name = _to_c2_name(k)
        arr = v.numpy().copy()
        if name.startswith(("cls_score", "cls_embedding", "attr_score")):
            arr = np.concatenate([arr[-1:], arr[:-1]])  # background / no attribute first, as in Caffe
        elif name.startswith("bbox_pred"):
            arr = np.concatenate([np.full((4, *arr.shape[1:]), 9.0, arr.dtype), arr])  # background rows
        elif name.startswith("rpn_cls_logits"):
            # Caffe's 2A softmax scores: [bg x A, fg x A] with fg - bg = the sigmoid logit
            bg = np.full_like(arr, 0.25)
            arr = np.concatenate([bg, arr + bg])
        blobs[name] = arr
    return blobs


def test_pkl_with_caffe2_names_loads(tmp_path, tiny_detector):
    base = tiny_detector
    sd = _perturbed_state(base.model)
    blobs = _caffe_pkl(sd, num_anchors=12)
    assert "res2_0_branch2a_w" in blobs and "res5_0_branch1_bn_riv" in blobs and "cls_embedding_w" in blobs
    assert {"fc_attr_w", "attr_score_b"} <= set(blobs)
    path = tmp_path / "butd_tiny.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    loaded = RegionExtractor.from_config(TINY_CONFIG, weights=str(path), batch_size=2)
    got = loaded.model.state_dict()
    for k, v in sd.items():
        torch.testing.assert_close(got[k], v, msg=k)
    # the same weights in memory give the same regions
    ref = RegionExtractor.from_config(TINY_CONFIG, batch_size=2)
    ref.model.load_state_dict(sd, strict=False)
    im = photos()[1]
    a, b = loaded.extract([im])[0], ref.extract([im])[0]
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-6)
    assert loaded.fingerprint != base.fingerprint and not loaded.fingerprint.startswith("random")
    again = RegionExtractor.from_config(TINY_CONFIG, weights=f"file://{path}", batch_size=2)
    assert again.fingerprint == loaded.fingerprint
    # detectron2's model-zoo layout, with C2 names or with detectron2 names
    zoo = tmp_path / "zoo.pkl"
    with open(zoo, "wb") as f:
        pickle.dump({"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}, f)
    torch.testing.assert_close(RegionExtractor.from_config(TINY_CONFIG, weights=str(zoo)).model.state_dict()[
        "roi_heads.box_predictor.cls_score.weight"], sd["roi_heads.box_predictor.cls_score.weight"])
    d2 = tmp_path / "d2.pkl"
    with open(d2, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "someone"}, f)
    torch.testing.assert_close(RegionExtractor.from_config(TINY_CONFIG, weights=str(d2)).model.state_dict()[
        "roi_heads.res5.0.conv1.weight"], sd["roi_heads.res5.0.conv1.weight"])


# the names py-bottom-up-attention's published files use (detectron2 names; attribute head in the box predictor)
PUBLISHED_KEYS = [
    "backbone.stem.conv1.weight", "backbone.stem.conv1.norm.running_var", "backbone.res4.0.shortcut.weight",
    "proposal_generator.rpn_head.conv.weight", "proposal_generator.rpn_head.objectness_logits.bias",
    "proposal_generator.rpn_head.anchor_deltas.weight", "proposal_generator.anchor_generator.cell_anchors.0",
    "roi_heads.res5.0.conv3.norm.weight", "roi_heads.box_predictor.cls_score.weight",
    "roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.cls_embedding.weight",
    "roi_heads.box_predictor.fc_attr.weight", "roi_heads.box_predictor.fc_attr.bias",
    "roi_heads.box_predictor.attr_score.weight", "roi_heads.box_predictor.attr_score.bias",
]


def _published_pkl(path, sd: dict[str, torch.Tensor], cell_anchors: np.ndarray, **extra: np.ndarray) -> None:
    """py-bottom-up-attention's container: {"model": {detectron2 name: ndarray}, "__author__": ...}, with the
    RPN's cell anchors stored (old detectron2 saved them with the weights)."""
    model = {k: v.numpy().copy() for k, v in sd.items()}
    model["proposal_generator.anchor_generator.cell_anchors.0"] = np.asarray(cell_anchors, dtype=np.float32)
    model.update(extra)
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "py-bottom-up-attention"}, f)


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_detector):
    """Random (perturbed) weights written twice: as a published-layout .pkl and as our .pth."""
    base = tiny_detector.model
    sd = _perturbed_state(base)
    # random region features share one large direction: centre the class and attribute layers on their mean so
    # that regions differ in class and attribute (a degenerate "all the same" case would test little)
    mean = torch.from_numpy(np.concatenate([r["features"] for r in tiny_detector.extract_raw(photos()[:2])]).mean(0))
    gen = torch.Generator().manual_seed(11)
    p = "roi_heads.box_predictor."
    sd[p + "cls_score.bias"] = -(sd[p + "cls_score.weight"] @ mean)
    sd[p + "fc_attr.weight"] = 0.02 * torch.randn(sd[p + "fc_attr.weight"].shape, generator=gen)
    sd[p + "fc_attr.bias"] = -(sd[p + "fc_attr.weight"][:, : mean.numel()] @ mean)
    sd[p + "attr_score.weight"] = torch.randn(sd[p + "attr_score.weight"].shape, generator=gen)
    anchors = next(iter(base.proposal_generator.anchor_generator.cell_anchors)).numpy()
    root = tmp_path_factory.mktemp("published")
    _published_pkl(root / "faster_rcnn_from_caffe_attr.pkl", sd, anchors)
    torch.save({"model": sd}, root / "same.pth")
    return root, sd, anchors


def test_published_pkl_loads_as_is_and_equals_pth(published):
    root, sd, _ = published
    with open(root / "faster_rcnn_from_caffe_attr.pkl", "rb") as f:
        assert set(PUBLISHED_KEYS) <= set(pickle.load(f)["model"])
    from_pkl = RegionExtractor.from_config(TINY_CONFIG, weights=str(root / "faster_rcnn_from_caffe_attr.pkl"))
    from_pth = RegionExtractor.from_config(TINY_CONFIG, weights=str(root / "same.pth"))
    got = from_pkl.model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)
    ims = photos()[:2]
    for a, b in zip(from_pkl.extract(ims), from_pth.extract(ims), strict=True):
        for field in ("boxes", "features", "conf", "soft_labels", "attr_ids", "attr_conf"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_published_pkl_with_other_cell_anchors_is_refused(published, tmp_path):
    _, sd, anchors = published
    shifted = anchors.copy()
    shifted[:, 2:] += 1.0  # e.g. detectron2's own convention instead of Caffe's
    _published_pkl(tmp_path / "other.pkl", sd, shifted)
    with pytest.raises(WeightsError, match=r"RPN cell anchors 'proposal_generator\.anchor_generator\.cell_anchors\.0'"
                       r" differ from what the detector config computes") as err:
        RegionExtractor.from_config(TINY_CONFIG, weights=str(tmp_path / "other.pkl"))
    assert "[-38.0, -16.0, 53.0, 31.0]" in str(err.value)  # ours (py-faster-rcnn's first anchor), shown
    _published_pkl(tmp_path / "twelve_vs_nine.pkl", sd, anchors[:9])
    with pytest.raises(WeightsError, match="RPN cell anchors"):
        RegionExtractor.from_config(TINY_CONFIG, weights=str(tmp_path / "twelve_vs_nine.pkl"))


def test_published_pkl_unknown_and_missing_keys_are_named(published, tmp_path):
    _, sd, anchors = published
    extra = {"roi_heads.box_predictor.obj_embed.weight": np.zeros((3, 2), np.float32)}
    _published_pkl(tmp_path / "extra.pkl", sd, anchors, **extra)
    with pytest.raises(WeightsError, match=r"key\(s\) in the file that the model lacks: "
                                           r"roi_heads\.box_predictor\.obj_embed\.weight"):
        RegionExtractor.from_config(TINY_CONFIG, weights=str(tmp_path / "extra.pkl"))
    # our earlier name for the attribute head is not silently accepted
    old = {("roi_heads.attribute_predictor." + k.rsplit("box_predictor.", 1)[1] if "attr" in k or "cls_emb" in k
            else k): v for k, v in sd.items()}
    _published_pkl(tmp_path / "old_names.pkl", old, anchors)
    with pytest.raises(WeightsError) as err:
        RegionExtractor.from_config(TINY_CONFIG, weights=str(tmp_path / "old_names.pkl"))
    msg = str(err.value)
    assert "missing from the file: roi_heads.box_predictor" in msg and "roi_heads.attribute_predictor.fc_attr" in msg
    # a stored pixel normalisation must match the config too
    _published_pkl(tmp_path / "rgb_means.pkl", sd, anchors, pixel_mean=np.array([123.675, 116.28, 103.53]))
    with pytest.raises(WeightsError, match=r"pixel normalisation 'pixel_mean' differ .* file \[\[123\.67"):
        RegionExtractor.from_config(TINY_CONFIG, weights=str(tmp_path / "rgb_means.pkl"))


def test_attributes_follow_the_caffe_net_on_published_weights(published):
    """Attribute ids/confidences == the Caffe test net's attribute branch (transcribed) on the same weights put in
    Caffe's row order (background / no attribute first), and the class distribution is Caffe-ordered too."""
    root, sd, _ = published
    ex = RegionExtractor.from_config(TINY_CONFIG, weights=str(root / "faster_rcnn_from_caffe_attr.pkl"))

    def caffe_rows(key: str) -> np.ndarray:  # detectron2 order (background / no attribute last) -> Caffe's
        v = sd[f"roi_heads.box_predictor.{key}"].double().numpy()
        return np.concatenate([v[-1:], v[:-1]])

    blobs = {"cls_score_w": caffe_rows("cls_score.weight"), "cls_score_b": caffe_rows("cls_score.bias"),
             "cls_embedding_w": caffe_rows("cls_embedding.weight"),
             "fc_attr_w": sd["roi_heads.box_predictor.fc_attr.weight"].double().numpy(),
             "fc_attr_b": sd["roi_heads.box_predictor.fc_attr.bias"].double().numpy(),
             "attr_score_w": caffe_rows("attr_score.weight"), "attr_score_b": caffe_rows("attr_score.bias")}
    regions = ex.extract(photos()[:2])
    assert len(np.unique(np.concatenate([r.attr_ids for r in regions]))) > 1
    assert len(np.unique(np.concatenate([r.soft_labels.argmax(1) for r in regions]))) > 1
    for r in regions:
        _, ids, conf = caffe_attributes(r.features, blobs)
        assert r.attr_ids.dtype == np.int32 and r.attr_ids.min() >= 1 and r.attr_ids.max() <= 400
        np.testing.assert_array_equal(r.attr_ids, ids)
        np.testing.assert_allclose(r.attr_conf, conf, rtol=1e-4, atol=1e-7)
        logits = r.features.astype(np.float64) @ blobs["cls_score_w"].T + blobs["cls_score_b"]
        soft = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(r.soft_labels, soft / soft.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_attribute_and_class_order_on_a_constructed_case():
    """Weights built so the answer is known: every region's class is detectron2 index 41 (Caffe 42), whose class
    embedding alone switches on the attribute at detectron2 index 6 (Caffe 7); "no attribute" (detectron2's last
    row) gets logit 2. Caffe order puts background / no attribute at index 0."""
    ex = RegionExtractor.from_config(TINY_CONFIG)
    pred = ex.model.roi_heads.box_predictor
    k, j, in_dim = 41, 6, pred.cls_score.in_features
    with torch.no_grad():
        for p in pred.parameters():
            p.zero_()
        pred.cls_score.bias[k] = 8.0
        pred.cls_embedding.weight[k, 0] = 1.0  # only the predicted class's embedding (detectron2 row) is non-zero
        pred.fc_attr.weight[0, in_dim] = 1.0  # hidden unit 0 reads embedding dim 0
        pred.attr_score.weight[j, 0] = 5.0
        pred.attr_score.bias[-1] = 2.0  # "no attribute"
    (r,) = ex.extract([photos()[0]])
    assert (r.soft_labels.argmax(1) == k + 1).all()
    np.testing.assert_allclose(r.soft_labels[:, 0], 1 / (np.exp(8) + 1600), rtol=1e-4)  # background column
    assert (r.attr_ids == j + 1).all()
    np.testing.assert_allclose(r.attr_conf, np.exp(5) / (np.exp(5) + np.exp(2) + 399), rtol=1e-5)
    raw = ex.extract_raw([photos()[0]])[0]
    np.testing.assert_allclose(raw["attr_probs"][:, 0], np.exp(2) / (np.exp(5) + np.exp(2) + 399), rtol=1e-5)


def test_pth_state_dict_and_mismatch_errors(tmp_path, tiny_detector):
    sd = _perturbed_state(tiny_detector.model)
    good = tmp_path / "w.pth"
    torch.save({"model": sd}, good)
    ex = RegionExtractor.from_config(TINY_CONFIG, weights=str(good))
    torch.testing.assert_close(ex.model.state_dict()["roi_heads.box_predictor.cls_score.weight"],
                               sd["roi_heads.box_predictor.cls_score.weight"])
    bad = dict(sd)
    bad["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(11, 2048)
    del bad["roi_heads.res5.0.conv1.weight"]
    bad["something.extra"] = torch.zeros(3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as err:
        RegionExtractor.from_config(TINY_CONFIG, weights=str(tmp_path / "bad.pth"))
    msg = str(err.value)
    assert "cls_score.weight" in msg and "(11, 2048)" in msg and "(1601, 2048)" in msg
    assert "roi_heads.res5.0.conv1.weight" in msg and "something.extra" in msg
    # the published config does not take the tiny weights

    with pytest.raises(WeightsError, match="shape mismatch"):
        RegionExtractor.from_config(DEFAULT_CONFIG, weights=str(good))


def test_pkl_refuses_arbitrary_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": Evil()}}))
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.print"):
        RegionExtractor.from_config(TINY_CONFIG, weights=str(path))


def test_published_config_matches_the_paper_model():
    from encoders.regions.modeling import load_config

    cfg = load_config(str(DEFAULT_CONFIG))
    assert cfg.MODEL.RESNETS.DEPTH == 101 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1600
    assert cfg.MODEL.BUTD.NUM_ATTRIBUTES == 400 and cfg.MODEL.BUTD.RES5_OUT_CHANNELS == 2048
    assert list(cfg.MODEL.PIXEL_MEAN) == [102.9801, 115.9465, 122.7717] and list(cfg.MODEL.PIXEL_STD) == [1, 1, 1]
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (600, 1000)
    assert list(cfg.MODEL.ANCHOR_GENERATOR.SIZES) == [[64, 128, 256, 512]]
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION == 14 and cfg.MODEL.BUTD.RES5_STRIDE == 1
    from detectron2.modeling import build_model

    from encoders.regions.modeling import caffe_generate_anchors

    # py-faster-rcnn's generate_anchors() output for base 16, ratios .5/1/2, scales 8/16/32 (first rows)
    anchors = caffe_generate_anchors(16, [0.5, 1, 2], [8, 16, 32])
    np.testing.assert_array_equal(anchors[:3], [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199]])
    del build_model


def test_caffe_stem_ceil_mode_and_res5_resolution(tiny_detector):
    model = tiny_detector.model
    x = torch.zeros(1, 3, 65, 97)
    stem = model.backbone.stem(x)
    # conv -> 33x49; Caffe pool (no pad, ceil): ceil(30/2)+1 = 16, ceil(46/2)+1 = 24 (stock detectron2: 17x25)
    assert tuple(stem.shape[-2:]) == (16, 24)
    assert tuple(model.backbone.stem(torch.zeros(1, 3, 68, 68)).shape[-2:]) == (17, 17)  # 34 -> ceil(31/2)+1
    crops = torch.zeros(2, model.roi_heads.res5[0].in_channels, 7, 7)
    out = model.roi_heads.res5(crops)
    assert tuple(out.shape) == (2, 2048, 7, 7)  # stride 1: not halved


def test_import_without_detectron2_gives_install_hint():
    code = (
        "import sys; sys.modules['detectron2'] = None\n"
        "import encoders.regions as r, encoders.regions.formats\n"
        "print(r.Regions.__name__)\n"
        "try:\n    r.RegionExtractor\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Regions" in out.stdout
    assert "ERR" in out.stdout and "scripts/install_detectron2.py" in out.stdout


def test_rpn_follows_the_caffe_proposal_layer(tiny_detector):
    """CaffeRPN's proposals == py-faster-rcnn's proposal layer, transcribed (decode, clip, min size, NMS)."""
    from encoders.regions.modeling import caffe_generate_anchors, caffe_proposals
    from tests.helpers_regions import caffe_proposal_layer

    rng = np.random.default_rng(5)
    fh, fw, stride = 12, 17, 16
    cell = caffe_generate_anchors(16, [0.5, 1, 2], [4, 8, 16, 32])
    sx, sy = np.meshgrid(np.arange(fw) * stride, np.arange(fh) * stride)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    anchors = (shifts[:, None, :] + cell[None]).reshape(-1, 4).astype(np.float32)
    logits = rng.normal(0, 2, len(anchors)).astype(np.float32)
    deltas = rng.normal(0, 0.3, (len(anchors), 4)).astype(np.float32)
    h, w, scale = fh * stride, fw * stride, 1.6
    boxes, scores = caffe_proposals(torch.from_numpy(anchors), torch.from_numpy(logits), torch.from_numpy(deltas),
                                    (h, w), scale, 16, 1000, 60, 0.7)
    ref_boxes, ref_scores = caffe_proposal_layer(anchors.astype(np.float64), logits, deltas.astype(np.float64),
                                                 h, w, scale, 16, 1000, 60, 0.7)
    assert len(ref_boxes) == 60
    np.testing.assert_allclose(boxes.numpy(), ref_boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(scores.numpy(), ref_scores)
    # the published config's RPN is this one, with anchors of the model's own generator
    model = tiny_detector.model
    assert type(model.proposal_generator).__name__ == "CaffeRPN"
    grid = model.proposal_generator.anchor_generator([torch.zeros(1, 1, 2, 3)])[0].tensor.numpy()
    np.testing.assert_array_equal(grid[:12], cell)
    np.testing.assert_array_equal(grid[12:24], cell + np.array([16, 0, 16, 0]))


def test_preprocess_scale_and_resize_follow_caffe(tiny_detector):
    from encoders.regions.extractor import caffe_test_scale

    assert caffe_test_scale(480, 640, 600, 1000) == 600 / 480
    assert caffe_test_scale(300, 1200, 600, 1000) == 1000 / 1200  # the longer side caps the scale
    ex = tiny_detector  # test scale 224 / 384
    im = photo_gradient(30, 50)
    x, scale = ex.preprocess(im)
    assert scale == 224 / 30 and tuple(x.shape) == (3, 224, round(50 * 224 / 30))
    # BGR minus Caffe's means; bilinear resize mapping src = (dst + 0.5) / scale - 0.5 (as cv2.INTER_LINEAR)
    src = im[:, :, ::-1].astype(np.float64) - np.array([102.9801, 115.9465, 122.7717])
    for dy, dx in [(0, 0), (100, 200), (223, 372)]:
        sy, sx = (dy + 0.5) / scale - 0.5, (dx + 0.5) / scale - 0.5
        y0, x0 = int(np.floor(sy)), int(np.floor(sx))
        fy, fx = sy - y0, sx - x0
        y0c, y1c = np.clip([y0, y0 + 1], 0, 29)
        x0c, x1c = np.clip([x0, x0 + 1], 0, 49)
        if sy < 0:
            y0c = y1c = 0
        if sx < 0:
            x0c = x1c = 0
        want = ((1 - fy) * ((1 - fx) * src[y0c, x0c] + fx * src[y0c, x1c])
                + fy * ((1 - fx) * src[y1c, x0c] + fx * src[y1c, x1c]))
        np.testing.assert_allclose(x[:, dy, dx].numpy(), want, atol=1e-3)


def photo_gradient(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 5) % 256, (yy * 7) % 256, (xx + yy * 3) % 256], axis=2).astype(np.uint8)
