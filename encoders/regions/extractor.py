"""RegionExtractor: images -> bottom-up-attention region features (needs detectron2)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model

from encoders.regions.modeling import add_butd_config, load_config
from encoders.regions.selection import best_attributes, select_regions
from encoders.regions.types import Regions
from encoders.regions.weights import damp_random_weights, load_weights

log = logging.getLogger(__name__)

RANDOM_SEED = 0
MIN_RESIZED_SIDE = 8  # the Caffe stem (7x7/2 conv, 3x3/2 pool without padding) needs a few pixels


def caffe_test_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Caffe's test scale: shorter side to ``min_size`` unless the longer side would pass ``max_size``."""
    short, long = min(height, width), max(height, width)
    scale = float(min_size) / float(short)
    if max_size > 0 and round(scale * long) > max_size:
        scale = float(max_size) / float(long)
    return scale


def config_from_text(text: str) -> CfgNode:
    """A merged detector config dumped as YAML -> the frozen CPU config, on detectron2's defaults plus ours (so a
    key the text lacks keeps its default and an unknown key is an error, as with a file)."""
    cfg = add_butd_config(get_cfg())
    cfg.merge_from_other_cfg(CfgNode.load_cfg(text))
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def canonical_config(cfg) -> str:
    """The config as canonical JSON (sorted keys, tuples as lists, no device): the same model config gives
    the same text whether it comes from the YAML files or from a dump of the merged config (workers)."""

    def plain(node):
        if isinstance(node, dict):
            return {str(k): plain(v) for k, v in node.items() if k != "DEVICE"}
        if isinstance(node, (list, tuple)):
            return [plain(v) for v in node]
        return node

    return json.dumps(plain(cfg), sort_keys=True)


def _last_column_first(probs: torch.Tensor) -> np.ndarray:
    """detectron2's order (background / "no attribute" last) -> Caffe's (first)."""
    probs = probs.float()
    return torch.cat([probs[:, -1:], probs[:, :-1]], dim=1).cpu().numpy()


