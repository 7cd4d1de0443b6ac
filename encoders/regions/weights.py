"""Weights for the bottom-up-attention model: random (damped) or loaded from ``.pkl`` / ``.pth`` files.

``.pkl`` with detectron2 names: the files py-bottom-up-attention publishes (``faster_rcnn_from_caffe.pkl``,
``faster_rcnn_from_caffe_attr.pkl``, ``faster_rcnn_from_caffe_attr_original.pkl``), in detectron2's container
``{"model": {name: ndarray}, "__author__": ...}``, load as they are: our model uses the same parameter names
(the attribute head under ``roi_heads.box_predictor.{cls_embedding,fc_attr,attr_score}``) and the same row
order (background / "no attribute" last).

``.pkl`` with Caffe2/Detectron-style names (``res2_0_branch2a_w``, ``res_conv1_bn_s``, ``conv_rpn_w``,
``rpn_cls_logits_w``, ``cls_score_w``, ``bbox_pred_w``, ``cls_embedding_w``, ``fc_attr_w``, ``attr_score_w``
...), bare, under ``"blobs"`` or in the same container: names go through detectron2's own C2 conversion
(``convert_c2_detectron_names``: background moved last in ``cls_score``, background rows dropped from
``bbox_pred``), plus the attribute-head layers it does not know, whose Caffe rows (background / "no
attribute" first) are moved to detectron2's order the same way.

Either ``.pkl`` is unpickled with a restricted unpickler that only builds numpy arrays and plain containers.
``.pth``: a state dict with detectron2 names (optionally under ``"model"``), read with ``weights_only=True``.

Loading is strict: a missing parameter, a key the model does not have, or a shape mismatch is an error that
names the keys and shapes (detectron2's heuristic loader only logs these and leaves random weights). Stored
constants the model computes itself (the RPN's ``anchor_generator.cell_anchors.N``, ``pixel_mean``,
``pixel_std``) are not loaded but checked: a file whose RPN was trained with other anchors, or whose pixel
normalisation differs from the config, is refused with both values in the message.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import re

import fsspec
import numpy as np
import torch
from torch import nn

from core.errors import UsageError

log = logging.getLogger(__name__)

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
}

# Keys a checkpoint may carry that are not parameters (optimizer state, BN bookkeeping).
_IGNORED_CKPT = re.compile(r"(_momentum$|num_batches_tracked$)")
# Constants the model computes from the config; a file that stores them must agree (see _check_constants).
_STORED_CONSTANT = re.compile(r"((^|\.)anchor_generator\.cell_anchors\.\d+$|^pixel_(mean|std)$)")
# Caffe2 names of the attribute head -> ours; rows indexed by class or attribute are moved like cls_score's.
_C2_ATTRIBUTE_LAYERS = {"cls.embedding.": "cls_embedding.", "fc.attr.": "fc_attr.", "attr.score.": "attr_score."}
_BACKGROUND_FIRST = ("box_predictor.cls_embedding.weight", "box_predictor.attr_score.weight",
                     "box_predictor.attr_score.bias")


class WeightsError(UsageError):
    """The weights file does not fit the model built from the config."""


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a weights file")


def read_bytes(path: str) -> bytes:
    with fsspec.open(str(path), "rb") as f:
        return f.read()


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _c2_renames(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Caffe/Caffe2 names -> detectron2 names (detectron2's converter + the BUTD-specific layers)."""
    from detectron2.checkpoint.c2_model_loading import convert_c2_detectron_names

    pre = {}
    for k, v in weights.items():
        # raw Caffe layer names of the BUTD prototxt, when a converter kept them
        k2 = k.replace("rpn_conv/3x3", "conv_rpn").replace("rpn_cls_score", "rpn_cls_logits")
        pre[k2] = v
    renamed, _ = convert_c2_detectron_names(pre)
    out = {}
    for k, v in renamed.items():
        for c2_prefix, ours in _C2_ATTRIBUTE_LAYERS.items():
            if k.startswith(c2_prefix):
                k = "box_predictor." + ours + k[len(c2_prefix):]
        k = re.sub(r"^cls_score\.", "box_predictor.cls_score.", k)
        k = re.sub(r"^bbox_pred\.", "box_predictor.bbox_pred.", k)
        k = re.sub(r"^res5\.", "roi_heads.res5.", k)
        k = re.sub(r"^(stem|res[234])\.", r"backbone.\1.", k)
        if k in _BACKGROUND_FIRST:
            v = torch.cat([v[1:], v[:1]])  # Caffe's row 0 (background / no attribute) -> last
        out[k] = v
    return out


