"""Index build benchmark: ``ldot build-index --factory auto`` vs autofaiss vs the best hand-picked configuration,
same data, same memory budget, same held-out queries, one run.

    python -m bench.index --dataset synthetic --n 300000 --max-memory 100B/vector
    python -m bench.index --dataset minilm --n 50000 --max-memory 100B/vector      (--quick: 50k, no more)

Datasets: ``synthetic`` — seeded clustered vectors with an exact 64-d latent projected to ``--dim`` plus noise;
``minilm`` — real all-MiniLM-L6-v2 text embeddings (384-d, normalised) of docstring sentences found on this
machine (``bench.text_corpus``, ``--corpus stdlib`` or ``machine``; encoded once on the CPU and cached under
``--cache``). Both are written as Parquet
parts (our contract) and .npy parts (autofaiss's input); the held-out queries are NOT in the index; exact top-10
ground truth by inner product.

Per builder, each in its own process (peak RSS is its own): factory, bytes/vector (index bytes on disk / N),
recall@10 at the search setting the builder chose, batch-1 p50/p99 latency at 1 and 2 FAISS threads, build
seconds (wall) and CPU seconds (what a shared machine does not distort), peak memory; then the ratios
ours/autofaiss and ours/hand-picked. Hand-picked: a sweep of PCA/PCAR,
SQ/PQ-fast-scan and nlist settings within the budget, each searched at its best recall within ``--max-query-ms``
(single thread), the winner rebuilt alone in a fresh process for its build time and peak memory. autofaiss runs
from ``--autofaiss-python`` (default /tmp/af-venv/bin/python: it pins numpy<2, so it needs its own venv; see the
README for the recipe).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 10
LATENCY_QUERIES = 500


def write_parts(out: Path, chunks, queries: np.ndarray, model: str) -> None:
    """Parquet + npy parts from an iterator of [m, d] chunks; exact top-K of ``queries`` merged chunk by chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from index.selfcheck import merge_topk

    (out / "parquet").mkdir(parents=True)
    (out / "npy").mkdir()
    best = (np.full((len(queries), K), -np.inf, np.float32), np.full((len(queries), K), -1, np.int64))
    start = 0
    for part, x in enumerate(chunks):
        m, d = x.shape
        rows = np.arange(start, start + m, dtype=np.int64)
        best = merge_topk([best, (queries @ x.T, np.broadcast_to(rows, (len(queries), m)))], K)
        ids = [f"img-{i:09d}" for i in rows]
        table = pa.table({
            "image_id": ids, "uri": [f"bench://{i}" for i in ids], "content_sha256": [""] * m,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d),
            "num_boxes": pa.array(np.full(m, 36, np.int32)), "width": pa.array(np.full(m, 640, np.int32)),
            "height": pa.array(np.full(m, 480, np.int32)), "model": [model] * m})
        pq.write_table(table, out / "parquet" / f"part-{part:05d}.parquet", row_group_size=25_000)
        np.save(out / "npy" / f"part-{part:05d}.npy", x)
        start += m
    np.save(out / "queries.npy", queries)
    np.save(out / "truth.npy", best[1])


def synthetic(out: Path, n: int, d: int, n_queries: int, seed: int, chunk: int = 100_000) -> str:
    rng = np.random.default_rng(seed)
    latent = 64
    proj = (rng.standard_normal((latent, d)) / np.sqrt(latent)).astype(np.float32)
    centers = (3 * rng.standard_normal((1000, latent))).astype(np.float32)

    def draw(m: int, r: np.random.Generator) -> np.ndarray:
        z = centers[r.integers(0, len(centers), m)] + r.standard_normal((m, latent)).astype(np.float32)
        return (z @ proj + 0.1 * r.standard_normal((m, d)).astype(np.float32)).astype(np.float32)

    queries = draw(n_queries, np.random.default_rng(seed + 1))
    write_parts(out, (draw(min(chunk, n - s), np.random.default_rng([seed, i]))
                      for i, s in enumerate(range(0, n, chunk))), queries, "bench-clustered")
    return f"{n:,} x {d} clustered, exact 64-d latent (seed {seed})"


