"""Per-query latency of LightningDOT's two stages at the published size: the dot-product stage (BERT-base text
tower + index search) next to UNITER-base re-ranking of its top M (M = 10, 20, 50, 100), bucketed vs padded.

    python -m bench.rerank [--quick] [--ms 10,20,50,100] [--queries 5] [--batch-size 16] [--vectors 100000]
                           [--factory IVF256,PQ64] [--device cpu|cuda] [--dtype float32|bfloat16|float16]
                           [--threads N]

Random weights (latency does not depend on them) and a synthetic vocab, as ``bench.query``. Each candidate
image has 10..100 boxes (uniform: what the 10-100 extraction rule yields), served from a real regions table
(``RegionsWriter``: one image per row group) through ``regions_lookup``, so "fetch" is the read of the M
candidates' row groups. "bucketed" is ``UniterReranker.score`` (pairs sorted by length, each batch trimmed to
its longest pair); "padded" is ``bucketing=False`` (every batch as wide as the query's longest pair). The stages
run interleaved per query and the table shows medians; ``ratio`` = re-ranking (fetch + bucketed) / dot stage.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from bench.query import build_faiss, clustered, make_queries, synthetic_vocab
from encoders.lightningdot import LightningDOT
from encoders.regions.formats.regions_lookup import open_region_store
from encoders.regions.formats.regions_table import RegionsWriter
from encoders.regions.types import Regions
from encoders.reranker import UniterReranker


def write_table(directory: str, n: int, seed: int = 0) -> list[str]:
    """``n`` images of 10..100 random regions (no soft labels) in a regions table; returns their ids."""
    rng = np.random.default_rng(seed)
    ids = [f"img-{i:05d}" for i in range(n)]
    with RegionsWriter(directory, rows_per_file=500, with_soft_labels=False) as w:
        for image_id in ids:
            k = int(rng.integers(10, 101))
            xy = rng.uniform(0, 300, (k, 2))
            boxes = np.hstack([xy, xy + rng.uniform(10, 300, (k, 2))]).astype(np.float32)
            feats = rng.gamma(1.0, 1.0, (k, 2048)).astype(np.float32)
            w.write(image_id, None, Regions.from_boxes(feats, boxes, np.linspace(0.9, 0.2, k), None, 640, 640))
    return ids


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="M = 10, 20; 2 queries; a 20k-vector Flat index")
    ap.add_argument("--ms", default="10,20,50,100", help="candidates re-ranked per query")
    ap.add_argument("--queries", type=int, default=5, help="queries timed per M")
    ap.add_argument("--batch-size", type=int, default=16, help="pairs per cross-encoder forward pass")
    ap.add_argument("--images", type=int, default=400, help="images in the regions table")
    ap.add_argument("--vectors", type=int, default=100_000, help="corpus size of the dot-product index")
    ap.add_argument("--factory", default="IVF256,PQ64")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and FAISS threads (default: torch's); 1 on an oversubscribed machine, where "
                         "OpenMP barriers spin (measured here: 2 threads 6x slower than 1 at load 11 on 2 CPUs)")
    args = ap.parse_args()
    if args.threads:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    if args.quick:
        args.ms, args.queries, args.vectors, args.factory, args.images = "10,20", 2, 20_000, "Flat", 120
    ms = [int(m) for m in args.ms.split(",") if m]

    tmp = tempfile.mkdtemp(prefix="bench-rerank-")
    queries = make_queries(args.queries * len(ms) + 3, seed=1)
    vocab = os.path.join(tmp, "vocab.txt")
    synthetic_vocab(vocab, {w for q in queries for w in q.replace(".", " . ").split()})
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs; "
          f"torch threads {torch.get_num_threads()} (other processes on a shared machine inflate every figure)")
    t0 = time.perf_counter()
    encoder = LightningDOT.random(None, device=args.device, dtype=args.dtype, vocab=vocab)
    reranker = UniterReranker.random(None, device=args.device, dtype=args.dtype, vocab=vocab)
    ids = write_table(os.path.join(tmp, "regions"), args.images)
    store = open_region_store(os.path.join(tmp, "regions"))
    corpus = clustered(args.vectors, encoder.config.project_dim)
    index = build_faiss(corpus, args.factory, args.nprobe)
    print(f"UNITER-base re-ranker + BERT-base text tower (random weights), {args.device} {args.dtype}; index "
          f"{args.factory} over {args.vectors} vectors; regions table of {args.images} images; "
          f"ready in {time.perf_counter() - t0:.1f}s")

    rng = np.random.default_rng(2)
    k_max = max(ms)

    def dot_stage(text: str) -> None:
        index.search(encoder.encode_captions([text]), k_max)

    for q in queries[:2]:  # warm-up: first calls allocate
        dot_stage(q)
        found = store.fetch(ids[:10])
        reranker.score_texts_images([q] * 10, [found[i].features for i in ids[:10]],
                                    [found[i].norm_bb for i in ids[:10]], batch_size=args.batch_size)

    rows = []
    for m in ms:
        times: dict[str, list[float]] = {"dot": [], "fetch": [], "bucketed": [], "padded": []}
        tokens = {"bucketed": 0, "padded": 0}
        for q in queries[2 + ms.index(m) * args.queries : 2 + (ms.index(m) + 1) * args.queries]:
            cands = [ids[i] for i in rng.choice(len(ids), m, replace=False)]
            t = time.perf_counter()
            dot_stage(q)
            times["dot"].append(time.perf_counter() - t)
            t = time.perf_counter()
            found = store.fetch(cands)
            times["fetch"].append(time.perf_counter() - t)
            feats, boxes = [found[i].features for i in cands], [found[i].norm_bb for i in cands]
            counts = np.array([len(f) for f in feats])
            text_len = len(reranker.tokenizer().tokenize(q))
            for mode in ("bucketed", "padded"):  # alternate which goes first, so drift hits both alike
                t = time.perf_counter()
                reranker.score_texts_images([q] * m, feats, boxes, batch_size=args.batch_size,
                                            bucketing=mode == "bucketed")
                sync(args.device)
                times[mode].append(time.perf_counter() - t)
            order = np.sort(counts)
            groups = [order[a : a + args.batch_size] for a in range(0, m, args.batch_size)]
            tokens["bucketed"] += sum(len(g) * (text_len + int(g.max())) for g in groups)
            tokens["padded"] += m * (text_len + int(counts.max()))
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        rows.append((m, med, tokens))
        print(f"M={m}: done ({len(times['dot'])} queries)", flush=True)

    print(f"\nper query, medians (ms); batch {args.batch_size} pairs; text ~{text_len} tokens, 10..100 boxes")
    print(f"{'M':>4} {'dot stage':>10} {'fetch':>8} {'bucketed':>10} {'padded':>10} {'padded/':>8} "
          f"{'tokens':>8} {'rerank/dot':>11} {'pairs/s':>8}")
    print(f"{'':>4} {'':>10} {'':>8} {'':>10} {'':>10} {'bucketed':>8} {'saved':>8} {'ratio':>11} {'':>8}")
    for m, med, tokens in rows:
        rerank = med["fetch"] + med["bucketed"]
        print(f"{m:>4} {med['dot']:10.1f} {med['fetch']:8.1f} {med['bucketed']:10.1f} {med['padded']:10.1f} "
              f"{med['padded'] / med['bucketed']:8.2f} {1 - tokens['bucketed'] / tokens['padded']:8.0%} "
              f"{rerank / med['dot']:11.0f}x {m / (med['bucketed'] / 1000):8.1f}")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
