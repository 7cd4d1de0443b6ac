"""Throughput of region extraction: the published bottom-up-attention R101-C4 config (damped random weights,
so no weights file is needed; the cost does not depend on the weights' values) at its test scale
(shorter side 600, longer side at most 1000), one image per forward pass against batched passes.

    python -m bench.regions [--images 2] [--repeats 2] [--batch-size N] [--config PATH] [--device cpu]

Prints images/s for batch 1 and for the batch, side by side with the ratio (medians of the repetitions),
and where the time goes (backbone+RPN, res5 head on the 300 proposals, region selection).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ["coffee", "rocket", "chelsea", "astronaut", "immunohistochemistry", "motorcycle_left"]


def load_photos(n: int) -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in PHOTOS[:n]:
        arr = getattr(data, name)()
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(arr[:, :, :3]).astype(np.uint8))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="butd_r101_c4")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=0, help="default: all images in one batch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)

    from encoders.regions import RegionExtractor

    images = load_photos(args.images)
    batch = args.batch_size or len(images)
    ex = RegionExtractor.from_config(args.config, weights=None, device=args.device, batch_size=batch)
    print(f"config {Path(args.config).name}  device {args.device}  torch threads {torch.get_num_threads()}  "
          f"images {[im.shape[:2] for im in images]}  repeats {args.repeats}")
    t = time.perf_counter()
    ex.extract(images)  # warm-up: the first passes pay for allocator growth and kernel set-up
    print(f"warm-up pass (not counted): {time.perf_counter() - t:.1f}s")
    single_times, batch_times, raw_times, select_times = [], [], [], []
    r_single = r_batch = None
    for _ in range(args.repeats):  # interleaved, so warm-up and machine load hit both modes alike
        t = time.perf_counter()
        r_single = [ex.extract([im])[0] for im in images]
        single_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        raws = ex.extract_raw(images)
        t_raw = time.perf_counter() - t
        r_batch = [ex.select(raw) for raw in raws]
        batch_times.append(time.perf_counter() - t)
        raw_times.append(t_raw)
        select_times.append(batch_times[-1] - t_raw)
    crops = sum(len(r["proposals"]) for r in raws)
    n = len(images)
    t_single, t_batch = statistics.median(single_times), statistics.median(batch_times)
    ips_single, ips_batch = n / t_single, n / t_batch
    print(f"{'mode':<12}{'images/s':>10}{'s/image':>10}   runs (s)")
    print(f"{'batch 1':<12}{ips_single:>10.3f}{t_single / n:>10.2f}   {[round(x, 1) for x in single_times]}")
    print(f"{f'batch {batch}':<12}{ips_batch:>10.3f}{t_batch / n:>10.2f}   {[round(x, 1) for x in batch_times]}")
    print(f"ratio batched/batch-1: {ips_batch / ips_single:.2f}x")
    print(f"split (batched, median): model forward {statistics.median(raw_times):.1f}s for {n} images "
          f"({crops} proposals through res5), region selection {statistics.median(select_times):.2f}s "
          "(1600 per-class NMS per image)")
    boxes = [r.num_boxes for r in r_batch]
    same = all(a.num_boxes == b.num_boxes and np.allclose(a.features, b.features, rtol=1e-3, atol=1e-3)
               for a, b in zip(r_single, r_batch, strict=True))
    print(f"regions per image {boxes}; batch-1 and batched results agree: {same}")


if __name__ == "__main__":
    main()
