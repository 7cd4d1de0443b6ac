"""Whole-pipeline throughput (local Beam runner) against a bare in-process loop, same images and models.

    python -m bench.pipeline [--images 48] [--workers 1] [--detector-config ...] [--encoder-config ...]

Both do read -> decode -> extract (batches of --detector-batch-size) -> encode (batches of
--encoder-batch-size). The bare loop also reports where its time goes, stage by stage. Defaults use the tiny
configs with random weights so it runs in a few minutes on a 2-core machine; pass the published configs
(`--detector-config butd_r101_c4 --encoder-config base`) on a real worker.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.corpus import make_corpus
from pipeline.embed_job import EmbedJob, prepare_models, run_embed_job
from transforms.decoding import decode_image


def bare_loop(paths: list[Path], extractor, encoder, det_batch: int, enc_batch: int) -> dict[str, float]:
    """The same work without Beam: returns seconds per stage."""
    t = {"read+decode": 0.0, "extract": 0.0, "encode": 0.0}
    regions = []
    for s in range(0, len(paths), det_batch):
        t0 = time.perf_counter()
        pixels = [decode_image(p.read_bytes()) for p in paths[s : s + det_batch]]
        t1 = time.perf_counter()
        regions += extractor.extract(pixels)
        t2 = time.perf_counter()
        t["read+decode"] += t1 - t0
        t["extract"] += t2 - t1
    t0 = time.perf_counter()
    order = np.argsort([r.num_boxes for r in regions], kind="stable")  # the pipeline buckets by box count too
    for s in range(0, len(order), enc_batch):
        chunk = [regions[i] for i in order[s : s + enc_batch]]
        encoder.encode_regions([r.features for r in chunk], [r.norm_bb for r in chunk], batch_size=enc_batch)
    t["encode"] = time.perf_counter() - t0
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="local runner worker processes for the pipeline")
    ap.add_argument("--detector-config", default="tiny")
    ap.add_argument("--encoder-config", default="tiny")
    ap.add_argument("--detector-batch-size", type=int, default=4)
    ap.add_argument("--encoder-batch-size", type=int, default=64)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        paths = make_corpus(corpus, args.images)
        job = EmbedJob(inputs=[str(corpus)], output=str(Path(tmp) / "out"), random_weights=True,
                       encoder_config=args.encoder_config, detector_config=args.detector_config, device="cpu",
                       detector_batch_size=args.detector_batch_size, encoder_batch_size=args.encoder_batch_size,
                       overwrite=True)
        models = prepare_models(job)
        extractor, encoder = models.detector.load(), models.encoder.load()
        pipe_runs, bare_runs, stages = [], [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            t0 = time.perf_counter()
            report = run_embed_job(job, workers=args.workers)
            pipe_runs.append(time.perf_counter() - t0)
            assert report["counts"]["embedded"] == args.images, report["counts"]
            stage = bare_loop(paths, extractor, encoder, args.detector_batch_size, args.encoder_batch_size)
            stages.append(stage)
            bare_runs.append(sum(stage.values()))

    pipe, bare = statistics.median(pipe_runs), statistics.median(bare_runs)
    print(f"{args.images} images (240-480 px), detector {Path(args.detector_config).name}, encoder "
          f"{Path(args.encoder_config).name}, random weights, CPU, batches {args.detector_batch_size}/"
          f"{args.encoder_batch_size}, median of {args.repeats}")
    print(f"pipeline (FnApiRunner, {args.workers} worker(s), incl. model load + fingerprint + writing Parquet): "
          f"{args.images / pipe:7.2f} images/s  ({pipe:.1f} s)")
    print(f"bare in-process loop (models already loaded):                               "
          f"{args.images / bare:7.2f} images/s  ({bare:.1f} s)")
    print(f"ratio pipeline/bare throughput: {bare / pipe:.2f}")
    total = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    print("where the bare loop's time goes: " + ", ".join(
        f"{k} {v:.1f} s ({100 * v / sum(total.values()):.0f}%)" for k, v in total.items()))


if __name__ == "__main__":
    main()
