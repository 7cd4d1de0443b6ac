"""Read published checkpoints into our modules' state dicts: LightningDOT bi-encoders and UNITER re-rankers.

LightningDOT layouts (docs/conventions.md, "Checkpoints"):
- fine-tuned (``coco-ft.pt``, ``flickr-ft.pt``): ``{"model_dict": {img_model.*, txt_model.*}, optimizer...}``;
- pre-trained (``LightningDot.pt``): a flat dict, BiEncoder keys under ``bert.``, plus pre-training heads;
- ours (``LightningDOT.save``): the fine-tuned layout plus ``{"config": {...}}``.
UNITER retrieval layouts (all flat; see :func:`extract_uniter_state_dict`):
- UNITER's fine-tuned ``model_step_N.pt``: ``uniter.*`` + ``itm_output.*`` + ``rank_output.*`` (often float16);
- LightningDOT's copy of that model: the same under ``bert.*``;
- the pre-trained ``uniter-base.pt``: ``uniter.*`` + ``itm_output.*`` + pre-training heads, no ``rank_output``.
Loading is ``weights_only=True``: a checkpoint can hold tensors and plain containers, never code. Weights that are
not finite are refused, like a missing key: every embedding made with them would be NaN.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fsspec
import torch

from core.errors import UsageError

PRETRAIN_HEADS = ("cls.", "feat_regress.", "region_classifier.", "itm_output.")
# Present in some checkpoints and meaningless for inference: dropped when present, fine when absent.
_IGNORABLE = re.compile(
    r"^(img|txt)_model\.bert\.(embeddings\.(position_ids|token_type_ids)|pooler\.dense\.(weight|bias))$"
)
# Ours but unused at inference: fine when a checkpoint lacks it.
_OPTIONAL = re.compile(r"^img_model\.bert\.img_embeddings\.mask_embedding\.weight$")

# UNITER's pre-training heads (MLM, region regression/classification): dropped; ``itm_output`` is kept (zero-shot).
UNITER_PRETRAIN_HEADS = ("cls.", "feat_regress.", "region_classifier.")
UNITER_HEADS = ("itm_output.", "rank_output.")
UNITER_IGNORABLE = re.compile(r"^uniter\.embeddings\.(position_ids|token_type_ids)$")
# rank_output is absent from pre-trained checkpoints (the caller derives it from itm_output, as UNITER does).
UNITER_OPTIONAL = re.compile(r"^(uniter\.img_embeddings\.mask_embedding\.weight|rank_output\.(weight|bias))$")


class CheckpointError(UsageError):
    """A checkpoint that is not a LightningDOT model of the configured size."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load from a local path or any fsspec URL, tensors only; a dict (a state dict or a layout holding one)."""
    try:
        if "://" not in str(path):
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            with fsspec.open(str(path), "rb") as f:
                raw = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: no such checkpoint file") from e
    except Exception as e:  # pickle errors, truncated zip files, non-checkpoint files
        raise CheckpointError(f"{path}: not a readable weights-only torch checkpoint: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(raw).__name__}")
    return raw


