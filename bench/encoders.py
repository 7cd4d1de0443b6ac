"""Image-tower throughput at the published (BERT-base) size: length-bucketed vs padded-to-100, side by side.

    python -m bench.encoders [--images 128] [--batch-size 16] [--repeats 3] [--device cuda --dtype bfloat16]

Box counts are drawn uniformly from 10..100 (what the 10–100 rule yields). "padded" runs the same tower on
batches padded to 100 regions, as a naive implementation would; "fixed buckets" sorts by box count and cuts
``--batch-size`` images per batch, each padded to its own longest; "token budget" is ``LightningDOT.encode_images``
(the same sort, batches of at most ``batch-size x 101`` tokens, so short images go in larger batches). Both skip
padding in the per-token layers (``encoders.bert.Unpadded``); only attention sees the bucket's padding.
"budget, padded" runs the token-budget batches padded to their own longest throughout (plain SDPA, no varlen
packing): what the packing's index passes buy against the bucket padding they save.
The FLOP ratio (padded / unpadded tower FLOPs, attention included) is the most any bucketing can gain; each
variant's efficiency is its measured speed-up over padded divided by that ratio.
Variants run interleaved, ``--repeats`` rounds, medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from encoders.config import EncoderConfig
from encoders.lightningdot import LightningDOT


def tower_flops(cfg: EncoderConfig, batches: list[np.ndarray], unpadded: bool) -> float:
    """Multiply-adds x 2 of the image tower over batches of per-image token counts, each batch padded to its longest:
    per-token layers on every padded position, or (``unpadded``) on real tokens only; attention always padded."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    per_token = cfg.num_layers * 2 * (4 * h * h + 2 * h * inter) + 2 * (cfg.feature_dim + cfg.box_dim) * h
    attention = cfg.num_layers * 4 * h  # x tokens^2: Q K^T and A V
    head = 2 * (2 * h * h + 2 * h * cfg.project_dim)
    total = 0.0
    for tokens in batches:
        width = int(tokens.max())
        total += (tokens.sum() if unpadded else len(tokens) * width) * per_token
        total += len(tokens) * (width * width * attention + head)
    return total


def _tower(model: LightningDOT, feats: np.ndarray, boxes: np.ndarray, counts: np.ndarray,
           batches: list[np.ndarray], unpad: bool, width: int | None = None) -> None:
    """The image tower on each batch of image indices, trimmed to its longest image (or padded to ``width``)."""
    with torch.inference_mode():
        for idx in batches:
            w = width or int(counts[idx].max())
            f = torch.as_tensor(feats[idx, :w]).to(model.device, model.dtype)
            b = torch.as_tensor(boxes[idx, :w]).to(model.device, model.dtype)
            mask = (torch.arange(w)[None] < torch.as_tensor(counts[idx])[:, None]).long()
            model.model.img_model(f, b, mask.to(model.device), unpad=unpad).float().cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    counts = rng.integers(10, 101, size=args.images)
    feats = rng.random((args.images, 100, 2048), dtype=np.float32)
    xy = rng.random((args.images, 100, 2), dtype=np.float32) * 0.5
    wh = rng.random((args.images, 100, 2), dtype=np.float32) * 0.5
    boxes = np.concatenate([xy, xy + wh, wh, wh[..., :1] * wh[..., 1:]], -1)
    model = LightningDOT.random(None, device=args.device, dtype=args.dtype)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU x{torch.get_num_threads()} threads"
    cuda = args.device.startswith("cuda")

    from encoders.batching import length_buckets

    tokens = counts + 1
    in_order = [np.arange(s, min(s + args.batch_size, args.images)) for s in range(0, args.images, args.batch_size)]
    fixed = list(length_buckets(tokens, args.batch_size))
    budget = list(length_buckets(tokens, args.images, max_tokens=args.batch_size * 101))
    # variant -> (its batches as token counts, whether per-token layers skip padding)
    shapes = {"padded-100": ([np.full(len(i), 101) for i in in_order], False),
              "fixed buckets": ([tokens[i] for i in fixed], True),
              "token budget": ([tokens[i] for i in budget], True),
              "budget, padded": ([tokens[i] for i in budget], False)}
    variants: dict[str, Callable[[], object]] = {
        "padded-100": lambda: _tower(model, feats, boxes, counts, in_order, unpad=False, width=100),
        "fixed buckets": lambda: _tower(model, feats, boxes, counts, fixed, unpad=True),
        "token budget": lambda: model.encode_images(feats, boxes, counts, batch_size=args.batch_size),
        "budget, padded": lambda: _tower(model, feats, boxes, counts, budget, unpad=False),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for key, fn in variants.items():
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - t)
    cfg = model.config
    ideal = tower_flops(cfg, [np.array([n]) for n in tokens], unpadded=True)
    flop_ratio = tower_flops(cfg, *shapes["padded-100"]) / ideal
    padded_speed = args.images / statistics.median(times["padded-100"])
    print(f"device: {name}, dtype {args.dtype}, BERT-base image tower, {args.images} images, "
          f"boxes uniform 10..100 (mean {counts.mean():.1f}), batch {args.batch_size}, median of {args.repeats}")
    print(f"FLOP ratio padded / unpadded: {flop_ratio:.2f}x (the most any bucketing can gain)")
    for key in variants:
        speed = args.images / statistics.median(times[key])
        gain = speed / padded_speed
        flops = tower_flops(cfg, *shapes[key])
        print(f"{key:15s}: {speed:7.2f} images/s, {len(shapes[key][0]):3d} batches, {flops / ideal:.3f}x the unpadded "
              f"FLOPs, {flops / statistics.median(times[key]) / 1e9:6.1f} GFLOP/s, speed-up {gain:.2f}x = "
              f"{gain / flop_ratio:.0%} of the FLOP ratio")


if __name__ == "__main__":
    main()
