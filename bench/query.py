"""Query latency at the published model size: text encoding (BERT-base text tower) + index search, per query.

    python -m bench.query [--quick] [--vectors 100000] [--factory IVF256,PQ64] [--nprobe 16] [--queries 40]
                          [--vocab vocab.txt] [--no-busy] [--no-serve]

Variants: "eager fp32" (``LightningDOT.encode_captions``, torch's intra-op threads set per variant: this process
owns them), "fast fp32" and "int8" (``encoders.query_encoder.QueryEncoder`` given a budget of 1 or 2 threads, which
it spends per call: one intra-op thread for a single query, queries side by side for a batch), and, to show why,
"fp32 intra-op" (the same ONNX graph on a session of 1 or 2 intra-op threads). Each at batch 1, idle and beside a
busy neighbour (two CPU-burning subprocesses, stopped after the phase and bounded in time), all variants
interleaved query by query, with the 2-thread ÷ 1-thread ratio of their p50s; q/s at batch 32 (1 and 2 threads);
error vs eager fp32; tokenization and FAISS search
(1 and 2 OpenMP threads) on their own; the FLOP and weight-byte floors of this CPU (a measured large GEMM rate and
memory bandwidth) beside them; and an ``ldot serve`` load test on 127.0.0.1 (1, 4, 16 concurrent clients, bounded
in requests and seconds). ``--quick`` runs the tiny config with few queries (a smoke run, minutes).

Random weights (``LightningDOT.random``): latency does not depend on the weights (errors do: int8 on real trained
weights is checked in tests/test_query_encoder.py). Without ``--vocab`` a synthetic 28996-entry vocab
(bert-base-cased's size and special-token ids) is written, holding the query words, so queries tokenize to about
as many tokens as real captions (~12-16). The search index is built in-process with faiss from seeded clustered
vectors (``--factory``; its search cost, 16 x 390 codes scanned, is of the order of a 1M-vector IVF4096 at
nprobe 16); the load test serves a small published Flat index built with ``pipeline.build_index_job``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
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


BURNER = "import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"


class BusyNeighbour:
    """Two CPU-burning subprocesses (load ~2 more on top of ours), each ending by itself after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> BusyNeighbour:
        code = BURNER.format(seconds=self.seconds)
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()


def cpu_limits(seconds: float = 1.0) -> tuple[dict[int, float], float]:
    """Measured fp32 GEMM FLOP/s of this CPU at 1 and 2 threads (a large square matmul) and memory GB/s (a sum)."""
    rates = {}
    a = torch.randn(1024, 1024)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.mm(a, a)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.mm(a, a)
            n += 1
        rates[threads] = n * 2 * 1024**3 / (time.perf_counter() - t0)
    x = np.ones(100_000_000, np.float32)
    x.sum()
    t0 = time.perf_counter()
    for _ in range(3):
        x.sum()
    return rates, 3 * x.nbytes / (time.perf_counter() - t0)


