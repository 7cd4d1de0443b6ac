"""Image-tower throughput at the published (BERT-base) size: length-bucketed vs padded-to-100, side by side.

    python -m bench.encoders [--images 64] [--batch-size 16] [--repeats 3] [--device cuda --dtype bfloat16]

Box counts are drawn uniformly from 10..100 (what the 10–100 rule yields). "padded" runs the same tower on
batches padded to 100 regions, as a naive implementation would; "bucketed" is ``LightningDOT.encode_images``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from encoders.lightningdot import LightningDOT


def _padded(model: LightningDOT, feats: np.ndarray, boxes: np.ndarray, counts: np.ndarray, batch: int) -> None:
    with torch.inference_mode():
        for s in range(0, len(feats), batch):
            f = torch.as_tensor(feats[s : s + batch]).to(model.device, model.dtype)
            b = torch.as_tensor(boxes[s : s + batch]).to(model.device, model.dtype)
            mask = (torch.arange(f.shape[1])[None] < torch.as_tensor(counts[s : s + batch])[:, None]).long()
            model.model.img_model(f, b, mask.to(model.device)).float().cpu()


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

    def timed(fn) -> float:
        fn()  # warm-up
        runs = []
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - t)
        return args.images / statistics.median(runs)

    bucketed = timed(lambda: model.encode_images(feats, boxes, counts, batch_size=args.batch_size))
    padded = timed(lambda: _padded(model, feats, boxes, counts, args.batch_size))
    print(f"device: {name}, dtype {args.dtype}, BERT-base image tower, {args.images} images, "
          f"boxes uniform 10..100 (mean {counts.mean():.1f}), batch {args.batch_size}, median of {args.repeats}")
    print(f"bucketed  : {bucketed:8.1f} images/s")
    print(f"padded-100: {padded:8.1f} images/s")
    print(f"ratio bucketed/padded: {bucketed / padded:.2f}x")


if __name__ == "__main__":
    main()
