"""One prepared device run: speed, memory and reduced-precision parity of the region detector (the published
R101-C4 config) and of the LightningDOT image tower (BERT-base), so a lent GPU gives every figure in one run.

    python -m bench.gpu --device cuda [--detector-weights PKL] [--checkpoint PT] [--json PATH]
    python -m bench.gpu --device cpu --quick [--json PATH]      # smoke run: tiny configs, seconds

Precision modes: ``fp32`` (TF32 off: the reference), ``tf32`` (fp32 with TF32 matmuls and convolutions, CUDA
only), ``bf16`` and ``fp16`` (the detector under ``torch.autocast``; the tower with its weights cast, as
``ldot index --dtype`` runs it). For each mode and part:

- images/s at batch 1 and the best over a sweep of batch sizes (medians of ``--repeats`` timed runs after a
  warm-up, the modes interleaved so machine noise hits them alike), and the peak device memory
  (``torch.cuda.max_memory_allocated``) of each run;
- parity against fp32 on the same images (the bundled demo photos): detector: the fraction of fp32's kept
  regions that the mode keeps too (a kept box with IoU >= 0.95), how often the region count is the same, and
  the largest feature difference over matched regions (absolute and relative to the largest fp32 value);
  tower: cosine of the mode's embedding to fp32's on the same fp32 regions; end to end: cosine of
  image -> regions -> embedding, all in the mode, to all in fp32.

Without weights files the models are random (the detector's damped, see ``damp_random_weights``): speed does
not depend on weight values, parity does somewhat, so pass real weights for parity figures that matter. Batches
are made of the demo photos, which differ in size as a real corpus does (same-size images share the backbone
pass). A time budget (``--budget-s``) skips what is left rather than overrun, and a batch size that runs out of
memory is recorded as such and ends that mode's sweep, so the run always ends with a report.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "jobs" / "demo_data" / "images"
CONFIGS = {False: ("butd_r101_c4", "base"), True: ("tiny", "tiny")}  # shipped configs, by name: (detector, tower)
KEPT_IOU = 0.95
SKIPPED_BUDGET = "skipped: time budget"


@dataclass(frozen=True)
class Mode:
    name: str
    dtype: torch.dtype | None  # None: fp32
    tf32: bool = False


MODES = {"fp32": Mode("fp32", None), "tf32": Mode("tf32", None, tf32=True),
         "bf16": Mode("bf16", torch.bfloat16), "fp16": Mode("fp16", torch.float16)}
TOWER_DTYPES = {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny configs and short sweeps (CPU smoke test)")
    ap.add_argument("--detector-config", help="YAML or shipped name (default: butd_r101_c4; tiny with --quick)")
    ap.add_argument("--encoder-config", help="JSON or shipped name (default: base; tiny with --quick)")
    ap.add_argument("--detector-weights", help="detector .pkl/.pth (default: damped random weights)")
    ap.add_argument("--checkpoint", help="LightningDOT checkpoint (default: random weights)")
    ap.add_argument("--modes", help="comma-separated, of fp32,tf32,bf16,fp16 (default: all; no tf32 on cpu)")
    ap.add_argument("--images", type=int, default=0, help="parity images (default 7, 2 with --quick)")
    ap.add_argument("--repeats", type=int, default=0, help="timed runs per point (default 3, 1 with --quick)")
    ap.add_argument("--detector-batches", help="batch sweep (default 1,2,4,8,16,32; 1,2 with --quick)")
    ap.add_argument("--encoder-batches", help="batch sweep (default 1,16,64,256; 1,4 with --quick)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop measuring after this many seconds")
    ap.add_argument("--json", help="also write the report as JSON here")
    args = ap.parse_args(argv)
    det_cfg, enc_cfg = CONFIGS[args.quick]
    args.detector_config = args.detector_config or det_cfg
    args.encoder_config = args.encoder_config or enc_cfg
    cuda = args.device.startswith("cuda")
    names = args.modes.split(",") if args.modes else [m for m in MODES if cuda or m != "tf32"]
    unknown = [m for m in names if m not in MODES]
    if unknown or names[0] != "fp32":
        ap.error(f"--modes: fp32 first (the reference), then any of {', '.join(MODES)}; got {args.modes}")
    args.modes = [MODES[m] for m in names]
    args.images = args.images or (2 if args.quick else 7)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.detector_batches = _ints(args.detector_batches or ("1,2" if args.quick else "1,2,4,8,16,32"))
    args.encoder_batches = _ints(args.encoder_batches or ("1,4" if args.quick else "1,16,64,256"))
    return args


def _ints(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",")})


class Bench:
    """Timing, memory and the time budget on one device."""

    def __init__(self, device: str, repeats: int, budget_s: float) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.repeats = repeats
        self.deadline = time.monotonic() + budget_s
        self.skipped: list[str] = []
        self.errors: list[str] = []

    def over_budget(self, what: str) -> bool:
        if time.monotonic() > self.deadline:
            self.skipped.append(what)
            return True
        return False

    @contextlib.contextmanager
    def precision(self, mode: Mode, autocast: bool) -> Iterator[None]:
        """TF32 as the mode says (CUDA), and autocast to its dtype when ``autocast`` (the detector)."""
        if self.cuda:
            saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
            precision = "tf32" if mode.tf32 else "ieee"
            torch.backends.cuda.matmul.fp32_precision = precision
            torch.backends.cudnn.conv.fp32_precision = precision
        try:
            if autocast and mode.dtype is not None:
                with torch.autocast(self.device.type, dtype=mode.dtype):
                    yield
            else:
                yield
        finally:
            if self.cuda:
                torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def run_once(self, fn: Callable[[], Any]) -> tuple[float, int | None, int | None]:
        """Seconds, peak device memory (``max_memory_allocated``: everything resident) and the part of it the
        call itself added (activations, workspaces) of one call; memory is None on CPU."""
        before = 0
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        t = time.perf_counter()
        fn()
        self.sync()
        seconds = time.perf_counter() - t
        if not self.cuda:
            return seconds, None, None
        peak = torch.cuda.max_memory_allocated(self.device)
        return seconds, peak, peak - before

    def sweep(self, part: str, modes: list[Mode], batches: list[int], work: Callable[[Mode, int], tuple[int, Any]],
              autocast: bool) -> list[dict[str, Any]]:
        """For each batch size, each mode: a warm-up, then ``repeats`` timed runs, modes interleaved."""
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        stopped: set[str] = set()  # modes whose sweep ended (out of memory)
        for batch in batches:
            for rep in range(self.repeats + 1):
                for mode in modes:
                    key = (mode.name, batch)
                    row = rows.setdefault(key, {"mode": mode.name, "batch": batch, "runs_s": [], "status": "ok",
                                                "peak_memory_bytes": None, "run_memory_bytes": None})
                    if mode.name in stopped or row["status"] != "ok":
                        continue
                    if self.over_budget(f"{part} {mode.name} batch {batch}"):
                        row["status"] = SKIPPED_BUDGET
                        continue
                    try:
                        with self.precision(mode, autocast):
                            n, fn = work(mode, batch)
                            seconds, peak, own = self.run_once(fn)
                    except Exception as e:  # out of memory, an op the mode cannot run: record it, go on
                        oom = isinstance(e, torch.OutOfMemoryError)
                        row["status"] = "out of memory" if oom else f"error: {type(e).__name__}: {e}"[:300]
                        stopped.add(mode.name)
                        if self.cuda:
                            torch.cuda.empty_cache()
                        continue
                    if rep == 0:
                        continue  # warm-up: allocator growth, kernel selection
                    row["runs_s"].append(round(seconds, 4))
                    row["images"] = n
                    if peak is not None:
                        row["peak_memory_bytes"] = max(row["peak_memory_bytes"] or 0, peak)
                        row["run_memory_bytes"] = max(row["run_memory_bytes"] or 0, own)
        out = []
        for row in rows.values():
            if row["runs_s"]:
                row["images_per_s"] = row["images"] / statistics.median(row["runs_s"])
            else:
                row["images_per_s"] = None
                if row["status"] == "ok":
                    row["status"] = SKIPPED_BUDGET
            out.append(row)
        return out


def summarize(rows: list[dict[str, Any]], modes: list[Mode]) -> dict[str, Any]:
    """Per mode: images/s at batch 1 and at the best batch size, with its peak memory."""
    out = {}
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode.name and r["images_per_s"] is not None]
        one = next((r for r in mine if r["batch"] == 1), None)
        best = max(mine, key=lambda r: r["images_per_s"], default=None)
        out[mode.name] = {
            "batch1_images_per_s": one and one["images_per_s"],
            "batch1_peak_memory_bytes": one and one["peak_memory_bytes"],
            "best_batch": best and best["batch"], "best_images_per_s": best and best["images_per_s"],
            "best_peak_memory_bytes": best and best["peak_memory_bytes"],
        }
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def detector_parity(ref: list, other: list) -> dict[str, float]:
    """Kept-set agreement and feature differences of ``other`` against the fp32 regions ``ref``."""
    matched = kept = same_count = 0
    max_abs = 0.0
    scale = max(float(np.abs(r.features).max()) for r in ref)
    for r, o in zip(ref, other, strict=True):
        kept += r.num_boxes
        same_count += int(r.num_boxes == o.num_boxes)
        if not (r.num_boxes and o.num_boxes):
            continue
        iou = box_iou(r.boxes, o.boxes)
        best = iou.argmax(axis=1)
        ok = iou[np.arange(len(best)), best] >= KEPT_IOU
        matched += int(ok.sum())
        if ok.any():
            max_abs = max(max_abs, float(np.abs(r.features[ok] - o.features[best[ok]]).max()))
    return {"kept_agreement": matched / max(kept, 1), "same_num_boxes": same_count / len(ref),
            "max_feature_abs_diff": max_abs, "max_feature_rel_diff": max_abs / max(scale, 1e-12)}


def cosine(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}


def tower_inputs(regions: list | None, n: int, feature_dim: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``n`` images for the tower's speed: box counts uniform in 10..100 (what the 10-100 rule yields), rows
    drawn from the detector's regions (random ones if the time budget left none)."""
    rng = np.random.default_rng(seed)
    if regions:
        feats = np.concatenate([r.features for r in regions])
        boxes = np.concatenate([r.norm_bb for r in regions])
    else:
        feats = rng.random((100, feature_dim), dtype=np.float32)
        xy = rng.random((100, 2), dtype=np.float32) * 0.5
        wh = rng.random((100, 2), dtype=np.float32) * 0.5
        boxes = np.concatenate([xy, xy + wh, wh], axis=1)
    counts = rng.integers(10, 101, size=n)
    pick = rng.integers(0, len(feats), size=(n, 100))
    return feats[pick], boxes[pick], counts