def extract_state_dict(raw: Mapping[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the BiEncoder tensors of either published layout, keyed as ``img_model.*`` / ``txt_model.*``."""
    if "model_dict" in raw:
        state = raw["model_dict"]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{source}: 'model_dict' is a {type(state).__name__}, not a dict of tensors")
        return {k: v for k, v in state.items()}
    if any(k.startswith("bert.img_model.") for k in raw):
        state, foreign = {}, []
        for key, value in raw.items():
            if key.startswith("bert."):
                state[key[len("bert."):]] = value
            elif not key.startswith(PRETRAIN_HEADS):
                foreign.append(key)
        if foreign:
            raise CheckpointError(f"{source}: unexpected keys in a pre-trained checkpoint: {_names(foreign)}")
        return state
    if any(k.startswith("img_model.") for k in raw):
        return dict(raw)
    raise CheckpointError(
        f"{source}: not a LightningDOT checkpoint: expected 'model_dict' (fine-tuned), 'bert.img_model.*' "
        f"(pre-trained) or 'img_model.*' keys; top-level keys are {_names(list(raw))}"
    )


def extract_uniter_state_dict(raw: Mapping[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a UNITER retrieval model in any of its flat layouts, keyed ``uniter.*`` / ``itm_output.*`` /
    ``rank_output.*`` and upcast to float32 (fine-tuned checkpoints are saved in float16 by apex O2).

    LightningDOT's copy names the body ``bert.*``; old checkpoints name LayerNorm parameters ``gamma``/``beta``
    (UNITER's ``from_pretrained`` renames them the same way). Pre-training heads are dropped; any other key is an
    error that names it.
    """
    if "model_dict" in raw or any(k.startswith(("img_model.", "txt_model.", "bert.img_model.")) for k in raw):
        raise CheckpointError(f"{source}: a LightningDOT bi-encoder checkpoint, not a UNITER cross-encoder "
                              "(re-ranking needs UNITER's retrieval model: uniter.* or bert.* with itm_output.*)")
    prefixes = [p for p in ("uniter.", "bert.") if any(k.startswith(p) for k in raw)]
    if not prefixes:
        raise CheckpointError(f"{source}: not a UNITER checkpoint: expected 'uniter.*' (UNITER) or 'bert.*' "
                              f"(LightningDOT's copy) keys; top-level keys are {_names(list(raw))}")
    body = prefixes[0]
    state: dict[str, torch.Tensor] = {}
    foreign = []
    for key, value in raw.items():
        if key.startswith(UNITER_PRETRAIN_HEADS):
            continue
        if key.startswith(body):
            name = "uniter." + key[len(body):]
        elif key.startswith(UNITER_HEADS):
            name = key
        else:
            foreign.append(key)
            continue
        if not isinstance(value, torch.Tensor):
            foreign.append(f"{key} (a {type(value).__name__}, not a tensor)")
            continue
        name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))
        state[name] = value.float() if value.is_floating_point() else value
    if foreign:
        raise CheckpointError(f"{source}: unexpected keys in a UNITER checkpoint: {_names(foreign)}")
    return state


def match_state_dict(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str = "checkpoint", *,
    ignorable: re.Pattern[str] = _IGNORABLE, optional: re.Pattern[str] = _OPTIONAL,
    config_flag: str = "--encoder-config",
) -> dict[str, torch.Tensor]:
    """Check names, shapes and finiteness against the model's; return what to load. Errors name every offending
    key. ``ignorable`` keys are dropped when present; ``optional`` keys may be absent (the caller fills them in).
    """
    state = {k: v for k, v in state.items() if not ignorable.match(k)}
    missing = [k for k in expected if k not in state and not optional.match(k)]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and (not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(expected[k].shape))
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch: {_names(wrong)}")
    non_finite = [k for k, v in state.items() if k in expected and isinstance(v, torch.Tensor)
                  and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:  # every embedding would be NaN, and a run would "succeed" with them
        problems.append(f"non-finite (NaN or Inf) weights in {_names(non_finite)}")
    if problems:
        hint = f" (is {config_flag} the size this checkpoint was trained with?)" if wrong else ""
        raise CheckpointError(f"{source}: " + "; ".join(problems) + hint)
    return dict(state)


def load_checked(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, **match: Any) -> None:
    """Load ``state`` into ``model`` after ``match_state_dict(state, model's, source, **match)``. Strictness is
    enforced (with names) by the match, so the load itself is not strict: the optional keys the match allows may
    be absent."""
    model.load_state_dict(match_state_dict(state, model.state_dict(), source, **match), strict=False)


def tensors_fingerprint(config: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                        skip: Callable[[str], bool] = lambda name: False) -> str:
    """sha256 (hex) of a config and every tensor (name, shape, float32 bytes): equal across layouts and dtypes
    of the same weights."""
    h = hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode())
    for name, tensor in sorted(state.items()):
        if skip(name):
            continue
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _names(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items)} in all)" if len(items) > limit else "")
