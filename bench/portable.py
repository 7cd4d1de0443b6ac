"""The cost of the worker boundary: the same embed job on PortableRunner (Beam's local job service, SDK workers as
separate processes in another directory: how Flink and Dataflow run Python) and on the in-process FnApiRunner.

    python -m bench.portable [--images 16] [--repeats 2] [--detector-config tiny] [--encoder-config tiny]

Same images (bench.pipeline's corpus), models and batch sizes; runs interleaved, medians reported. Each run
includes what a user waits for: model check and fingerprint in the launcher, job submission, worker start and
model load, writing Parquet. The job service starts once, outside the timings (a cluster is already up).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.corpus import make_corpus
from pipeline.embed_job import EmbedJob, run_embed_job
from pipeline.job_service import LocalJobService


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--detector-config", default="tiny")
    ap.add_argument("--encoder-config", default="tiny")
    ap.add_argument("--detector-batch-size", type=int, default=4)
    ap.add_argument("--encoder-batch-size", type=int, default=64)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp, LocalJobService() as service:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        make_corpus(corpus, args.images)

        def job(name: str, beam_args: list[str]) -> EmbedJob:
            return EmbedJob(inputs=[str(corpus)], output=str(Path(tmp) / name), random_weights=True,
                            encoder_config=args.encoder_config, detector_config=args.detector_config, device="cpu",
                            detector_batch_size=args.detector_batch_size, encoder_batch_size=args.encoder_batch_size,
                            overwrite=True, beam_args=beam_args)

        jobs = {"FnApiRunner (in process)": job("local", []),
                "PortableRunner (worker processes)": job("portable", service.beam_args())}
        seconds: dict[str, list[float]] = {name: [] for name in jobs}
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            for name, j in jobs.items():
                t0 = time.perf_counter()
                report = run_embed_job(j)
                seconds[name].append(time.perf_counter() - t0)
                assert report["counts"]["embedded"] == args.images, report["counts"]

    print(f"{args.images} images (240-480 px), detector {args.detector_config}, encoder {args.encoder_config}, "
          f"random weights, CPU, batches {args.detector_batch_size}/{args.encoder_batch_size}, median of "
          f"{args.repeats}")
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    for name, s in medians.items():
        print(f"{name:36s} {args.images / s:7.2f} images/s  ({s:.1f} s per run)")
    local, portable = medians.values()
    print(f"ratio portable/in-process time: {portable / local:.2f} (the worker boundary costs "
          f"{portable - local:+.1f} s per run)")


if __name__ == "__main__":
    main()