def detector_part(args: argparse.Namespace, bench: Bench, images: list[np.ndarray],
                  parity_images: list[np.ndarray]) -> tuple[dict[str, Any], dict[str, list]]:
    """Speed sweep, then each mode's regions of the parity images (the extractor is freed on return)."""
    from encoders.regions import RegionExtractor

    ex = RegionExtractor.from_config(args.detector_config, weights=args.detector_weights, device=args.device)

    def work(mode: Mode, batch: int) -> tuple[int, Callable[[], Any]]:
        ex.batch_size = batch
        chunk = [images[i % len(images)] for i in range(batch)]
        return batch, lambda: ex.extract_raw(chunk)

    rows = bench.sweep("detector", args.modes, args.detector_batches, work, autocast=True)
    ex.batch_size = max(args.detector_batches)
    regions: dict[str, list] = {}
    select_s: list[float] = []
    for mode in args.modes:
        if bench.over_budget(f"detector parity {mode.name}"):
            continue
        try:
            with bench.precision(mode, autocast=True):
                raws = ex.extract_raw(parity_images)
        except Exception as e:  # the sweep has recorded what went wrong
            bench.errors.append(f"detector parity {mode.name}: {type(e).__name__}: {e}"[:300])
            continue
        t = time.perf_counter()
        regions[mode.name] = [ex.select(raw) for raw in raws]
        select_s.append((time.perf_counter() - t) / len(raws))
    ref = regions.get("fp32")
    return {
        "throughput": rows, "summary": summarize(rows, args.modes),
        "select_s_per_image": statistics.median(select_s) if select_s else None,
        "num_boxes_fp32": [r.num_boxes for r in ref] if ref else None,
        "parity_vs_fp32": {m: detector_parity(ref, regions[m]) for m in regions if m != "fp32"} if ref else {},
    }, regions


