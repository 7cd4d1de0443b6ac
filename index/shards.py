"""The FAISS work of a build's parallel stages, as plain functions (``transforms.index_shards`` runs them in Beam).

Shard ``s`` holds the rows with ``faiss_id % n_shards == s``; every shard starts from a clone of the one trained
index, so shards can be searched together or merged into one index. A work unit encodes its rows into one partial
index per shard; a shard merges its units' partials in unit order, so a rebuild from the same inputs gives
byte-identical shards. Partials go through the staging folder of the version being built::

    <version>/_staging/parts/u<unit>-s<shard>.index     one unit's rows of one shard, encoded
    <version>/_staging/parts/u<unit>-s<shard>.parquet   their id-map rows (faiss_id, image_id, uri)
    <version>/_done                                     the pipeline's last step: every shard's manifest entry
                                                        (or its id error) and the counts, once all are written

``_done`` is written by the one step that joins every branch of the build (``transforms.index_shards.Done``), on
a worker; the driver reads it and checks it again (``read_done``), so a run whose workers wrote somewhere the
driver cannot see, or that ended before its last step, is refused instead of published.
"""

from __future__ import annotations

import io
import json
import os
import socket
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index import storage
from index.errors import DuplicateImageIdError, IdCollisionError, IndexIntegrityError
from index.ids import check_unique, faiss_ids, shards_of_ids
from index.source import WorkUnit, iter_unit_batches, vectors

STAGING = "_staging"
DONE = "_done"
IDMAP_SCHEMA = pa.schema([("faiss_id", pa.int64()), ("image_id", pa.string()), ("uri", pa.string())])
_ID_ERRORS = {cls.__name__: cls for cls in (IdCollisionError, DuplicateImageIdError)}


def shard_name(s: int, n: int) -> str:
    return f"shard-{s:05d}-of-{n:05d}"


def staging_dir(vdir: str) -> str:
    return storage.join(vdir, STAGING)


def part_base(staging: str, unit: int, shard: int) -> str:
    return storage.join(staging, "parts", f"u{unit:07d}-s{shard:05d}")


def done_url(vdir: str) -> str:
    return storage.join(vdir, DONE)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def encode_unit(unit: WorkUnit, trained: Any, staging: str, n_shards: int,
                dim: int) -> list[tuple[int, tuple[int, int]]]:
    """Encode one unit's rows into one partial index (clone of ``trained``) per shard; write them and their id-map
    parts under ``staging``. Returns [(shard, (unit index, rows))]: only these small records cross the shuffle."""
    import faiss

    partial: dict[int, Any] = {}
    idmap: dict[int, list[pa.Table]] = {}
    where = f"{unit.url} row groups {unit.row_groups[0]}..{unit.row_groups[-1]}"
    for batch in iter_unit_batches(unit, ["image_id", "uri", "embedding"]):
        table = pa.Table.from_batches([batch])
        image_ids = table.column("image_id")
        if image_ids.null_count:
            raise ValueError(f"{where}: {image_ids.null_count} row(s) without image_id")
        ids = faiss_ids(image_ids.to_pylist())
        shards = shards_of_ids(ids, n_shards)
        x = vectors(table.column("embedding"), dim, where)
        uris = table.column("uri").cast(pa.string())
        for s in map(int, np.unique(shards)):
            sel = np.nonzero(shards == s)[0]
            if s not in partial:
                partial[s] = faiss.clone_index(trained)
                idmap[s] = []
            partial[s].add_with_ids(np.ascontiguousarray(x[sel]), ids[sel])
            take = pa.array(sel)
            idmap[s].append(pa.table({"faiss_id": pa.array(ids[sel], pa.int64()),
                                      "image_id": image_ids.take(take).cast(pa.string()),
                                      "uri": uris.take(take)}, schema=IDMAP_SCHEMA))
    out = []
    for s, index in sorted(partial.items()):
        base = part_base(staging, unit.index, s)
        storage.write_index(index, base + ".index")
        storage.write_bytes(base + ".parquet", _parquet_bytes(pa.concat_tables(idmap[s])))
        out.append((s, (unit.index, int(index.ntotal))))
    return out


