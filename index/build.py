"""``build_index``: embeddings Parquet -> a published, self-checked, sharded FAISS index version.

    scan footers (rows, dim, one model fingerprint)      driver, cheap
    choose factory (auto: reasons printed + recorded)     driver
    seeded random sample -> train ONE empty index         driver  -> versions/<v>/trained.index
    Beam stage 1, per work unit (a run of row groups):    encode rows into per-shard partial indexes + id-map parts,
                                                          and exact top-k of the held-out queries (ground truth)
    Beam stage 2, per shard (GroupByKey):                 merge the unit partials in unit order into a clone of the
                                                          trained index, check ids, write shard + id map
    self-check (driver): tune nprobe (if not given) and record recall@k vs exact on the held-out queries
    manifest.json written last in the version; then (unless publish=False) CURRENT -> version; retention.

Shard ``s`` holds the rows with ``faiss_id % n_shards == s``; every shard starts from the same trained index, so
shards can be searched together (results merged) or merged into one index. Merging partials in unit order makes a
rebuild from the same inputs byte-identical.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index import layout, storage
from index.errors import DuplicateImageIdError, IdCollisionError, IndexIntegrityError, RecallBelowFloorError
from index.factory import DEFAULT_MAX_MEMORY, FactoryChoice, choose_factory, describe_factory, fmt_bytes
from index.ids import check_unique, faiss_ids, shards_of_ids
from index.source import EmbeddingSource, WorkUnit, iter_unit_batches, read_rows, vectors
from index.train import draw_rows, sample_vectors, train_empty_index

log = logging.getLogger(__name__)

FORMAT = "ldot-index/1"
STAGING = "_staging"
SELFCHECK_K = 10
IDMAP_SCHEMA = pa.schema([("faiss_id", pa.int64()), ("image_id", pa.string()), ("uri", pa.string())])


@dataclasses.dataclass
class BuildResult:
    version: str
    path: str                       # versions/<version> URL
    manifest: dict[str, Any]
    published: bool

    @property
    def recall(self) -> float | None:
        return self.manifest.get("selfcheck", {}).get("recall_at_k")


def shard_name(s: int, n: int) -> str:
    return f"shard-{s:05d}-of-{n:05d}"


# ---- Beam stage 1: per work unit ----------------------------------------------------------------------------------

def _load_index(url: str, io_flags: int = 0):
    return storage.index_from_bytes(storage.read_bytes(url), io_flags)


def encode_unit(unit: WorkUnit, trained, staging: str, n_shards: int, dim: int) -> list[tuple[int, tuple[int, int]]]:
    """Encode one unit's rows into one partial index (clone of ``trained``) per shard; write them and their id-map
    parts under ``staging``. Returns [(shard, (unit index, rows))]."""
    import faiss

    partial = {}
    idmap: dict[int, list[pa.Table]] = {}
    where = f"{unit.url} row groups {unit.row_groups[0]}..{unit.row_groups[-1]}"
    for batch in iter_unit_batches(unit, ["image_id", "uri", "embedding"]):
        table = pa.Table.from_batches([batch])
        image_ids = table.column("image_id")
        if image_ids.null_count:
            raise ValueError(f"{where}: {image_ids.null_count} row(s) without image_id")
        image_ids_py = image_ids.to_pylist()
        ids = faiss_ids(image_ids_py)
        shards = shards_of_ids(ids, n_shards)
        x = vectors(table.column("embedding"), dim, where)
        uris = table.column("uri").cast(pa.string())
        for s in np.unique(shards):
            sel = np.nonzero(shards == s)[0]
            if int(s) not in partial:
                partial[int(s)] = faiss.clone_index(trained)
                idmap[int(s)] = []
            partial[int(s)].add_with_ids(np.ascontiguousarray(x[sel]), ids[sel])
            idx = pa.array(sel)
            idmap[int(s)].append(pa.table({"faiss_id": pa.array(ids[sel], pa.int64()),
                                           "image_id": image_ids.take(idx).cast(pa.string()),
                                           "uri": uris.take(idx)}, schema=IDMAP_SCHEMA))
    out = []
    for s, index in sorted(partial.items()):
        base = storage.join(staging, "parts", f"u{unit.index:07d}-s{s:05d}")
        storage.write_index(index, base + ".index")
        buf = io.BytesIO()
        pq.write_table(pa.concat_tables(idmap[s]), buf)
        storage.write_bytes(base + ".parquet", buf.getvalue())
        out.append((s, (unit.index, int(index.ntotal))))
    return out


def exact_topk_unit(unit: WorkUnit, queries: np.ndarray, k: int, dim: int, block: int = 16_384):
    """Exact inner-product top-k of ``queries`` against one unit's rows: (scores [Q,k], faiss ids [Q,k])."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for batch in iter_unit_batches(unit, ["image_id", "embedding"], batch_size=block):
        x = vectors(batch.column(1), dim, unit.url)
        ids = faiss_ids(batch.column(0).to_pylist())
        best_s, best_i = merge_topk([(best_s, best_i), (queries @ x.T, np.broadcast_to(ids, (len(queries), len(ids))))],
                                    k)
    return best_s, best_i