def run(args: argparse.Namespace) -> dict[str, Any]:
    from PIL import Image

    from encoders.lightningdot import LightningDOT

    logging.getLogger("encoders.regions.extractor").setLevel(logging.ERROR)  # the random-weights warning
    started = time.monotonic()
    bench = Bench(args.device, args.repeats, args.budget_s)
    cuda = bench.cuda
    photos = sorted(PHOTOS.glob("*.jpg"))
    # plain RGB JPEGs: Pillow gives what transforms.decoding does, without Beam (absent on bare GPU machines)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    parity_images = [images[i % len(images)] for i in range(args.images)]
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(bench.device) if cuda
        else f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads",
        "torch": torch.__version__, "quick": args.quick, "modes": [m.name for m in args.modes],
        "detector_config": Path(args.detector_config).name, "encoder_config": Path(args.encoder_config).name,
        "detector_weights": args.detector_weights or "random (damped)", "checkpoint": args.checkpoint or "random",
        "repeats": args.repeats, "images": [f"{im.shape[1]}x{im.shape[0]}" for im in parity_images],
    }

    report["detector"], regions = detector_part(args, bench, images, parity_images)
    if cuda:
        torch.cuda.empty_cache()
    ref = regions.get("fp32")

    # ---- image tower -----------------------------------------------------------------------------------
    if args.checkpoint:
        base = LightningDOT.from_checkpoint(args.checkpoint, args.encoder_config)
    else:
        base = LightningDOT.random(args.encoder_config, seed=0)
    towers = {}
    for mode in args.modes:
        towers[mode.name] = LightningDOT(copy.deepcopy(base.model), base.config, device=args.device,
                                         dtype=TOWER_DTYPES[mode.dtype], source=base.source)
    del base
    inputs = tower_inputs(ref, min(512, 4 * max(args.encoder_batches)), towers["fp32"].config.feature_dim)

    def tower_work(mode: Mode, batch: int) -> tuple[int, Callable[[], Any]]:
        n = min(len(inputs[0]), max(4 if args.quick else 32, 4 * batch))
        feats, boxes, counts = (x[:n] for x in inputs)
        return n, lambda: towers[mode.name].encode_images(feats, boxes, counts, batch_size=batch)

    enc_rows = bench.sweep("tower", args.modes, args.encoder_batches, tower_work, autocast=False)
    tower_parity, end_to_end = {}, {}
    if ref:
        feats, boxes = [r.features for r in ref], [r.norm_bb for r in ref]
        with bench.precision(MODES["fp32"], autocast=False):
            want = towers["fp32"].encode_regions(feats, boxes)
        for mode in args.modes[1:]:
            if mode.name not in regions or bench.over_budget(f"tower parity {mode.name}"):
                continue
            mine = regions[mode.name]
            try:
                with bench.precision(mode, autocast=False):
                    tower_parity[mode.name] = cosine(towers[mode.name].encode_regions(feats, boxes), want)
                    end_to_end[mode.name] = cosine(towers[mode.name].encode_regions(
                        [r.features for r in mine], [r.norm_bb for r in mine]), want)
            except Exception as e:
                bench.errors.append(f"tower parity {mode.name}: {type(e).__name__}: {e}"[:300])
    report["tower"] = {"throughput": enc_rows, "summary": summarize(enc_rows, args.modes),
                       "mean_boxes": float(inputs[2].mean()), "parity_vs_fp32": tower_parity}
    report["end_to_end_parity_vs_fp32"] = end_to_end
    report["skipped"] = bench.skipped
    report["errors"] = bench.errors
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def _cell(row: dict[str, Any]) -> str:
    if row["status"] == "ok":
        return _fmt(row["images_per_s"], ".2f")
    return {"out of memory": "OOM", SKIPPED_BUDGET: "skipped"}.get(row["status"], "error")


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_report(r: dict[str, Any]) -> None:
    print(f"device: {r['device']}  torch {r['torch']}  detector {r['detector_config']} ({r['detector_weights']})  "
          f"tower {r['encoder_config']} ({r['checkpoint']})  repeats {r['repeats']}  {r['seconds']}s")
    for part, label in (("detector", "detector images/s (forward, no selection)"), ("tower", "tower images/s")):
        print(f"\n{label}")
        rows = r[part]["throughput"]
        batches = sorted({row["batch"] for row in rows})
        print(f"{'mode':<6}" + "".join(f"{'b' + str(b):>10}" for b in batches) + f"{'best':>12}{'peak MiB':>10}")
        for mode, s in r[part]["summary"].items():
            cells = {row["batch"]: row for row in rows if row["mode"] == mode}
            line = f"{mode:<6}" + "".join(f"{_cell(cells[b]):>10}" for b in batches)
            best = "-" if s["best_batch"] is None else f"{s['best_images_per_s']:.2f}@{s['best_batch']}"
            peak = s["best_peak_memory_bytes"]
            print(line + f"{best:>12}{_fmt(peak and peak / 2**20, '.0f'):>10}")
    det = r["detector"]
    print(f"\nregion selection (CPU): {_fmt(det['select_s_per_image'], '.3f')} s/image; "
          f"fp32 regions per image {det['num_boxes_fp32']}")
    print(f"\n{'parity vs fp32':<16}{'kept agree':>12}{'same count':>12}{'max |dF|':>12}{'rel':>10}"
          f"{'tower cos min':>15}{'e2e cos min':>13}")
    for mode in r["modes"][1:]:
        p = det["parity_vs_fp32"].get(mode, {})
        t = r["tower"]["parity_vs_fp32"].get(mode, {})
        e = r["end_to_end_parity_vs_fp32"].get(mode, {})
        print(f"{mode:<16}{_fmt(p.get('kept_agreement'), '.3f'):>12}{_fmt(p.get('same_num_boxes'), '.3f'):>12}"
              f"{_fmt(p.get('max_feature_abs_diff'), '.4g'):>12}{_fmt(p.get('max_feature_rel_diff'), '.2e'):>10}"
              f"{_fmt(t.get('cosine_min'), '.6f'):>15}{_fmt(e.get('cosine_min'), '.6f'):>13}")
    if r["skipped"]:
        print(f"\nskipped (time budget): {r['skipped']}")
    for row in r["detector"]["throughput"] + r["tower"]["throughput"]:
        if row["status"].startswith("error"):
            print(f"{row['mode']} batch {row['batch']}: {row['status']}")
    for error in r["errors"]:
        print(error)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