def minilm(out: Path, n: int, n_queries: int, seed: int, cache: Path, sources: str, chunk: int = 100_000) -> str:
    from bench.text_corpus import embeddings, sentences

    x, _ = embeddings(cache, n + n_queries, seed, sources=sources)
    corpus = len(sentences(cache, seed, sources))
    drawn = {"stdlib": "standard-library docstring",
             "machine": "docstring and document (stdlib, site-packages, /usr/share/doc)"}[sources]
    queries, base = x[:n_queries], x[n_queries:]   # the corpus is shuffled: the first sentences are held out
    write_parts(out, (base[s:s + chunk] for s in range(0, n, chunk)), queries, "all-MiniLM-L6-v2")
    return (f"{n:,} x 384 all-MiniLM-L6-v2 embeddings of distinct {drawn} sentences "
            f"(+{n_queries} held-out sentences as queries; {corpus:,} distinct sentences in the corpus)")


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / K for f, t in zip(found, truth, strict=True)]))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: Linux carries a parent's maximum into a
    forked child across exec, so every builder would report at least the bench's own peak (measured here)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children: on a shared machine wall time depends on the
    neighbours, CPU time much less."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def latencies(index, queries: np.ndarray) -> dict:
    from index.operating_points import batch1_latency

    out = {}
    for t in (1, 2):
        out[f"p50_ms_{t}t"], out[f"p99_ms_{t}t"] = batch1_latency(index, queries[:LATENCY_QUERIES], K, threads=t)
    return out


def run_ours(data: Path, work: Path, max_memory: str, max_query_ms: float, target_recall: float) -> dict:
    from index.search import SearchIndex
    from index.settings import BuildSettings
    from pipeline.build_index_job import build_index

    root = str(work / "ours")
    t0 = time.time()
    settings = BuildSettings(max_memory=max_memory, max_query_ms=max_query_ms, target_recall=target_recall)
    result = build_index([str(data / "parquet")], root, settings, beam_args=["--runner=FnApiRunner"],
                         echo=lambda m: print(m, file=sys.stderr, flush=True))
    build_s = time.time() - t0
    peak, cpu_s = peak_rss_mb(), cpu_seconds()
    m = result.manifest
    ch = m.get("chooser") or {}
    return {"builder": "ours (auto)", **search_ours(data, root, SearchIndex.open(root)), "build_s": build_s,
            "cpu_s": cpu_s, "peak_mb": peak, "bytes_per_vector": m["bytes_per_vector"], "chooser_s": ch.get("seconds"),
            "chooser_fraction": ch.get("fraction_of_build"), "reasoning": m["factory_choice"]["reasoning"]}


def search_ours(data: Path, root: str, idx) -> dict:
    """recall@10 through ``SearchIndex`` (image ids back to row numbers) and batch-1 latency of its FAISS index."""
    queries, truth = np.load(data / "queries.npy"), np.load(data / "truth.npy")
    found = np.array([[int(s[4:]) if s else -1 for s in row] for row in idx.search(queries, K).image_ids], np.int64)
    return {"factory": idx.manifest["factory"], "nprobe": idx.nprobe, "recall@10": recall(found, truth),
            **latencies(idx.index, queries)}


def run_ours_at(data: Path, work: Path, max_latency_ms: float) -> dict:
    """The index ours built, served at the point of its recorded curve a server would pick for a latency target
    (``SearchIndex.open(max_latency_ms=...)``): no rebuild, so build figures are those of the build."""
    from index.search import SearchIndex

    root = str(work / "ours")
    return search_ours(data, root, SearchIndex.open(root, max_latency_ms=max_latency_ms))