def query_flops(cfg, tokens: float) -> float:
    """Multiply-adds x 2 of one query: every layer on all tokens but the last (only [CLS]), plus the head."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    layer = 2 * (4 * h * h + 2 * h * inter)
    last = 2 * (2 * h * h) * tokens + 2 * (2 * h * h + 2 * h * inter)
    return (cfg.num_layers - 1) * layer * tokens + last + 2 * (2 * h * h + 2 * h * cfg.project_dim)


def matmul_weights(cfg) -> int:
    h, inter = cfg.hidden_size, cfg.intermediate_size
    return cfg.num_layers * (4 * h * h + 2 * h * inter) + 2 * h * h + 2 * h * cfg.project_dim


def interleaved(queries: list[str], variants: dict[str, Callable[[list[str]], object]]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in variants}
    keys = list(variants)
    for i, q in enumerate(queries):
        for key in keys[i % len(keys):] + keys[: i % len(keys)]:  # rotated: no variant always follows the same one
            fn = variants[key]
            t = time.perf_counter()
            fn([q])
            times[key].append(time.perf_counter() - t)
    return times


def serve_load(root: str, vocab: str, config: str | None, queries: list[str], clients: tuple[int, ...],
               requests: int, seconds: float, k: int) -> list[tuple[int, float, float, float, int]]:
    """Start ``ldot serve`` on 127.0.0.1 (ephemeral port), hit /search from C client threads, stop it."""
    cmd = [sys.executable, "-m", "jobs.cli", "serve", root, "--port", "0", "--random-weights", "--vocab", vocab,
           "--threads", "2"] + (["--encoder-config", config] if config else [])
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    rows = []
    try:
        url = None
        while url is None:
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError("ldot serve did not start")
            if line.startswith("ldot serve: http://"):
                url = line.split()[2].rstrip("/")
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its pipe drained

        def get(q: str) -> float:
            t = time.perf_counter()
            with urllib.request.urlopen(f"{url}/search?" + urllib.parse.urlencode({"q": q, "k": k}), timeout=60) as r:
                json.loads(r.read())
            return time.perf_counter() - t

        for q in queries[:3]:
            get(q)
        def client(i: int, share: int, deadline: float, lat: list[float], lock: threading.Lock) -> None:
            for n in range(share):
                if time.perf_counter() > deadline:
                    return
                d = get(queries[(i * 7 + n) % len(queries)])
                with lock:
                    lat.append(d)

        for c in clients:
            lat: list[float] = []
            lock = threading.Lock()
            deadline = time.perf_counter() + seconds
            t0 = time.perf_counter()
            threads = [threading.Thread(target=client, args=(i, requests // c, deadline, lat, lock))
                       for i in range(c)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            p50, p99 = pct(lat)
            rows.append((c, p50, p99, len(lat) / wall, len(lat)))
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny config, few queries: a smoke run")
    ap.add_argument("--vectors", type=int, default=100_000, help="corpus size for the in-process index")
    ap.add_argument("--factory", default="IVF256,PQ64", help="faiss factory string (inner product)")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=40, help="queries timed per phase at batch 1")
    ap.add_argument("--vocab", default=None, help="real bert-base-cased vocab.txt (default: synthetic)")
    ap.add_argument("--no-busy", action="store_true", help="skip the busy-neighbour phases")
    ap.add_argument("--no-serve", action="store_true", help="skip the ldot serve load test")
    ap.add_argument("--serve-requests", type=int, default=200, help="requests per client count (bounded)")
    ap.add_argument("--serve-seconds", type=float, default=20.0, help="seconds per client count (bounded)")
    args = ap.parse_args()
    config = None
    if args.quick:
        from encoders.config import TINY_CONFIG

        config = str(TINY_CONFIG)
        args.vectors, args.factory, args.queries, args.serve_requests = 5000, "IVF64,Flat", 40, 48

    from encoders.query_encoder import QueryEncoder, build_graph, ort_session

    queries = make_queries(max(args.queries, 64) + 10)
    tmp = tempfile.mkdtemp(prefix="bench-query-")
    vocab = args.vocab
    if vocab is None:
        vocab = os.path.join(tmp, "vocab.txt")
        synthetic_vocab(vocab, {w for q in queries for w in q.replace(".", " . ").split()})
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs "
          f"(other processes on a shared machine inflate every figure)")
    t0 = time.perf_counter()
    model = LightningDOT.random(config, seed=0, vocab=vocab)
    tok = model.tokenizer()
    tokens = float(np.mean([len(tok.tokenize(q)) for q in queries]))
    graphs = {p: build_graph(model, p) for p in ("fp32", "int8")}
    fast = {(p, t): QueryEncoder(model, p, threads=t, graph=graphs[p]) for p in ("fp32", "int8") for t in (1, 2)}
    intra = {t: ort_session(graphs["fp32"], intra_op_threads=t) for t in (1, 2)}
    cfg = model.config
    print(f"model: {'tiny' if config else 'BERT-base'} text tower (random weights), {tokens:.1f} tokens per query "
          f"with [CLS]/[SEP]; eager model + ONNX graphs ready in {time.perf_counter() - t0:.1f}s")

    def eager(threads: int) -> Callable[[list[str]], object]:
        def run(texts: list[str]) -> object:
            torch.set_num_threads(threads)
            return model.encode_captions(texts, batch_size=len(texts))
        return run

    def intra_op(threads: int) -> Callable[[list[str]], object]:
        def run(texts: list[str]) -> object:
            ids, mask = tok.encode(texts)
            return intra[threads].run(None, {"input_ids": ids, "attention_mask": mask})
        return run

    variants: dict[str, Callable[[list[str]], object]] = {}
    for t in (1, 2):
        variants[f"eager fp32 {t}t"] = eager(t)
        variants[f"fast fp32 {t}t"] = fast[("fp32", t)].encode_captions
        variants[f"int8 {t}t"] = fast[("int8", t)].encode_captions
        variants[f"fp32 intra-op {t}t"] = intra_op(t)
    for fn in variants.values():
        fn(queries[:1])

    # error vs eager fp32
    torch.set_num_threads(2)
    ref = model.encode_captions(queries[:32])
    errors = {}
    for name, enc in (("fast fp32", fast[("fp32", 1)]), ("int8", fast[("int8", 1)])):
        got = enc.encode_captions(queries[:32])
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        errors[name] = (float(np.abs(got - ref).max()), float(cos.min()))
    errors["eager fp32"] = (0.0, 1.0)
    errors["fp32 intra-op"] = errors["fast fp32"]

    import faiss

    corpus = clustered(args.vectors, cfg.project_dim)
    ann = build_faiss(corpus, args.factory, args.nprobe)
    vecs = fast[("fp32", 1)].encode_captions(queries[: args.queries])

    def search_times(threads: int) -> list[float]:
        faiss.omp_set_num_threads(threads)
        out = []
        for v in vecs:
            t = time.perf_counter()
            ann.search(v[None], args.k)
            out.append(time.perf_counter() - t)
        return out

    def tokenize_times() -> list[float]:
        out = []
        for q in queries[: args.queries]:
            t = time.perf_counter()
            tok.encode([q])
            out.append(time.perf_counter() - t)
        return out

    phases = {"idle": interleaved(queries[: args.queries], variants)}
    search = {"idle": {t: search_times(t) for t in (1, 2)}}
    tokenize = tokenize_times()
    if not args.no_busy:
        with BusyNeighbour(seconds=600):
            phases["busy"] = interleaved(queries[: args.queries], variants)
            search["busy"] = {t: search_times(t) for t in (1, 2)}
    faiss.omp_set_num_threads(1)

    batch = queries[:32]
    qps: dict[tuple[str, int], float] = {}  # (variant, threads): eager = torch threads, fast = the thread budget
    for threads in (1, 2):
        for name, fn in (("eager fp32", eager(threads)), ("fast fp32", fast[("fp32", threads)].encode_captions),
                         ("int8", fast[("int8", threads)].encode_captions),
                         ("fp32 intra-op", intra_op(threads))):
            fn(batch)
            runs = []
            for _ in range(3):
                t = time.perf_counter()
                fn(batch)
                runs.append(time.perf_counter() - t)
            qps[(name, threads)] = len(batch) / float(np.median(runs))

    rates, bandwidth = cpu_limits()
    flops = query_flops(cfg, tokens)
    weights = matmul_weights(cfg)
    # weight bytes, int8 MAC speed-up
    floors = {"eager fp32": (4, None), "fast fp32": (4, None), "int8": (1, 2.0), "fp32 intra-op": (4, None)}
    print(f"\nthis CPU: fp32 GEMM {rates[1] / 1e9:.0f} GFLOP/s on 1 thread, {rates[2] / 1e9:.0f} on 2; memory "
          f"{bandwidth / 1e9:.1f} GB/s. One query: {flops / 1e9:.3f} GFLOP, {weights / 1e6:.1f}M matmul weights")
    print("floor per query = max(FLOPs / rate, weight bytes / bandwidth); int8 rate taken as 2x fp32 (AVX2 "
          "8-bit multiply-adds, no VNNI)")
    print(f"\n{'batch 1, ms':16s} {'idle 1t p50/p99':>16s} {'idle 2t p50/p99':>16s} {'busy 1t p50/p99':>16s} "
          f"{'busy 2t p50/p99':>16s} {'2t/1t idle/busy':>16s} {'floor 1t/2t':>12s} {'q/s@32 1t/2t':>13s} "
          f"{'max|err|':>9s} {'min cos':>9s}")
    for name in ("eager fp32", "fast fp32", "int8", "fp32 intra-op"):
        cells = []
        for phase in ("idle", "busy"):
            for t in (1, 2):
                if phase in phases:
                    p50, p99 = pct(phases[phase][f"{name} {t}t"])
                    cells.append(f"{p50:7.1f}/{p99:<8.1f}")
                else:
                    cells.append(f"{'-':>16s}")
        ratios = "/".join(f"{pct(phases[ph][f'{name} 2t'])[0] / pct(phases[ph][f'{name} 1t'])[0]:.2f}"
                          for ph in ("idle", "busy") if ph in phases)
        wbytes, speedup = floors[name]
        fl = [max(flops / (rates[t] * (speedup or 1.0)), weights * wbytes / bandwidth) * 1e3 for t in (1, 2)]
        err, cos = errors[name]
        print(f"{name:16s} {' '.join(cells)} {ratios:>16s} {fl[0]:5.1f}/{fl[1]:<6.1f} "
              f"{qps[(name, 1)]:6.1f}/{qps[(name, 2)]:<6.1f} {err:9.2e} {cos:9.6f}")
    print("2t/1t: p50 with 2 threads / p50 with 1 (interleaved query by query); the query encoder runs a single query "
          "on one thread whatever its budget, so its ratio is 1 within noise; 'eager' and 'intra-op' show the cost of "
          "intra-op threads at batch 1")
    t50, t99 = pct(tokenize)
    print(f"\ntokenization (1 query): p50 {t50:.3f} ms, p99 {t99:.3f} ms")
    for phase, by_threads in search.items():
        cells = ", ".join(f"{t} FAISS thread(s) p50 {pct(v)[0]:.2f} / p99 {pct(v)[1]:.2f} ms"
                          for t, v in by_threads.items())
        print(f"search {args.factory} nprobe {args.nprobe}, {args.vectors} vectors, batch 1, {phase}: {cells}")
    s50 = pct(search["idle"][1])[0]
    for name in ("fast fp32", "int8"):
        best = min(pct(phases["idle"][f"{name} {t}t"])[0] for t in (1, 2))
        floor = max(flops / (rates[1] * (floors[name][1] or 1.0)), weights * floors[name][0] / bandwidth) * 1e3
        print(f"end to end, idle, {name}: encode {best:.1f} ms (its 1-thread floor {floor:.1f} ms) + search "
              f"{s50:.2f} ms = {best + s50:.1f} ms (encode includes tokenization, {t50:.2f} ms; goal 10 ms)")

    if not args.no_serve:
        from index.settings import BuildSettings
        from pipeline.build_index_job import build_index
        from tests.helpers_index import write_embeddings  # the embeddings contract writer

        n = min(args.vectors, 5000)
        write_embeddings(os.path.join(tmp, "emb", "part-0.parquet"), corpus[:n], model=model.fingerprint)
        root = os.path.join(tmp, "index")
        build_index([os.path.join(tmp, "emb")], root, BuildSettings(selfcheck_queries=50),
                    beam_args=["--runner=FnApiRunner"])
        rows = serve_load(root, vocab, config, queries, (1, 4, 16), args.serve_requests, args.serve_seconds, args.k)
        print(f"\nldot serve (fast fp32, 2 threads) on 127.0.0.1, {n} vectors (Flat), GET /search k={args.k}:")
        for c, p50, p99, rate, count in rows:
            print(f"  {c:2d} clients: p50 {p50:7.1f} ms, p99 {p99:7.1f} ms, {rate:6.1f} queries/s ({count} requests)")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
