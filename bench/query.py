"""Query latency at the published model size: text encoding (BERT-base text tower) + index search, per query.

    python -m bench.query [--vectors 100000] [--factory IVF256,PQ64] [--nprobe 16] [--queries 100]
                          [--batch-sizes 8,32,128] [--device cpu|cuda] [--dtype float32] [--vocab vocab.txt]
                          [--index ROOT]

Random BERT-base weights (``LightningDOT.random(None)``): latency does not depend on the weights. Without
``--vocab`` a synthetic 28996-entry vocab (bert-base-cased's size and special-token ids) is written, holding the
query words, so queries tokenize to about as many tokens as real captions (~12-16). The index is built in-process
with faiss from seeded clustered vectors (``--factory``), or ``--index ROOT`` opens a published one through
``index.search.SearchIndex``. Reports p50/p99 per query for encode, search and both, at batch 1 and batched, and
queries/s; also exact (Flat) search over the same vectors, for scale.

The default index is small so that it builds in well under a minute on two cores (PQ training dominates); its
search cost (nprobe x N/nlist = 16 x 390 codes scanned) is of the same order as a 1M-vector IVF4096 at nprobe 16.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from encoders.lightningdot import LightningDOT

SUBJECTS = ["A young boy", "Two dogs", "A woman in a red dress", "An old man", "A group of people", "A brown horse",
            "A little girl", "Three children", "A man with a beard", "A black and white cat", "A cyclist",
            "A surfer", "Several soldiers", "A chef", "A street performer", "A toddler"]
VERBS = ["is running along", "are playing near", "stands next to", "is sitting on", "walks across",
         "is jumping over", "rides through", "is waiting at", "looks out over", "is painting"]
PLACES = ["a sandy beach at sunset", "the edge of a crowded market", "a snowy mountain trail", "a wooden bench",
          "a busy city street", "a calm lake", "the grass in a park", "an old stone bridge", "a subway platform",
          "a field of yellow flowers"]
EXTRAS = ["", " while holding an umbrella", " with a ball in its mouth", " under a cloudy sky", " at night",
          " next to a bicycle"]


def make_queries(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)}{rng.choice(EXTRAS)}."
            for _ in range(n)]


def synthetic_vocab(path: str, words: set[str], size: int = 28996) -> None:
    """bert-base-cased layout: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, then words, then filler."""
    vocab = [f"[unused{i}]" for i in range(size)]
    vocab[0], vocab[100], vocab[101], vocab[102], vocab[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    for i, w in enumerate(sorted(words)):
        vocab[104 + i] = w
    for i in range(104 + len(words), size):
        vocab[i] = f"tok{i}" if i % 2 else f"##tk{i}"
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")


def clustered(n: int, d: int, seed: int = 0, clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d), dtype=np.float32)
    x = centers[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    return x.astype(np.float32)


def build_faiss(x: np.ndarray, factory: str, nprobe: int, seed: int = 0):
    import faiss

    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index)) if "IVF" in factory else None
    if ivf is not None and hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False  # the factory turns it on for IVF-PQ; it takes minutes and is unused
    if not index.is_trained:
        nlist = faiss.extract_index_ivf(index).nlist if "IVF" in factory else 256
        n_train = min(len(x), max(64 * nlist, 10_000))
        sample = x[np.random.default_rng(seed).choice(len(x), n_train, replace=False)]
        index.train(sample)
    index.add(x)
    if "IVF" in factory:
        faiss.extract_index_ivf(index).nprobe = nprobe
    return index


def pct(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(queries: list[str], batch: int, encode: Callable[[list[str]], np.ndarray],
        search: Callable[[np.ndarray], object], device: str) -> dict[str, float]:
    enc, srch, tot = [], [], []
    for s in range(0, len(queries) - batch + 1, batch):
        chunk = queries[s : s + batch]
        t0 = time.perf_counter()
        v = encode(chunk)
        sync(device)
        t1 = time.perf_counter()
        search(v)
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        srch.append(t2 - t1)
        tot.append(t2 - t0)
    e50, e99 = pct(enc)
    s50, s99 = pct(srch)
    t50, t99 = pct(tot)
    return {"batch": batch, "batches": len(tot), "enc_p50": e50, "enc_p99": e99, "search_p50": s50,
            "search_p99": s99, "p50": t50, "p99": t99, "qps": batch * len(tot) / sum(tot)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=100_000, help="corpus size for the in-process index")
    ap.add_argument("--factory", default="IVF256,PQ64", help="faiss factory string (inner product)")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=100, help="queries timed at batch 1")
    ap.add_argument("--batch-sizes", default="8,32,128")
    ap.add_argument("--batches", type=int, default=3, help="batches timed per batch size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--vocab", default=None, help="real bert-base-cased vocab.txt (default: synthetic)")
    ap.add_argument("--index", default=None, help="search a published index ROOT instead of building one")
    ap.add_argument("--no-flat", action="store_true", help="skip the exact (Flat) search comparison")
    args = ap.parse_args()

    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    queries = make_queries(max(args.queries, max(batch_sizes) * args.batches) + 10)
    tmp = tempfile.mkdtemp(prefix="bench-query-")
    vocab = args.vocab
    if vocab is None:
        vocab = os.path.join(tmp, "vocab.txt")
        words = {w for q in queries for w in q.replace(".", " . ").split()}
        synthetic_vocab(vocab, words)

    t0 = time.perf_counter()
    model = LightningDOT.random(None, device=args.device, dtype=args.dtype, vocab=vocab)
    tok = model.tokenizer()
    lengths = [len(tok.tokenize(q)) for q in queries]
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs "
          f"(other processes on a shared machine inflate every figure)")
    print(f"model: BERT-base text tower (random weights), {args.device} {args.dtype}, "
          f"torch threads {torch.get_num_threads()}, loaded in {time.perf_counter() - t0:.1f}s; "
          f"query tokens (with [CLS]/[SEP]) mean {np.mean(lengths):.1f}, max {max(lengths)}")

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode_captions(texts, batch_size=len(texts))

    import faiss

    t0 = time.perf_counter()
    if args.index:
        from index.search import SearchIndex

        idx = SearchIndex.open(args.index)

        def search(v: np.ndarray) -> object:
            return idx.search(v, args.k)

        where = f"published index {args.index}"
        corpus = None
    else:
        corpus = clustered(args.vectors, model.config.project_dim)
        ann = build_faiss(corpus, args.factory, args.nprobe)

        def search(v: np.ndarray) -> object:
            return ann.search(v, args.k)

        where = f"in-process faiss {args.factory}, nprobe {args.nprobe}, {args.vectors} x {corpus.shape[1]}"
    print(f"index: {where}, ready in {time.perf_counter() - t0:.1f}s; faiss threads {faiss.omp_get_max_threads()}")

    for q in queries[:5]:  # warm-up
        search(encode([q]))

    rows = [run(queries[: args.queries], 1, encode, search, args.device)]
    for b in batch_sizes:
        rows.append(run(queries[: b * args.batches], b, encode, search, args.device))
    flat_rows = []
    if corpus is not None and not args.no_flat:
        flat = faiss.IndexFlatIP(corpus.shape[1])
        flat.add(corpus)
        vecs = encode(queries[:128])
        for b in (b for b in (1, 32, 128) if b <= len(vecs)):
            times = []
            for s in range(0, min(len(vecs), max(b * 4, 32)) - b + 1, b):
                t = time.perf_counter()
                flat.search(vecs[s : s + b], args.k)
                times.append(time.perf_counter() - t)
            p50, p99 = pct(times)
            flat_rows.append((b, p50, p99, b / np.median(times)))

    print(f"\nper batch (ms)      {'encode p50/p99':>16} {'search p50/p99':>16} {'total p50/p99':>16} "
          f"{'per query p50':>14} {'queries/s':>10}")
    for r in rows:
        print(f"batch {r['batch']:>4} x{r['batches']:<4}  {r['enc_p50']:7.1f}/{r['enc_p99']:<8.1f} "
              f"{r['search_p50']:7.2f}/{r['search_p99']:<8.2f} {r['p50']:7.1f}/{r['p99']:<8.1f} "
              f"{r['p50'] / r['batch']:14.2f} {r['qps']:10.1f}")
    for b, p50, p99, qps in flat_rows:
        print(f"exact Flat search only, batch {b:>3}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, {qps:.0f} queries/s")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