def hand_configs(n: int, d: int) -> list[str]:
    """The sweep: scalar codes after PCA at the widths a ~100 B/vector budget allows (8, 6 and 4 bits), fast-scan
    PQ after a rotation, at 4·√N lists and at half and twice that; configurations over the budget are skipped."""
    from index.factory import nlist_for

    nl = nlist_for(n)
    codes = ([f"PCA{w},{{}},SQ8" for w in (48, 64, 72, 80, 88)] + [f"PCA{w},{{}},SQ6" for w in (72, 88, 96, 104)]
             + [f"PCA{w},{{}},SQ4" for w in (96, 112, 128, 144)]
             + [f"PCAR{2 * m},{{}},PQ{m}x4fs" for m in (64, 96, 128)])
    def width(c: str) -> int:
        return int(c.split(",")[0].lstrip("PCAR"))

    return [c.format(f"IVF{lists}") for lists in (nl // 2, nl, 2 * nl) for c in codes if width(c) <= d]


def build_plain(data: Path, factory: str, d: int, seed: int = 0, train_per_list: int = 64):
    """One factory built with FAISS directly on all rows (seeded random training sample)."""
    from index.factory import describe_factory
    from index.train import train_empty_index

    x = np.concatenate([np.load(f) for f in sorted((data / "npy").glob("*.npy"))])
    choice = describe_factory(factory, len(x), d, train_per_list)
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=choice.train_size, replace=False))
    index = train_empty_index(factory, d, x[rows], "ip", seed)
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    return index, len(x)


