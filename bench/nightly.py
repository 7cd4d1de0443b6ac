"""A nightly run where 1% of the corpus is new vs a full rebuild of the same corpus, in one run.

    python -m bench.nightly [--images 200] [--new-fraction 0.01] [--size 160] [--workers N] [--keep-dir DIR]

The corpus: crops of the repo's demo photos (jobs/demo_data/images), random position and size, seeded, saved as small
JPEGs. Models: the tiny encoder and detector configs with random weights, on the CPU, local runner (FnApiRunner).

    1. setup: a nightly run over the corpus without its newest images (publishes the "yesterday" index)
    2. add the new images
    3. incremental: the next nightly run (carries the rest from yesterday's snapshot)
    4. full rebuild: the same nightly command over the same corpus in an empty work dir and index root
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.corpus import DEMO_IMAGES, make_corpus
from core.errors import EXIT_OK
from pipeline.nightly import NightlyConfig, run_nightly


def nightly(root: Path, corpus: Path, workers: int | None) -> tuple[float, dict]:
    cfg = NightlyConfig(inputs=[str(corpus)], work_dir=str(root / "work"), index_root=str(root / "index"),
                        encoder_config="tiny",
                        detector_config="tiny", random_weights=True,
                        device="cpu", workers=workers)
    t0 = time.perf_counter()
    code, report = run_nightly(cfg)
    seconds = time.perf_counter() - t0
    if code != EXIT_OK:
        raise SystemExit(f"nightly run failed (exit {code}): {report.get('reason')}")
    return seconds, report


def describe(name: str, seconds: float, report: dict) -> str:
    c, t = report["counts"], report["timings"]
    return (f"{name:<13} {seconds:8.1f} s   new {c['new']:4d}  changed {c['changed']:3d}  carried {c['carried']:4d}  "
            f"dropped {c['dropped']:3d}  decoded {c.get('decoded', 0):4d}  encoded {c.get('encoded', 0):4d}   "
            f"(embed {t.get('embed', 0):.1f} s, build {t.get('build', 0):.1f} s, publish+retention "
            f"{t.get('publish', 0) + t.get('retention', 0):.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="corpus size after the new images arrive")
    ap.add_argument("--new-fraction", type=float, default=0.01)
    ap.add_argument("--size", type=int, default=160, help="longest side of the corpus images, px")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="local runner worker processes")
    ap.add_argument("--keep-dir", help="work here and keep the files (default: a temporary folder, removed)")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)

    base = Path(args.keep_dir) if args.keep_dir else Path(tempfile.mkdtemp(prefix="bench-nightly-"))
    try:
        n_new = max(1, round(args.images * args.new_fraction))
        staging, corpus = base / "all", base / "corpus"
        paths = make_corpus(staging, args.images, args.seed, long_side=(args.size, args.size), crop=(0.2, 1.0))
        corpus.mkdir(parents=True, exist_ok=True)
        for p in paths[:-n_new]:
            shutil.copyfile(p, corpus / p.name)
        print(f"corpus: {args.images} JPEGs (random crops of {len(list(DEMO_IMAGES.glob('*.jpg')))} demo photos, <= "
              f"{args.size} px), {n_new} new ({n_new / args.images:.1%}); tiny encoder + detector, random weights, "
              f"CPU, FnApiRunner{f' x{args.workers} workers' if args.workers else ''}, {os.cpu_count()} cores")

        t_setup, r_setup = nightly(base / "incremental", corpus, args.workers)
        print(describe("setup (day 0)", t_setup, r_setup))
        for p in paths[-n_new:]:
            shutil.copyfile(p, corpus / p.name)
        t_inc, r_inc = nightly(base / "incremental", corpus, args.workers)
        print(describe("incremental", t_inc, r_inc))
        t_full, r_full = nightly(base / "full", corpus, args.workers)
        print(describe("full rebuild", t_full, r_full))
        assert r_inc["counts"]["embedded"] == r_full["counts"]["embedded"]
        print(f"\nnightly with {n_new / args.images:.0%} new: {t_inc:.1f} s vs full rebuild {t_full:.1f} s -> "
              f"{t_full / t_inc:.1f}x faster ({t_inc / t_full:.1%} of the full time)")
        if args.json:
            print(json.dumps({"images": args.images, "new": n_new, "incremental_s": t_inc, "full_s": t_full,
                              "speedup": t_full / t_inc, "incremental": r_inc["timings"], "full": r_full["timings"]}))
    finally:
        if not args.keep_dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