class RegionExtractor:
    """The bottom-up-attention Faster R-CNN as a batch feature extractor.

    Build with :meth:`from_config`. :meth:`extract` takes HxWx3 uint8 RGB arrays and returns one
    :class:`Regions` per image: the 10-100 regions of the original extraction rule, sorted by confidence,
    with boxes in original-image pixels, class distributions and (with the attribute head,
    ``MODEL.BUTD.ATTRIBUTE_ON``) each region's attribute, both in the original Caffe order. Images go through
    the model ``batch_size`` at a time; images of the same resized size share forward passes without padding,
    and res5 runs on the crops of the whole batch at once, so an image's result does not depend on its
    batch-mates.
    """

    def __init__(self, cfg, model: torch.nn.Module, fingerprint: str, device: str, batch_size: int):
        self.cfg = cfg
        self.model = model
        self.fingerprint = fingerprint
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        b = cfg.MODEL.BUTD
        self.nms_thresh = float(b.NMS_THRESH)
        self.conf_thresh = float(b.CONF_THRESH)
        self.min_boxes = int(b.MIN_BOXES)
        self.max_boxes = int(b.MAX_BOXES)
        self.legacy_plus_one = bool(b.LEGACY_PLUS_ONE)
        self.min_size = int(cfg.INPUT.MIN_SIZE_TEST)
        self.max_size = int(cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT

    @classmethod
    def from_config(
        cls,
        config_path: str | Path,
        weights: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 4,
    ) -> RegionExtractor:
        """``weights=None``: damped random weights (a warning is logged; for smoke runs and tests only).
        Otherwise a local path or fsspec URL to a detectron2 ``.pkl`` converted from Caffe or a ``.pth``."""
        return cls.from_cfg(load_config(str(config_path), "cpu"), weights, device, batch_size)

    @classmethod
    def from_config_text(
        cls,
        text: str,
        weights: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 4,
    ) -> RegionExtractor:
        """From a merged config's YAML text (``cfg.dump()``, ``_BASE_`` already resolved): what a worker gets,
        since it cannot read the launcher's files. Parsed with ``yaml.safe_load`` (yacs' ``load_cfg``): the
        text can never run code."""
        return cls.from_cfg(config_from_text(text), weights, device, batch_size)

    @classmethod
    def from_cfg(cls, cfg: CfgNode, weights: str | Path | None, device: str, batch_size: int) -> RegionExtractor:
        """From a loaded config: the one place the model is built, so every route gives the same fingerprint."""
        # built on the CPU (seeded, so random weights are the same everywhere), then moved to ``device``
        cfg_text = canonical_config(cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = build_model(cfg)
        cfg_hash = hashlib.sha256(cfg_text.encode()).hexdigest()
        if weights is None:
            log.warning(
                "region extractor uses RANDOM weights (damped): region features are meaningless; "
                "give detector weights for real runs"
            )
            damp_random_weights(model)
            fingerprint = f"random-{RANDOM_SEED}-{cfg_hash[:16]}"
        else:
            weights_sha = load_weights(model, str(weights))
            fingerprint = hashlib.sha256(f"{cfg_hash}:{weights_sha}".encode()).hexdigest()[:32]
        model.to(device).eval()
        return cls(cfg, model, fingerprint, device, batch_size)

    # -- preprocessing -------------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, float]:
        """RGB uint8 HxWx3 -> (``[3,h,w]`` float, BGR minus pixel means, resized; the scale used)."""
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {arr.dtype} array of shape {arr.shape}")
        height, width = arr.shape[:2]
        if height < 1 or width < 1:
            raise ValueError(f"empty image of shape {arr.shape}")
        if self.input_format == "BGR":
            arr = arr[:, :, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device).permute(2, 0, 1).float()
        x = (x - self.model.pixel_mean) / self.model.pixel_std
        scale = caffe_test_scale(height, width, self.min_size, self.max_size)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        if min(new_h, new_w) < MIN_RESIZED_SIDE:
            raise ValueError(
                f"image of {width}x{height} pixels is too narrow for the detector: its test scale "
                f"(shorter side {self.min_size}, longer side at most {self.max_size}) makes it {new_w}x{new_h}"
            )
        if (new_h, new_w) != (height, width):
            # as Caffe's cv2.resize(im, None, fx=scale, fy=scale, interpolation=INTER_LINEAR): output size
            # round(side * scale), source pixel (dst + 0.5) / scale - 0.5, no antialiasing
            x = torch.ops.aten.upsample_bilinear2d(x[None], [new_h, new_w], False, scale, scale)[0]
        return x, scale

    # -- extraction ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def extract_raw(self, images: Sequence[np.ndarray]) -> list[dict]:
        """Before region selection: per image ``proposals`` (original pixels), ``probs`` (background
        first), ``features``, ``attr_probs`` (with the attribute head; "no attribute" first), plus
        ``width``/``height``. Class and attribute columns in the original Caffe order. For tests and diagnostics."""
        out: list[dict] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            prepped = [self.preprocess(im) for im in chunk]
            results = self.model.extract([t for t, _ in prepped], [scale for _, scale in prepped])
            for im, (_, scale), res in zip(chunk, prepped, results, strict=True):
                raw = {
                    "proposals": (res["proposals"].float() / scale).cpu().numpy(),
                    "probs": _last_column_first(res["probs"]),  # background -> index 0
                    "features": res["features"].float().cpu().numpy(),
                    "height": int(im.shape[0]),
                    "width": int(im.shape[1]),
                }
                if "attr_probs" in res:
                    raw["attr_probs"] = _last_column_first(res["attr_probs"])  # no attribute -> index 0
                out.append(raw)
        return out

    def select(self, raw: dict) -> Regions:
        boxes = raw["proposals"]
        probs = raw["probs"]
        keep, conf = select_regions(
            boxes, probs[:, 1:], self.nms_thresh, self.conf_thresh, self.min_boxes, self.max_boxes,
            self.legacy_plus_one,
        )
        attr_ids = attr_conf = None
        if "attr_probs" in raw:
            attr_ids, attr_conf = best_attributes(raw["attr_probs"][keep])
        return Regions.from_boxes(
            raw["features"][keep], boxes[keep], conf, probs[keep], raw["width"], raw["height"], attr_ids, attr_conf
        )

    def extract(self, images: Sequence[np.ndarray]) -> list[Regions]:
        return [self.select(raw) for raw in self.extract_raw(images)]

    def __repr__(self) -> str:
        return f"RegionExtractor(fingerprint={self.fingerprint!r}, device={self.device}, batch={self.batch_size})"

