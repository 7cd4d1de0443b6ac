"""The FAISS work of a build's parallel stages, as plain functions (``transforms.index_shards`` runs them in Beam).

Shard ``s`` holds the rows with ``faiss_id % n_shards == s``; every shard starts from a clone of the one trained
index, so shards can be searched together or merged into one index. A work unit encodes its rows into one partial
index per shard; a shard merges its units' partials in unit order, so a rebuild from the same inputs gives
byte-identical shards. Partials go through the staging folder of the version being built::

    <version>/_staging/parts/u<unit>-s<shard>.index     one unit's rows of one shard, encoded
    <version>/_staging/parts/u<unit>-s<shard>.parquet   their id-map rows (faiss_id, image_id, uri)
    <version>/_staging/info/<shard>.json                the merged shard's manifest entry, or its id error
"""

from __future__ import annotations

import io
import json
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
IDMAP_SCHEMA = pa.schema([("faiss_id", pa.int64()), ("image_id", pa.string()), ("uri", pa.string())])
_ID_ERRORS = {cls.__name__: cls for cls in (IdCollisionError, DuplicateImageIdError)}


def shard_name(s: int, n: int) -> str:
    return f"shard-{s:05d}-of-{n:05d}"


def staging_dir(vdir: str) -> str:
    return storage.join(vdir, STAGING)


def part_base(staging: str, unit: int, shard: int) -> str:
    return storage.join(staging, "parts", f"u{unit:07d}-s{shard:05d}")


def info_url(staging: str, shard: int) -> str:
    return storage.join(staging, "info", f"{shard:05d}.json")


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


def write_info(staging: str, info: dict[str, Any]) -> None:
    storage.write_text(info_url(staging, info["shard"]), json.dumps(info))


def read_infos(staging: str, n_shards: int) -> list[dict[str, Any]]:
    """Every shard's manifest entry, in shard order; raises the first id error a shard reported."""
    infos = [json.loads(storage.read_text(info_url(staging, s))) for s in range(n_shards)]
    for info in infos:
        if "error" in info:
            raise _ID_ERRORS[info["error"]["type"]](info["error"]["message"])
    return infos