def _to_tensors(d: dict) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            out[k] = torch.from_numpy(np.ascontiguousarray(v))
        elif torch.is_tensor(v):
            out[k] = v
        else:
            raise WeightsError(f"weights entry {k!r} is a {type(v).__name__}, not an array")
    return out


def read_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], bool, bytes]:
    """Returns ``(state, is_c2_names, raw_bytes)``."""
    data = read_bytes(path)
    name = str(path).lower()
    if name.endswith(".pkl"):
        obj = _NumpyUnpickler(io.BytesIO(data), encoding="latin1").load()
        if not isinstance(obj, dict):
            raise WeightsError(f"{path}: expected a dict of arrays, got {type(obj).__name__}")
        # detectron2 model-zoo layout ({"model": ..., "__author__": ...}), Detectron ({"blobs": ...}) or bare
        state = obj["model"] if "model" in obj and isinstance(obj["model"], dict) else obj.get("blobs", obj)
        state = {k: v for k, v in state.items() if not k.endswith("_momentum") and k != "lr"}
        # Caffe2/Detectron names never contain a dot (res2_0_branch2a_w); detectron2 names always do
        c2 = not any("." in k for k in state)
        return _to_tensors(state), c2, data
    if name.endswith((".pth", ".pt")):
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
            obj = obj["model"]
        if not isinstance(obj, dict):
            raise WeightsError(f"{path}: expected a state dict, got {type(obj).__name__}")
        return _to_tensors(obj), False, data
    raise WeightsError(f"{path}: unknown weights format (expected .pkl converted from Caffe, or .pth)")


def _match(model_keys: list[str], ckpt: dict[str, torch.Tensor]) -> dict[str, str]:
    """model key -> checkpoint key: exact name, else the longest checkpoint key that is a dotted suffix."""
    ckpt_keys = sorted(ckpt)
    out = {}
    for mk in model_keys:
        if mk in ckpt:
            out[mk] = mk
            continue
        best = None
        for ck in ckpt_keys:
            if mk.endswith("." + ck) and (best is None or len(ck) > len(best)):
                best = ck
        if best is not None:
            out[mk] = best
    return out


def _fix_rpn_objectness(model_sd: dict, ckpt: dict, ckpt_key: str, model_key: str) -> None:
    """Caffe's RPN scores 2A channels (A background, then A foreground) for a softmax; detectron2 uses A
    sigmoid logits: logit = fg - bg, the same probability."""
    v = ckpt[ckpt_key]
    want = model_sd[model_key].shape
    if v.shape[0] == 2 * want[0] and v.shape[1:] == want[1:]:
        a = want[0]
        ckpt[ckpt_key] = v[a:] - v[:a]


