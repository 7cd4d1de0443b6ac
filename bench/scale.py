"""How the corpus-size-dependent part of a nightly run grows with N: listing, and deciding what changed.

    python -m bench.scale [--sizes 10000,100000] [--file-bytes 2048] [--repeats 3] [--quick]

A synthetic corpus of N small files (random bytes, ``.jpg`` names, 100 per folder, 10 folders per parent) and a
synthetic snapshot of it (embeddings rows with random vectors, the content hashes, and the stamps table), so no
model runs: the figures are of the stages whose cost scales with the corpus, not with what changed.

    - listing: ``ListImages`` alone (seconds, objects/s, the split's prefix count), and the peak Python memory
      (tracemalloc) of listing the largest prefix, which is what one worker holds, vs listing everything at once;
    - no-change run: listing + ``SplitRefsBySnapshot`` (carried unread, from size and stamp) — bytes read per image;
    - content run (what every night cost before, and what ``--verify-content`` costs): listing + ``ReadImageBytes``
      + ``SplitBySnapshot`` on content hashes — bytes read per image;
    the ratio no-change ÷ content run, each timed interleaved (median of ``--repeats``), FnApiRunner in-process;
    the growth of each per-image cost vs the smallest N (1.00: linear in N), and a projection to 100M images.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.incremental import (
    CARRIED,
    STAMPS_SCHEMA,
    SplitBySnapshot,
    SplitRefsBySnapshot,
    stamp_row,
)
from transforms.listing import ListImages, Prefix, expand_input, list_prefix, split_input
from transforms.reading import ReadImageBytes
from transforms.records import FAILED, ImageRef
from transforms.writing import embeddings_schema, rows_to_table

MODEL, DETECTOR = "bench-model", "bench-detector"


def make_corpus(root: Path, n: int, file_bytes: int, seed: int = 0) -> list[ImageRef]:
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = root / f"a{i // 1000:04d}" / f"b{i // 100 % 10}" / f"{i:08d}.jpg"
        if i % 100 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(file_bytes))
    return [item for item in expand_input(str(root), 0) if isinstance(item, ImageRef)]


def write_snapshot(snap: Path, root: Path, refs: list[ImageRef], dim: int) -> None:
    rows = [{"image_id": r.image_id, "uri": r.uri, "embedding": np.zeros(dim, np.float32), "num_boxes": 10,
             "width": 64, "height": 64, "model": MODEL, "detector": DETECTOR,
             "content_sha256": hashlib.sha256(Path(r.uri).read_bytes()).hexdigest()} for r in refs]
    (snap / "embeddings").mkdir(parents=True)
    (snap / "stamps").mkdir()
    pq.write_table(rows_to_table(rows, embeddings_schema(dim)), snap / "embeddings" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist([stamp_row(r) for r in refs], schema=STAMPS_SCHEMA),
                   snap / "stamps" / "part-0.parquet")


def run(root: Path, snap: Path, mode: str) -> dict[str, float]:
    """One pipeline: ``list``, ``nochange`` (metadata carry) or ``content`` (read + hash carry)."""
    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    refs = (p | "List" >> ListImages([str(root)]))["refs"]
    embeddings = str(snap / "embeddings")
    if mode == "nochange":
        split = refs | "Carry" >> SplitRefsBySnapshot(embeddings, MODEL, DETECTOR)
        split["todo"] | "CountTodo" >> beam.combiners.Count.Globally()
    elif mode == "content":
        read = refs | "Read" >> beam.ParDo(ReadImageBytes()).with_outputs(FAILED, main="ok")
        split = read.ok | "Carry" >> SplitBySnapshot(f"{embeddings}/*.parquet", MODEL, DETECTOR)
        split[CARRIED] | "CountCarried" >> beam.combiners.Count.Globally()
    started = time.perf_counter()
    result = p.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    totals: dict[str, float] = {}
    for name in ("read", "bytes_read", "carried", "carried_unread", "listed"):
        totals[name] = sum(c.committed for c in result.metrics().query()["counters"]
                           if c.key.metric.namespace == "ldot" and c.key.metric.name == name)
    return {"seconds": seconds, **totals}


def peak_listing_memory(root: Path) -> tuple[int, int, int]:
    """(peak bytes listing the largest prefix, peak bytes listing everything in one element, prefixes)."""
    items = list(split_input(str(root), 0))
    prefixes = [i for i in items if isinstance(i, Prefix)]
    worst = 0
    for prefix in prefixes:
        tracemalloc.start()
        for _ in list_prefix(prefix):  # streamed, as the DoFn does
            pass
        worst = max(worst, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    tracemalloc.start()
    everything = list(expand_input(str(root), 0))  # one element holding the whole listing (a GroupByKey's input)
    whole = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del everything
    return worst, whole, len(prefixes)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"  # no prefix at the smallest N: the split listed everything itself


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,50000")
    parser.add_argument("--file-bytes", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per mode (the median is shown)")
    parser.add_argument("--quick", action="store_true", help="sizes 2000,10000")
    args = parser.parse_args()
    sizes = [2000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    print(f"{'N':>8} {'list s':>7} {'obj/s':>8} {'prefixes':>8} {'peak/worker':>11} {'peak 1-elem':>11} "
          f"{'nochange s':>10} {'B read/img':>10} {'content s':>9} {'B read/img':>10} {'ratio':>6}  growth per "
          f"image vs N={sizes[0]}: list / peak per worker / nochange")
    last = first = None
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root, snap = Path(tmp) / "corpus", Path(tmp) / "snap"
            refs = make_corpus(root, n, args.file_bytes)
            write_snapshot(snap, root, refs, 768)
            worst, whole, prefixes = peak_listing_memory(root)
            times: dict[str, list[float]] = {"list": [], "nochange": [], "content": []}
            figures: dict[str, dict[str, float]] = {}
            for _ in range(args.repeats):  # interleaved
                for mode in times:
                    figures[mode] = run(root, snap, mode)
                    times[mode].append(figures[mode]["seconds"])
            med = {mode: statistics.median(t) for mode, t in times.items()}
            assert figures["nochange"]["carried_unread"] == n and figures["nochange"]["read"] == 0
            assert figures["content"]["carried"] == n and figures["content"]["read"] == n
            ratio = med["nochange"] / med["content"]
            first = first or (n, med, worst)
            growth = " / ".join(_ratio(a, b) for a, b in (
                (med["list"] / n, first[1]["list"] / first[0]), (worst, first[2]),
                (med["nochange"] / n, first[1]["nochange"] / first[0])))
            print(f"{n:>8} {med['list']:>7.2f} {n / med['list']:>8.0f} {prefixes:>8} {worst / 1e6:>9.2f}MB "
                  f"{whole / 1e6:>9.2f}MB {med['nochange']:>10.2f} {figures['nochange']['bytes_read'] / n:>10.0f} "
                  f"{med['content']:>9.2f} {figures['content']['bytes_read'] / n:>10.0f} {ratio:>6.2f}  {growth}",
                  flush=True)
            last = (n, med)
            os.sync()
    if last:
        n, med = last
        per_image = {mode: med[mode] / n for mode in med}
        big = 100_000_000
        print(f"\nprojection to {big:,} images at these per-image costs, on W workers (one process each here):")
        for mode in ("list", "nochange", "content"):
            hours = per_image[mode] * big / 3600
            print(f"  {mode:>8}: {hours:8.1f} worker-hours  ({hours / 100:6.2f} h on 100 workers)")
        print(f"  bytes read per night: no-change 0 B; content-hash run {big * 200_000 / 1e12:.0f} TB at 200 KB/image, "
              f"{big:,} GETs; listing ~{big // 1000:,} LIST requests (1000 keys per page)")
        print("  with metadata carry, listing and the two snapshot joins (a shuffle of N small rows) dominate.")


if __name__ == "__main__":
    main()