def merge_shard(shard: int, units: Iterable[tuple[int, int]], trained: Any, staging: str, vdir: str,
                n_shards: int) -> dict[str, Any]:
    """Merge the unit partials of one shard (in unit order) into a clone of the trained index; check ids; write the
    shard and its id map. Returns the shard's manifest entry, or {"shard", "error": {...}} on an id problem (the
    driver raises it, so the error reaches the user the same way on every runner). Units with index < 0 are the
    markers that make every shard appear, even an empty one."""
    import faiss

    index = faiss.clone_index(trained)
    tables = []
    for unit_index, rows in sorted(u for u in units if u[0] >= 0):
        base = part_base(staging, unit_index, shard)
        part = storage.read_index(base + ".index")
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
    shard_path, idmap_path = f"shards/{name}.index", f"idmap/{name}.parquet"
    sha, nbytes = storage.write_index(index, storage.join(vdir, shard_path))
    data = _parquet_bytes(idmap)
    storage.write_bytes(storage.join(vdir, idmap_path), data)
    return {"shard": shard, "path": shard_path, "sha256": sha, "bytes": nbytes, "count": int(index.ntotal),
            "idmap": {"path": idmap_path, "sha256": storage.sha256_bytes(data), "bytes": len(data),
                      "rows": idmap.num_rows}}


def done_marker(entries: Iterable[dict[str, Any]], groundtruth: Iterable[str], n_shards: int) -> dict[str, Any]:
    """The ``_done`` record of a build: every shard's manifest entry (or id error), in shard order, and its counts.
    ``written_by`` (host:pid) says which process ran the last step."""
    shards = sorted(entries, key=lambda e: e["shard"])
    return {"n_shards": n_shards, "shards": shards,
            "vectors": sum(e.get("count", 0) for e in shards), "groundtruth": sorted(groundtruth),
            "written_by": f"{socket.gethostname()}:{os.getpid()}"}


def check_done(marker: dict[str, Any], n_shards: int, rows: int, groundtruth: bool, where: str) -> None:
    """Raise IndexIntegrityError unless ``marker`` holds shards 0..n_shards-1 once each, ``rows`` vectors in all
    (unless a shard reports an id error, which the driver raises), and the ground truth when there are queries."""
    ids = [e["shard"] for e in marker["shards"]]
    problems = []
    if marker["n_shards"] != n_shards or ids != list(range(n_shards)):
        missing = sorted(set(range(n_shards)) - set(ids))
        extra = sorted({s for s in ids if ids.count(s) > 1 or not 0 <= s < n_shards})
        problems.append(f"{len(ids)} shard entries for {n_shards} shard(s) (missing {missing}, repeated or unknown "
                        f"{extra})")
    if not any("error" in e for e in marker["shards"]) and marker["vectors"] != rows:
        problems.append(f"the shards hold {marker['vectors']} vectors but the inputs have {rows} rows")
    if bool(marker["groundtruth"]) != groundtruth:
        problems.append("the exact ground truth of the held-out queries is " +
                        ("missing" if groundtruth else "there although no queries were held out"))
    if problems:
        raise IndexIntegrityError(f"{where}: " + "; ".join(problems))


def write_done(vdir: str, marker: dict[str, Any], n_shards: int, rows: int, groundtruth: bool) -> None:
    """The last step of the build pipeline: check that every branch delivered, then write ``_done``."""
    check_done(marker, n_shards, rows, groundtruth, f"the last step of the build of {vdir}")
    storage.write_text(done_url(vdir), json.dumps(marker, indent=1))


def read_done(vdir: str, n_shards: int, rows: int, groundtruth: bool) -> list[dict[str, Any]]:
    """The driver's side: every shard's manifest entry from ``_done``, checked again against what the driver
    expects; raises the first id error a shard reported, IndexIntegrityError when ``_done`` is missing or wrong."""
    url = done_url(vdir)
    try:
        marker = json.loads(storage.read_text(url))
    except FileNotFoundError:
        raise IndexIntegrityError(
            f"the build pipeline ended but its last step left no {url}: the shards were not all written where this "
            f"launcher reads them (do the workers share this filesystem? did the runner finish the job?)") from None
    for entry in marker["shards"]:
        if "error" in entry:
            raise _ID_ERRORS[entry["error"]["type"]](entry["error"]["message"])
    check_done(marker, n_shards, rows, groundtruth, f"{url} does not match this build")
    return marker["shards"]
