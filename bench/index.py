"""Index build benchmark: ``pipeline.build_index_job.build_index`` vs autofaiss: same data and memory budget, one run.

    python -m bench.index --n 1000000 --dim 768 --max-memory 100B/vector   (or an absolute size like 256M)

Data: seeded clustered vectors with a low intrinsic dimension (like real embeddings: clusters in a 64-d subspace
projected to ``dim``, plus noise), written once as Parquet parts (our contract) and as .npy parts (autofaiss's
input); held-out queries come from the same distribution and are NOT in the index. Exact ground truth (inner
product top-10) is computed while the data is generated.

Each builder runs in its own process (so peak RSS is its own): build seconds, peak memory, bytes/vector (index
bytes on disk / N), recall@10 vs exact on the held-out queries, and batch-1 query latency p50/p99 at the nprobe the
builder chose. autofaiss runs from ``--autofaiss-python`` (default: this interpreter if it imports autofaiss, else
/tmp/af-venv/bin/python — autofaiss pins numpy<2, which Beam's environment does not allow).
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


def generate(out: Path, n: int, d: int, n_queries: int, seed: int, chunk: int = 100_000) -> None:
    """Write Parquet + npy parts and queries/ground truth, chunk by chunk (never the whole set in memory)."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    latent = 64
    proj = (rng.standard_normal((latent, d)) / np.sqrt(latent)).astype(np.float32)
    centers = (3 * rng.standard_normal((1000, latent))).astype(np.float32)

    def draw(m: int, r: np.random.Generator) -> np.ndarray:
        z = centers[r.integers(0, len(centers), m)] + r.standard_normal((m, latent)).astype(np.float32)
        return (z @ proj + 0.1 * r.standard_normal((m, d)).astype(np.float32)).astype(np.float32)

    queries = draw(n_queries, np.random.default_rng(seed + 1))
    (out / "parquet").mkdir(parents=True)
    (out / "npy").mkdir()
    best = faiss.ResultHeap(n_queries, K, keep_max=True)  # exact inner-product top-K, chunk by chunk
    for part, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        x = draw(m, np.random.default_rng([seed, part]))
        scores, rows = faiss.knn(queries, x, K, faiss.METRIC_INNER_PRODUCT)
        best.add_result(scores, rows + start)
        ids = [f"img-{i:09d}" for i in range(start, start + m)]
        table = pa.table({
            "image_id": ids, "uri": [f"bench://{i}" for i in ids], "content_sha256": [""] * m,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d),
            "num_boxes": pa.array(np.full(m, 36, np.int32)), "width": pa.array(np.full(m, 640, np.int32)),
            "height": pa.array(np.full(m, 480, np.int32)), "model": ["bench-clustered"] * m})
        pq.write_table(table, out / "parquet" / f"part-{part:05d}.parquet", row_group_size=25_000)
        np.save(out / "npy" / f"part-{part:05d}.npy", x)
        del x, table
    best.finalize()
    np.save(out / "queries.npy", queries)
    np.save(out / "truth.npy", best.I)


def latency(search, queries: np.ndarray) -> tuple[float, float]:
    for q in queries[:20]:
        search(q[None, :])
    times = []
    for q in queries:
        t0 = time.perf_counter()
        search(q[None, :])
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / K for f, t in zip(found, truth, strict=True)]))


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(data: Path, work: Path, max_memory: str, shards: int | None) -> dict:
    from index.search import SearchIndex
    from index.settings import BuildSettings
    from pipeline.build_index_job import build_index

    root = str(work / "ours")
    t0 = time.time()
    result = build_index([str(data / "parquet")], root, BuildSettings(max_memory=max_memory, shards=shards),
                         beam_args=["--runner=FnApiRunner"], echo=lambda m: print(m, file=sys.stderr, flush=True))
    build_s = time.time() - t0
    peak = peak_rss_mb()
    idx = SearchIndex.open(root)
    queries, truth = np.load(data / "queries.npy"), np.load(data / "truth.npy")
    res = idx.search(queries, K)
    found = np.array([[int(s[4:]) if s else -1 for s in row] for row in res.image_ids], np.int64)
    p50, p99 = latency(lambda q: idx.search(q, K), queries[:500])
    m = result.manifest
    return {"builder": "ldot build-index", "factory": m["factory"], "nprobe": m["nprobe"], "build_s": build_s,
            "peak_mb": peak, "bytes_per_vector": m["bytes_per_vector"], "recall@10": recall(found, truth),
            "selfcheck_recall@10": m["selfcheck"]["recall_at_k"], "p50_ms": p50, "p99_ms": p99,
            "reasoning": m["factory_choice"]["reasoning"]}


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
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
queries, truth = np.load(os.path.join(data, "queries.npy")), np.load(os.path.join(data, "truth.npy"))
D, I = index.search(queries, 10)
rec = float(np.mean([len(np.intersect1d(f[f >= 0], t)) / 10 for f, t in zip(I, truth)]))
for q in queries[:20]:
    index.search(q[None, :], 10)