def run_hand(data: Path, factories: list[str], budget_bytes: int, max_query_ms: float) -> list[dict]:
    """Each factory: build, serialized size, the best recall within ``max_query_ms`` (one thread)."""
    import faiss

    from index.operating_points import pick, sweep

    queries, truth = np.load(data / "queries.npy"), np.load(data / "truth.npy")
    rows = []
    for f in factories:
        t0 = time.time()
        index, n = build_plain(data, f, queries.shape[1])
        build_s = time.time() - t0
        size = len(faiss.serialize_index(index))
        if size > budget_bytes:
            rows.append({"factory": f, "over_budget": True, "bytes_per_vector": size / n})
            continue
        points = sweep(index, queries, truth, K, max_latency_ms=max_query_ms, latency_queries=200)
        best = pick(points, max_latency_ms=max_query_ms)
        rows.append({"factory": f, "nprobe": best.nprobe, "recall@10": best.recall, "p50_ms_1t": best.p50_ms,
                     "bytes_per_vector": size / n, "build_s": build_s})
        print(f"hand-picked {f}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
        del index
    return rows


def run_hand_final(data: Path, factory: str, nprobe: int | None) -> dict:
    import faiss

    from index.operating_points import set_nprobe

    queries, truth = np.load(data / "queries.npy"), np.load(data / "truth.npy")
    t0 = time.time()
    index, n = build_plain(data, factory, queries.shape[1])
    build_s, cpu_s = time.time() - t0, cpu_seconds()
    if nprobe:
        set_nprobe(index, nprobe)
    return {"builder": "hand-picked", "factory": factory, "nprobe": nprobe, "build_s": build_s, "cpu_s": cpu_s,
            "peak_mb": peak_rss_mb(), "bytes_per_vector": len(faiss.serialize_index(index)) / n,
            "recall@10": recall(index.search(queries, K)[1], truth), **latencies(index, queries)}


AUTOFAISS_CHILD = r"""
import json, resource, sys, time, os
import numpy as np, faiss
# autofaiss 2.18 calls faiss.OPQMatrix(d, M=..., d2=...): faiss >= 1.8 no longer takes keywords there
_OPQMatrix = faiss.OPQMatrix
faiss.OPQMatrix = lambda d=0, M=1, d2=-1: _OPQMatrix(d, M, d2)
from autofaiss import build_index
data, work, max_memory = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.time()
index, infos = build_index(embeddings=os.path.join(data, "npy"), index_path=os.path.join(work, "knn.index"),
                           index_infos_path=os.path.join(work, "infos.json"), max_index_memory_usage=max_memory,
                           current_memory_available="8G", metric_type="ip", nb_cores=os.cpu_count(),
                           verbose=30)
build_s = time.time() - t0
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu_s = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
queries, truth = np.load(os.path.join(data, "queries.npy")), np.load(os.path.join(data, "truth.npy"))
D, I = index.search(queries, 10)
rec = float(np.mean([len(np.intersect1d(f[f >= 0], t)) / 10 for f, t in zip(I, truth)]))
out = {}
for threads in (1, 2):
    faiss.omp_set_num_threads(threads)
    for q in queries[:10]:
        index.search(q[None, :], 10)
    times = []
    for q in queries[:LATENCY_QUERIES]:
        t = time.perf_counter(); index.search(q[None, :], 10); times.append(time.perf_counter() - t)
    out[f"p50_ms_{threads}t"] = float(np.percentile(times, 50) * 1e3)
    out[f"p99_ms_{threads}t"] = float(np.percentile(times, 99) * 1e3)
size = os.path.getsize(os.path.join(work, "knn.index"))
print(json.dumps({"builder": "autofaiss", "factory": infos.get("index_key"), "nprobe": infos.get("index_param"),
                  "build_s": build_s, "cpu_s": cpu_s, "peak_mb": peak, "bytes_per_vector": size / index.ntotal,
                  "recall@10": rec,
                  **out}))
""".replace("LATENCY_QUERIES", str(LATENCY_QUERIES))


def autofaiss_python(arg: str | None) -> str:
    if arg:
        return arg
    try:
        import autofaiss  # noqa: F401

        return sys.executable
    except ImportError:
        return "/tmp/af-venv/bin/python"


def child(args: argparse.Namespace, what: str, *extra: str) -> dict | list:
    cmd = [sys.executable, "-m", "bench.index", "--child", what, "--workdir", args.workdir, "--max-memory",
           args.budget, "--max-query-ms", str(args.max_query_ms), "--target-recall", str(args.target_recall),
           *extra]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["synthetic", "minilm"], default="synthetic")
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--quick", action="store_true", help="50k rows (development size)")
    ap.add_argument("--dim", type=int, default=768, help="synthetic only (MiniLM is 384-d)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-memory", default="100B/vector",
                    help="index memory budget for every builder: a size (256M) or bytes per vector (100B/vector)")
    ap.add_argument("--max-query-ms", type=float, default=2.0,
                    help="batch-1 latency target of ours and of the hand-picked sweep")
    ap.add_argument("--target-recall", type=float, default=1.0,
                    help="ours: stop raising nprobe at this recall (1.0: the best recall within --max-query-ms)")
    ap.add_argument("--workdir", default=None, help="keep data and indexes here (default: a temp dir, removed)")
    ap.add_argument("--cache", default="/tmp/bench-minilm", help="MiniLM corpus and embedding cache")
    ap.add_argument("--corpus", choices=["stdlib", "machine"], default="stdlib",
                    help="MiniLM sentences: stdlib docstrings (~24k) or all docstrings and docs here (~400k); "
                         "one cache directory per corpus")
    ap.add_argument("--hand-factories", default=None, metavar="F1;F2;...",
                    help="hand-picked factories to sweep instead of the built-in sweep (large runs)")
    ap.add_argument("--autofaiss-python", default=None)
    ap.add_argument("--skip-autofaiss", action="store_true")
    ap.add_argument("--skip-hand", action="store_true")
    ap.add_argument("--autofaiss-timeout", type=float, default=3600, help="seconds before autofaiss is killed")
    ap.add_argument("--reuse", action="append", default=[], metavar="ROW.json",
                    help="a builder's row (JSON, as printed) from an earlier run on the same data and budget, "
                         "used instead of building it again (autofaiss takes the longest); its builder is "
                         "skipped and the table marks it with *. Repeatable")
    ap.add_argument("--child", choices=["ours", "ours-at", "hand", "hand-final"], help=argparse.SUPPRESS)
    ap.add_argument("--factories", help=argparse.SUPPRESS)
    ap.add_argument("--nprobe", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--serve-ms", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        work = Path(args.workdir)
        data = work / "data"
        if args.child == "ours":
            print(json.dumps(run_ours(data, work, args.max_memory, args.max_query_ms, args.target_recall)))
        elif args.child == "ours-at":
            print(json.dumps(run_ours_at(data, work, args.serve_ms)))
        elif args.child == "hand":
            from index.factory import parse_memory

            print(json.dumps(run_hand(data, args.factories.split(";"), parse_memory(args.max_memory),
                                      args.max_query_ms)))
        else:
            print(json.dumps(run_hand_final(data, args.factories, args.nprobe)))
        return

    if args.quick:
        args.n = min(args.n, 50_000)
    budget = args.max_memory
    if budget.lower().endswith("b/vector"):
        budget = f"{int(float(budget[:-8]) * args.n) // 1024}K"
    args.budget = budget
    own_workdir = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-index-"))
    args.workdir = str(work)
    data = work / "data"
    try:
        t0 = time.time()
        if not (data / "truth.npy").exists():
            shutil.rmtree(data, ignore_errors=True)
            if args.dataset == "synthetic":
                what = synthetic(data, args.n, args.dim, args.queries, args.seed)
            else:
                what = minilm(data, args.n, args.queries, args.seed, Path(args.cache), args.corpus)
            (work / "dataset.txt").write_text(what)
        what = (work / "dataset.txt").read_text()
        d = int(np.load(data / "queries.npy").shape[1])
        print(f"data: {what}; {args.queries} held-out queries; ready in {time.time() - t0:.0f}s; budget {budget}; "
              f"latency target {args.max_query_ms} ms; {os.cpu_count()} CPU cores", flush=True)
        configs = args.hand_factories.split(";") if args.hand_factories else hand_configs(args.n, d)
        if not args.skip_hand:
            refuse_unbuildable(configs, d)  # before the builds: a typo must not cost the run
        rows = []
        shutil.rmtree(work / "ours", ignore_errors=True)
        rows.append(child(args, "ours"))
        print("ours:", json.dumps(rows[-1]), flush=True)
        reused = [json.loads(Path(f).read_text()) for f in args.reuse]
        for r, f in zip(reused, args.reuse, strict=True):
            rows.append({**r, "builder": r["builder"].rstrip("*") + "*"})
            print(f"{rows[-1]['builder']} (reused from {f}):", json.dumps(rows[-1]), flush=True)
        if not args.skip_autofaiss and not any(r["builder"] == "autofaiss" for r in reused):
            rows.append(run_autofaiss(args, data, work, budget))
            print("autofaiss:", json.dumps(rows[-1]), flush=True)
        af = next((r for r in rows if r["builder"].startswith("autofaiss") and r.get("p50_ms_1t")), None)
        if af and rows[0]["p50_ms_1t"] > af["p50_ms_1t"]:
            # the same index at the point of its curve within autofaiss's latency (what a server would pick)
            at = child(args, "ours-at", "--serve-ms", str(af["p50_ms_1t"]))
            rows.append({**rows[0], **at, "builder": "ours @af p50"})
            print("ours at autofaiss's p50:", json.dumps(rows[-1]), flush=True)
        sweep_rows: list[dict] = []
        if not args.skip_hand and not any(r["builder"] == "hand-picked" for r in reused):
            sweep_rows = child(args, "hand", "--factories", ";".join(configs))
            fit = [r for r in sweep_rows if not r.get("over_budget")]
            if fit:
                best = max(fit, key=lambda r: (r["recall@10"], -r["p50_ms_1t"]))
                rows.append(child(args, "hand-final", "--factories", best["factory"], "--nprobe",
                                  str(best["nprobe"] or 0)))
                print("hand-picked:", json.dumps(rows[-1]), flush=True)
        report(rows, sweep_rows, args, what)
    finally:
        if own_workdir:
            shutil.rmtree(work, ignore_errors=True)


def refuse_unbuildable(factories: list[str], d: int) -> None:
    import faiss

    bad = []
    for f in factories:
        try:
            faiss.index_factory(d, f)
        except RuntimeError as e:
            bad.append(f"  {f}: {str(e).strip().splitlines()[-1]}")
    if bad:
        raise SystemExit(f"--hand-factories: faiss cannot build these for dim {d}:\n" + "\n".join(bad))


def run_autofaiss(args: argparse.Namespace, data: Path, work: Path, budget: str) -> dict:
    af = work / "autofaiss"
    shutil.rmtree(af, ignore_errors=True)
    af.mkdir()
    t0 = time.time()
    try:
        out = subprocess.run([autofaiss_python(args.autofaiss_python), "-c", AUTOFAISS_CHILD, str(data), str(af),
                              budget], check=True, stdout=subprocess.PIPE, text=True, timeout=args.autofaiss_timeout)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        print(f"autofaiss did not finish within {args.autofaiss_timeout}s (killed)", flush=True)
        return {"builder": "autofaiss", "factory": "(timed out)", "nprobe": None, "build_s": time.time() - t0,
                "timed_out": True}


COLS = [("bytes_per_vector", "B/vec", "{:.1f}"), ("recall@10", "recall@10", "{:.4f}"),
        ("p50_ms_1t", "p50 1t", "{:.3f}"), ("p99_ms_1t", "p99 1t", "{:.3f}"), ("p50_ms_2t", "p50 2t", "{:.3f}"),
        ("p99_ms_2t", "p99 2t", "{:.3f}"), ("build_s", "build s", "{:.1f}"), ("cpu_s", "CPU s", "{:.1f}"),
        ("peak_mb", "peak MB", "{:.0f}")]


def report(rows: list[dict], sweep_rows: list[dict], args: argparse.Namespace, what: str) -> None:
    print(f"\n{what}; budget {args.budget}; latency target {args.max_query_ms} ms")
    if sweep_rows:
        print("hand-picked sweep (best recall within the latency target, one thread):")
        for r in sweep_rows:
            print(f"  {r['factory']:<34} " + ("over budget" if r.get("over_budget") else
                  f"nprobe {r['nprobe']!s:<5} recall@10 {r['recall@10']:.4f} p50 {r['p50_ms_1t']:.3f} ms")
                  + f"  {r['bytes_per_vector']:.1f} B/vec")
    print(f"\n{'builder':<13} {'factory':<36} {'nprobe':<20}" + "".join(f"{h:>10}" for _, h, _ in COLS))
    for r in rows:
        print(f"{r['builder']:<13} {r['factory']!s:<36} {r.get('nprobe')!s:<20}"
              + "".join(f"{f.format(r[k]) if k in r else '-':>10}" for k, _, f in COLS))
    ours = rows[0]
    if any(r["builder"].endswith("*") for r in rows):
        print("*: figures reused from an earlier run of the same builder on the same data and budget (--reuse)")
    for mine in (r for r in rows if r["builder"].startswith("ours")):
        for other in rows:
            if other.get("timed_out") or other["builder"].startswith("ours"):
                continue
            print(f"{mine['builder'] + ' / ' + other['builder']:<70}" + "".join(
                f"{mine[k] / other[k]:>10.2f}" if other.get(k) and k in mine else f"{'-':>10}" for k, _, _ in COLS))
    if ours.get("chooser_s") is not None:
        print(f"\nour auto choice cost {ours['chooser_s']:.0f}s = {ours['chooser_fraction']:.2f} of our build")
    print("our factory reasoning:\n  " + "\n  ".join(ours["reasoning"]))
    print(json.dumps({"rows": rows, "sweep": sweep_rows}))


if __name__ == "__main__":
    main()