def merge_topk(parts: Iterable[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge candidate (scores, ids) blocks row-wise into the k best by score (ties: smaller id first)."""
    parts = list(parts)
    s = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    if s.shape[1] > k:
        keep = np.argpartition(-s, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(s, keep, axis=1)
        i = np.take_along_axis(i, keep, axis=1)
    order = np.lexsort((i, -s), axis=1)
    s = np.take_along_axis(s, order, axis=1)[:, :k]
    i = np.take_along_axis(i, order, axis=1)[:, :k]
    if s.shape[1] < k:
        pad = k - s.shape[1]
        s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return np.ascontiguousarray(s, np.float32), np.ascontiguousarray(i, np.int64)


# ---- Beam stage 2: per shard ----------------------------------------------------------------------------------------

def merge_shard(shard: int, units: Iterable[tuple[int, int]], trained, staging: str, vdir: str,
                n_shards: int) -> dict[str, Any]:
    """Merge the unit partials of one shard (in unit order) into a clone of the trained index; check ids; write the
    shard and its id map. Returns the shard's manifest entry, or {"shard", "error": {...}} on an id problem."""
    import faiss

    index = faiss.clone_index(trained)
    tables = []
    for unit_index, rows in sorted(u for u in units if u[0] >= 0):
        base = storage.join(staging, "parts", f"u{unit_index:07d}-s{shard:05d}")
        part = _load_index(base + ".index")
        if part.ntotal != rows:
            raise IndexIntegrityError(f"{base}.index holds {part.ntotal} vectors, expected {rows}")
        index.merge_from(part, 0)
        tables.append(pq.read_table(io.BytesIO(storage.read_bytes(base + ".parquet"))))
    idmap = pa.concat_tables(tables) if tables else IDMAP_SCHEMA.empty_table()
    try:
        check_unique(idmap.column("faiss_id").to_numpy(), idmap.column("image_id").to_pylist())
    except (IdCollisionError, DuplicateImageIdError) as e:
        return {"shard": shard, "error": {"type": type(e).__name__, "message": str(e)}}
    idmap = idmap.sort_by("faiss_id")
    name = shard_name(shard, n_shards)
    shard_path = f"shards/{name}.index"
    idmap_path = f"idmap/{name}.parquet"
    sha, nbytes = storage.write_index(index, storage.join(vdir, shard_path))
    buf = io.BytesIO()
    pq.write_table(idmap, buf)
    data = buf.getvalue()
    storage.write_bytes(storage.join(vdir, idmap_path), data)
    return {"shard": shard, "path": shard_path, "sha256": sha, "bytes": nbytes, "count": int(index.ntotal),
            "idmap": {"path": idmap_path, "sha256": storage.sha256_bytes(data), "bytes": len(data),
                      "rows": idmap.num_rows}}


def _run_pipeline(units: list[WorkUnit], trained_url: str, staging: str, vdir: str, n_shards: int, dim: int,
                  queries: np.ndarray, k: int, beam_args: Sequence[str] | None) -> None:
    from index.pipeline import run_shard_pipeline

    run_shard_pipeline(units, trained_url, staging, vdir, n_shards, dim, queries, k, beam_args)


# ---- self-check ------------------------------------------------------------------------------------------------

def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean |found[:k] ∩ truth[:k]| / |truth[:k]| over queries (ignoring -1 padding in truth)."""
    total, hits = 0, 0
    for f, t in zip(found[:, :k], truth[:, :k], strict=True):
        t = t[t >= 0]
        total += len(t)
        hits += len(np.intersect1d(f[f >= 0], t))
    return hits / total if total else 1.0


def tune_nprobe(search_at: Callable[[int], np.ndarray], truth: np.ndarray, nlist: int, k: int,
                target: float) -> tuple[int, list[dict[str, float]]]:
    """Smallest power-of-two nprobe whose recall@k reaches ``target`` — or, when quantization caps recall below the
    target, the first nprobe within 0.01 of the plateau (the best seen up to nlist, or where gains stop)."""
    curve: list[dict[str, float]] = []
    nprobe = 1
    while True:
        t0 = time.perf_counter()
        r = recall_at_k(search_at(nprobe), truth, k)
        curve.append({"nprobe": nprobe, "recall": r, "seconds": time.perf_counter() - t0})
        if r >= target or nprobe >= nlist:
            break
        if len(curve) >= 3 and curve[-1]["recall"] - curve[-3]["recall"] < 0.005:
            break  # plateau: quantization, not probing, limits recall
        nprobe = min(nprobe * 2, nlist)
    best = max(c["recall"] for c in curve)
    goal = min(target, best - 0.01)
    chosen = next(c for c in curve if c["recall"] >= goal)
    return int(chosen["nprobe"]), curve


# ---- driver ---------------------------------------------------------------------------------------------------------

def build_index(inputs: Sequence[str] | str, output: str, *, shards: int | None = None, factory: str = "auto",
                max_memory: int | str | None = DEFAULT_MAX_MEMORY, nprobe: int | None = None,
                keep_versions: int | None = 3, seed: int = 0, n_queries: int = 1000, train_per_list: int = 64,
                target_recall: float = 0.95, min_recall: float | None = None, publish: bool = True,
                beam_args: Sequence[str] | None = None, rows_per_unit: int = 100_000, metric: str = "ip",
                version: str | None = None, echo: Callable[[str], None] | None = None) -> BuildResult:
    """Build a new version of the index at ``output`` from embedding Parquet ``inputs``.

    ``publish=False`` builds and self-checks a complete version without touching ``CURRENT`` (publish it later with
    ``index.layout.publish(output, result.version)``). With ``min_recall``, a version whose recall@10 self-check is
    below the floor is left unpublished and ``RecallBelowFloorError`` is raised (it carries the version and manifest).
    """
    say = echo or (lambda msg: log.info("%s", msg))
    t_start = time.time()
    timings: dict[str, float] = {}
    if isinstance(inputs, str):
        inputs = [inputs]

    t0 = time.time()
    source = EmbeddingSource.open(inputs)
    n, d = source.rows, source.dim
    timings["scan"] = time.time() - t0
    say(f"{len(source.files)} embedding file(s), {n:,} rows, dim {d}, model {source.model}")

    choice: FactoryChoice = (choose_factory(n, d, max_memory, train_per_list=train_per_list)
                             if factory in (None, "", "auto") else describe_factory(factory, n, d, train_per_list))
    if shards is None:
        shards = max(1, math.ceil(n / 1_000_000))
        choice.reasoning.append(f"{shards} shard(s): one per started million vectors (override with --shards)")
    else:
        choice.reasoning.append(f"{shards} shard(s) as requested")
    for line in choice.reasoning:
        say(f"  {line}")
    say(f"factory: {choice.factory}")

    version = version or layout.new_version_name()
    vdir = layout.version_dir(output, version)
    staging = storage.join(vdir, STAGING)

    t0 = time.time()
    train_rows, query_rows = draw_rows(n, choice.train_size, n_queries, seed)
    sample = sample_vectors(source, train_rows)
    q = read_rows(source, query_rows, ("embedding", "image_id")) if len(query_rows) else None
    queries = q["embedding"] if q else np.zeros((0, d), np.float32)
    timings["sample"] = time.time() - t0
    t0 = time.time()
    trained = train_empty_index(choice.factory, d, sample, metric, seed)
    del sample
    trained_url = storage.join(vdir, "trained.index")
    trained_sha, trained_bytes = storage.write_index(trained, trained_url)
    timings["train"] = time.time() - t0
    say(f"trained on {len(train_rows):,} sampled rows in {timings['train']:.1f}s -> {version}")

    t0 = time.time()
    units = source.work_units(rows_per_unit)
    _run_pipeline(units, trained_url, staging, vdir, shards, d, queries, SELFCHECK_K, beam_args)
    infos = [json.loads(storage.read_text(storage.join(staging, "info", f"{s:05d}.json"))) for s in range(shards)]
    timings["shards"] = time.time() - t0
    errors = [i for i in infos if "error" in i]
    if errors:
        err = errors[0]["error"]
        storage.rm(vdir)
        exc = {"IdCollisionError": IdCollisionError, "DuplicateImageIdError": DuplicateImageIdError}[err["type"]]
        raise exc(err["message"])
    total = sum(i["count"] for i in infos)
    if total != n:
        raise IndexIntegrityError(f"shards hold {total} vectors but the inputs have {n} rows")
    say(f"built {shards} shard(s) from {len(units)} work unit(s) in {timings['shards']:.1f}s")

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": version,
        "created": dt.datetime.now(dt.UTC).isoformat(),
        "factory": choice.factory,
        "factory_choice": choice.to_dict(),
        "dim": d,
        "metric": "inner_product" if metric == "ip" else metric,
        "nprobe": None,
        "count": n,
        "n_shards": shards,
        "ids": {"hash": "blake2b(image_id utf-8, digest 8 bytes, person 'ldot-faiss-id') & (2**63-1)",
                "shard": "faiss_id % n_shards"},
        "model": source.model,
        "sources": source.describe(),
        "seed": seed,
        "train_size": len(train_rows),
        "trained": {"path": "trained.index", "sha256": trained_sha, "bytes": trained_bytes},
        "shards": sorted(infos, key=lambda i: i["shard"]),
    }
    index_bytes = sum(i["bytes"] for i in infos)
    manifest["index_bytes"] = index_bytes
    manifest["bytes_per_vector"] = index_bytes / max(n, 1)
    manifest["code_bytes_per_vector"] = choice.bytes_per_vector

    t0 = time.time()
    manifest["nprobe"], manifest["selfcheck"] = _selfcheck(output, manifest, staging, queries, q, choice, nprobe,
                                                           target_recall, min_recall, vdir)
    timings["selfcheck"] = time.time() - t0
    sc = manifest["selfcheck"]
    say(f"self-check: recall@{SELFCHECK_K} = {sc['recall_at_k']:.4f} vs exact on {sc['queries']} held-out "
        f"queries at nprobe={manifest['nprobe']}")
    storage.rm(staging)
    timings["total"] = time.time() - t_start
    manifest["build_seconds"] = timings["total"]
    manifest["timings"] = timings
    manifest["software"] = _versions()
    manifest["beam_args"] = list(beam_args or [])
    layout.write_manifest(output, version, manifest)  # last file of the version: it is now complete
    say(f"wrote {vdir} ({fmt_bytes(index_bytes)}, {manifest['bytes_per_vector']:.1f} B/vector) "
        f"in {timings['total']:.1f}s")

    if not sc["passed"]:
        raise RecallBelowFloorError(
            f"recall@{SELFCHECK_K} self-check {sc['recall_at_k']:.4f} is below the floor {min_recall}: version "
            f"{version} was built but NOT published; {layout.read_current(output) or 'nothing'} stays live",
            version=version, manifest=manifest)
    if publish:
        layout.publish(output, version, keep_versions=keep_versions)
        say(f"published {version} -> {storage.join(output, layout.CURRENT)}")
    return BuildResult(version=version, path=vdir, manifest=manifest, published=publish)


def _selfcheck(root: str, manifest: dict[str, Any], staging: str, queries: np.ndarray, q: dict | None,
               choice: FactoryChoice, nprobe: int | None, target: float, floor: float | None,
               vdir: str) -> tuple[int | None, dict[str, Any]]:
    from index.search import SearchIndex

    k = SELFCHECK_K
    out: dict[str, Any] = {"k": k, "queries": len(queries), "target_recall": target, "min_recall": floor}
    idx = SearchIndex.from_manifest(root, manifest)  # loads + verifies exactly what was written
    nlist = idx.nlist
    if not len(queries):
        out.update(recall_at_k=1.0, passed=True, note="no held-out queries")
        return nprobe, out
    gt = np.load(io.BytesIO(storage.read_bytes(storage.join(staging, "groundtruth.npz"))))
    truth = gt["ids"]

    def search_at(p: int) -> np.ndarray:
        idx.nprobe = p
        return idx.search(queries, k).ids

    if nlist and nprobe is None:
        nprobe, curve = tune_nprobe(search_at, truth, nlist, k, target)
        out["nprobe_curve"] = curve
        out["nprobe_rule"] = (f"smallest power of two reaching recall@{k} >= {target}, or within 0.01 of the "
                              "plateau when quantization caps recall")
    if nlist:
        nprobe = min(int(nprobe), nlist)
        idx.nprobe = nprobe
    t0 = time.perf_counter()
    found = idx.search(queries, k).ids
    out["search_seconds"] = time.perf_counter() - t0
    recall = recall_at_k(found, truth, k)
    out["recall_at_k"] = recall
    out["passed"] = floor is None or recall >= floor
    table = pa.table({"image_id": pa.array(q["image_id"], pa.string()),
                      "truth": pa.array(list(truth), pa.list_(pa.int64())),
                      "found": pa.array(list(found), pa.list_(pa.int64()))})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    storage.write_bytes(storage.join(vdir, "selfcheck.parquet"), data)
    out.update(path="selfcheck.parquet", sha256=storage.sha256_bytes(data), bytes=len(data))
    return (nprobe if nlist else None), out


def _versions() -> dict[str, str]:
    import faiss

    out = {"faiss": faiss.__version__, "numpy": np.__version__, "pyarrow": pa.__version__}
    try:
        import apache_beam

        out["apache_beam"] = apache_beam.__version__
    except ImportError:  # pragma: no cover
        pass
    return out