times = []
for q in queries[:500]:
    t = time.perf_counter(); index.search(q[None, :], 10); times.append(time.perf_counter() - t)
size = os.path.getsize(os.path.join(work, "knn.index"))
print(json.dumps({"builder": "autofaiss", "factory": infos.get("index_key"), "nprobe": infos.get("index_param"),
                  "build_s": build_s, "peak_mb": peak, "bytes_per_vector": size / index.ntotal, "recall@10": rec,
                  "p50_ms": float(np.percentile(times, 50) * 1e3), "p99_ms": float(np.percentile(times, 99) * 1e3)}))
"""


def autofaiss_python(arg: str | None) -> str:
    if arg:
        return arg
    try:
        import autofaiss  # noqa: F401

        return sys.executable
    except ImportError:
        return "/tmp/af-venv/bin/python"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-memory", default="100B/vector",
                    help="index memory budget for both builders: a size (256M) or bytes per vector (100B/vector)")
    ap.add_argument("--shards", type=int, default=None)
    ap.add_argument("--workdir", default=None, help="keep data and indexes here (default: a temp dir, removed)")
    ap.add_argument("--autofaiss-python", default=None)
    ap.add_argument("--skip-autofaiss", action="store_true")
    ap.add_argument("--autofaiss-timeout", type=float, default=3600, help="seconds before autofaiss is killed")
    ap.add_argument("--child", choices=["ours"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child == "ours":
        work = Path(args.workdir)
        print(json.dumps(run_ours(work / "data", work, args.max_memory, args.shards)))
        return

    budget = args.max_memory
    if budget.lower().endswith("b/vector"):
        budget = f"{int(float(budget[:-8]) * args.n) // 1024}K"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-index-"))
    data = work / "data"
    try:
        t0 = time.time()
        if not (data / "truth.npy").exists():
            shutil.rmtree(data, ignore_errors=True)
            generate(data, args.n, args.dim, args.queries, args.seed)
        print(f"data: {args.n:,} x {args.dim} clustered (seed {args.seed}), {args.queries} held-out queries, "
              f"ready in {time.time() - t0:.0f}s; memory budget {budget}; {os.cpu_count()} CPU cores", flush=True)
        rows = []
        cmd = [sys.executable, "-m", "bench.index", "--child", "ours", "--workdir", str(work), "--max-memory", budget]
        if args.shards:
            cmd += ["--shards", str(args.shards)]
        shutil.rmtree(work / "ours", ignore_errors=True)
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print("ours:", json.dumps(rows[-1]), flush=True)
        if not args.skip_autofaiss:
            af = work / "autofaiss"
            shutil.rmtree(af, ignore_errors=True)
            af.mkdir()
            t0 = time.time()
            try:
                out = subprocess.run([autofaiss_python(args.autofaiss_python), "-c", AUTOFAISS_CHILD, str(data),
                                      str(af), budget], check=True, stdout=subprocess.PIPE, text=True,
                                     timeout=args.autofaiss_timeout)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            except subprocess.TimeoutExpired:
                print(f"autofaiss did not finish within {args.autofaiss_timeout}s (killed)", flush=True)
                rows.append({"builder": "autofaiss", "factory": "(timed out)", "nprobe": None,
                             "build_s": time.time() - t0, "peak_mb": 0, "bytes_per_vector": 0, "recall@10": 0,
                             "p50_ms": 0, "p99_ms": 0, "timed_out": True})
        report(rows, args, budget)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def report(rows: list[dict], args: argparse.Namespace, budget: str) -> None:
    cols = [("build_s", "build s", "{:.1f}"), ("peak_mb", "peak MB", "{:.0f}"),
            ("bytes_per_vector", "B/vector", "{:.1f}"), ("recall@10", "recall@10", "{:.4f}"),
            ("p50_ms", "p50 ms", "{:.3f}"), ("p99_ms", "p99 ms", "{:.3f}")]
    print(f"\n{args.n:,} x {args.dim}, budget {budget}")
    print(f"{'builder':<18} {'factory':<34} {'nprobe':<22}" + "".join(f"{h:>11}" for _, h, _ in cols))
    for r in rows:
        print(f"{r['builder']:<18} {r['factory']!s:<34} {r['nprobe']!s:<22}"
              + "".join(f"{f.format(r[k]):>11}" for k, _, f in cols))
    if len(rows) == 2 and not rows[1].get("timed_out"):
        ours, af = rows
        print(f"{'ratio ours/autofaiss':<76}" + "".join(f"{ours[k] / af[k]:>11.2f}" if af[k] else f"{'-':>11}"
                                                       for k, _, _ in cols))
    if rows and "reasoning" in rows[0]:
        print("\nour factory reasoning:\n  " + "\n  ".join(rows[0]["reasoning"]))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