def _check_constants(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """A stored constant (cell anchors, pixel mean/std) must equal the one the model computes from the config."""
    buffers = dict(model.named_buffers())
    for key in sorted(k for k in state if _STORED_CONSTANT.search(k)):
        names = [b for b in buffers if b == key or b.endswith("." + key)]
        if len(names) != 1:
            raise WeightsError(f"weights {path}: stored constant {key!r} matches no single buffer of the model "
                               f"(candidates: {names})")
        ours = buffers[names[0]].detach().cpu().double()
        stored = state[key].detach().cpu().double()
        if stored.numel() == ours.numel() and torch.allclose(stored.reshape(ours.shape), ours, rtol=0, atol=1e-3):
            continue
        anchors = "cell_anchors" in key
        width = 4 if anchors and stored.numel() % 4 == 0 else 1
        raise WeightsError(
            f"weights {path}: the file's {'RPN cell anchors' if anchors else 'pixel normalisation'} {key!r} "
            f"differ from what the detector config computes, so these weights were made for another model: "
            f"file {_rounded_rows(stored, width)} vs config {_rounded_rows(ours, width)}"
        )


def _rounded_rows(t: torch.Tensor, width: int) -> list[list[float]]:
    return [[round(float(x), 2) for x in row] for row in t.reshape(-1, width)]


def load_weights(model: nn.Module, path: str) -> str:
    """Load ``path`` into ``model`` strictly. Returns the sha256 of the file."""
    state, c2, raw = read_checkpoint(path)
    if c2:
        state = _c2_renames(state)
    _check_constants(model, state, path)
    state = {k: v for k, v in state.items() if not _STORED_CONSTANT.search(k)}
    model_sd = model.state_dict()
    model_keys = [k for k in model_sd if not _IGNORED_CKPT.search(k)]
    mapping = _match(model_keys, state)
    for mk, ck in mapping.items():
        if "objectness_logits" in mk:
            _fix_rpn_objectness(model_sd, state, ck, mk)
    # FrozenBN from Detectron-style files has only scale/bias: mean 0, var 1 (as detectron2 does).
    for mk in model_keys:
        if mk not in mapping and mk.endswith(("norm.running_mean", "norm.running_var")):
            prefix = mk.rsplit(".", 1)[0]
            if prefix + ".weight" in mapping:
                fill = torch.zeros_like if mk.endswith("mean") else torch.ones_like
                state["__default__." + mk] = fill(model_sd[mk])
                mapping[mk] = "__default__." + mk
    missing = [k for k in model_keys if k not in mapping]
    used = set(mapping.values())
    unexpected = [k for k in sorted(state) if k not in used and not _IGNORED_CKPT.search(k)]
    mismatched = [
        f"{mk} (model {tuple(model_sd[mk].shape)}) <- {ck} (file {tuple(state[ck].shape)})"
        for mk, ck in sorted(mapping.items())
        if tuple(model_sd[mk].shape) != tuple(state[ck].shape)
    ]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched[:20]))
    if missing:
        problems.append(f"{len(missing)} parameter(s) missing from the file: " + ", ".join(missing[:20]))
    if unexpected:
        problems.append(f"{len(unexpected)} key(s) in the file that the model lacks: " + ", ".join(unexpected[:20]))
    if problems:
        raise WeightsError(
            f"weights {path} do not fit the detector config ({'C2/Caffe' if c2 else 'detectron2'} names): "
            + " | ".join(problems)
        )
    new_sd = {mk: state[ck].to(model_sd[mk].dtype) for mk, ck in mapping.items()}
    model.load_state_dict(new_sd, strict=False)
    return file_sha256(raw)


@torch.no_grad()
def damp_random_weights(model: nn.Module, residual_scale: float = 0.1, class_logit_scale: float = 3.0) -> None:
    """Make detectron2's random initialisation usable in a deep ResNet.

    detectron2 initialises every conv with MSRA fill and FrozenBN as identity, so each of the (up to 33)
    residual blocks adds a branch as large as its input; activations overflow to inf in float32 and the
    RPN has no finite proposal. Shrinking the last norm of each residual branch (``conv3.norm``) keeps every
    block close to identity, so random runs give usable proposals. The class logits are scaled up so that
    class scores spread out (some regions pass the 0.2 confidence threshold) instead of all being ~1/1601.
    (Build the model under a fixed torch seed for deterministic random weights.)
    """
    from detectron2.modeling.backbone.resnet import BottleneckBlock

    for m in model.modules():
        if isinstance(m, BottleneckBlock) and m.conv3.norm is not None:
            m.conv3.norm.weight.mul_(residual_scale)
            m.conv3.norm.bias.mul_(residual_scale)
    roi_heads = getattr(model, "roi_heads", None)
    predictor = getattr(roi_heads, "box_predictor", None)
    if predictor is not None:
        predictor.cls_score.weight.mul_(class_logit_scale)
