"""``SearchIndex``: load the live (or a given) version of an index root and search it.

    idx = SearchIndex.open("gs://bucket/index")      # resolves CURRENT once, validates the manifest's structure,
                                                      # verifies every file's sha256
    res = idx.search(queries, k=10)                   # scores [Q,k] float32 (inner product), ids [Q,k] int64
    res.image_ids, res.uris                           # list[list[str]] ("" where ids == -1)
    SearchIndex.open(root, target_recall=0.9)         # or max_latency_ms=1.0: a point of the recorded curve

All shards share one trained quantizer, so they are merged into one in-memory index at open time: searching it at
nprobe p is exactly searching every shard at nprobe p and merging the per-shard top-k (the same inverted lists are
probed), with one copy of the coarse quantizer and tables instead of one per shard.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index import layout, storage
from index.errors import IndexIntegrityError, NoLiveVersionError
from index.ids import shards_of_ids
from index.manifest import validate_manifest
from index.operating_points import OperatingPoint, from_manifest, nlist_of, pick, set_nprobe

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SearchResult:
    scores: np.ndarray              # [Q, k] float32, inner product (-inf where ids == -1)
    ids: np.ndarray                 # [Q, k] int64 FAISS ids, -1 = no result
    image_ids: list[list[str]]
    uris: list[list[str]]

    def records(self, q: int = 0) -> list[dict[str, Any]]:
        """Results of query ``q`` as dicts (rank, score, faiss_id, image_id, uri), skipping empty slots."""
        return [{"rank": r + 1, "score": float(self.scores[q, r]), "faiss_id": int(self.ids[q, r]),
                 "image_id": self.image_ids[q][r], "uri": self.uris[q][r]}
                for r in range(self.ids.shape[1]) if self.ids[q, r] >= 0]


def _read_verified(root_vdir: str, entry: dict[str, Any], verify: bool, what: str) -> bytes:
    url = storage.join(root_vdir, entry["path"])
    storage.check_inside(url, root_vdir, what)
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError as e:
        raise IndexIntegrityError(f"{what} is missing: {url}") from e
    if verify:
        if "bytes" in entry and len(data) != entry["bytes"]:
            raise IndexIntegrityError(f"{what} {url} has {len(data)} bytes, the manifest says {entry['bytes']}: "
                                      "the file is truncated or was replaced; refusing to load it")
        sha = storage.sha256_bytes(data)
        if sha != entry["sha256"]:
            raise IndexIntegrityError(f"{what} {url} fails its checksum (sha256 {sha[:16]}…, manifest "
                                      f"{entry['sha256'][:16]}…): the file is corrupt or was modified; refusing it")
    return data


def _check_ids(ids: np.ndarray, shard: int, n_shards: int, what: str) -> None:
    """Every id of a shard's id map belongs to that shard (faiss_id % n_shards): an id map copied from another
    shard, or rows added to one, are refused even when the manifest was edited to match."""
    wrong = np.nonzero(shards_of_ids(ids, n_shards) != shard)[0]
    if len(wrong):
        raise IndexIntegrityError(f"id map of {what}: {len(wrong)} id(s) belong to other shards (e.g. faiss_id "
                                  f"{int(ids[wrong[0]])}): refusing a mixed or doubled index")


def _check_truth(selfcheck: pa.Table, ids: np.ndarray, version: str) -> None:
    """The self-check's exact neighbours were found over every row of the build: each must be in the id maps.
    Content, not bookkeeping: a shard dropped from a manifest edited to match still leaves them pointing at it."""
    truth = np.asarray(selfcheck.column("truth").combine_chunks().flatten(), dtype=np.int64)
    missing = np.setdiff1d(truth[truth >= 0], ids)
    if len(missing):
        raise IndexIntegrityError(f"version {version}: {len(missing)} exact neighbour(s) of its self-check (e.g. "
                                  f"faiss_id {int(missing[0])}) are in no shard: rows are missing from the index")


class SearchIndex:
    def __init__(self, root: str, manifest: dict[str, Any], index: Any, ids: np.ndarray, image_ids: pa.Array,
                 uris: pa.Array, nprobe: int | None, target_recall: float | None = None,
                 max_latency_ms: float | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.index = index
        self._ids = ids
        self._image_ids = image_ids
        self._uris = uris
        self._nprobe: int | None = None
        self.operating_point: OperatingPoint | None = None
        if target_recall is not None or max_latency_ms is not None:  # a point of the recorded curve
            points = from_manifest(manifest)
            if not points:
                raise ValueError(f"version {self.version} records no operating points (built before they existed):"
                                 " open it without target_recall / max_latency_ms, or rebuild it")
            self.operating_point = pick(points, target_recall=target_recall, max_latency_ms=max_latency_ms)
            nprobe = nprobe or self.operating_point.nprobe
        if self.nlist:
            self.nprobe = nprobe or manifest.get("nprobe") or 1

    # ---- opening ----------------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, root: str, nprobe: int | None = None, *, version: str | None = None, verify: bool = True,
             retries: int = 3, target_recall: float | None = None,
             max_latency_ms: float | None = None) -> SearchIndex:
        """Open the live version (``CURRENT``) or ``version``. If the live version changes while it is being read
        (a publish and retention raced with us), the new live version is read instead. ``target_recall`` /
        ``max_latency_ms`` pick the search setting from the version's recorded operating points
        (``index.operating_points.pick``); an explicit ``nprobe`` wins over both."""
        last_error: Exception | None = None
        for _ in range(max(1, retries)):
            name = version or layout.read_current(root)
            if name is None:
                raise NoLiveVersionError(f"{root} has no {layout.CURRENT}: nothing has been published there yet")
            try:
                return cls.from_manifest(root, layout.read_manifest(root, name), nprobe=nprobe, verify=verify,
                                         target_recall=target_recall, max_latency_ms=max_latency_ms)
            except IndexIntegrityError as e:
                if version is not None or layout.read_current(root) == name:
                    raise
                last_error = e
                log.info("live version changed while opening %s (%s); retrying", name, e)
        assert last_error is not None
        raise last_error

    @classmethod
    def from_manifest(cls, root: str, manifest: dict[str, Any], nprobe: int | None = None, verify: bool = True,
                      target_recall: float | None = None, max_latency_ms: float | None = None) -> SearchIndex:
        import faiss

        validate_manifest(manifest, manifest.get("version") if isinstance(manifest, dict) else None)
        vdir = layout.version_dir(root, manifest["version"])
        trained = storage.index_from_bytes(_read_verified(vdir, manifest["trained"], verify, "trained index"))
        index = trained
        id_parts, image_parts, uri_parts = [], [], []
        for shard in manifest["shards"]:
            what = f"shard {shard['shard']}"
            part = storage.index_from_bytes(_read_verified(vdir, shard, verify, what),
                                            faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE)
            if part.ntotal != shard["count"]:
                raise IndexIntegrityError(f"{what} holds {part.ntotal} vectors, the manifest says {shard['count']}")
            if part.d != manifest["dim"]:
                raise IndexIntegrityError(f"{what} has dim {part.d}, the manifest says {manifest['dim']}")
            index.merge_from(part, 0)
            del part
            table = pq.read_table(io.BytesIO(_read_verified(vdir, shard["idmap"], verify, f"id map of {what}")))
            if table.num_rows != shard["count"]:
                raise IndexIntegrityError(f"id map of {what} has {table.num_rows} rows for {shard['count']} vectors")
            _check_ids(table.column("faiss_id").to_numpy(), shard["shard"], manifest["n_shards"], what)
            id_parts.append(table.column("faiss_id").to_numpy())
            image_parts.append(table.column("image_id"))
            uri_parts.append(table.column("uri"))
        if index.ntotal != manifest["count"]:
            raise IndexIntegrityError(f"shards hold {index.ntotal} vectors, the manifest says {manifest['count']}")
        ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        if len(ids) > 1 and (ids[order][1:] == ids[order][:-1]).any():
            raise IndexIntegrityError(f"version {manifest['version']}: a faiss_id appears twice in the id maps")
        if manifest.get("selfcheck", {}).get("path"):
            table = pq.read_table(io.BytesIO(_read_verified(vdir, manifest["selfcheck"], verify, "self-check table")))
            _check_truth(table, ids, manifest["version"])
        image_ids = pa.chunked_array(image_parts, pa.string()).combine_chunks().take(pa.array(order))
        uris = pa.chunked_array(uri_parts, pa.string()).combine_chunks().take(pa.array(order))
        return cls(root, manifest, index, ids[order], image_ids, uris, nprobe, target_recall, max_latency_ms)

    # ---- properties -------------------------------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def nlist(self) -> int | None:
        return nlist_of(self.index)

    @property
    def nprobe(self) -> int | None:
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.nlist:
            self._nprobe = set_nprobe(self.index, value)

    # ---- search -----------------------------------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, k: int) -> SearchResult:
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}], got {tuple(np.shape(vectors))}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        x = np.ascontiguousarray(x)
        scores, ids = self.index.search(x, k)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        image_ids, uris = self.lookup(ids)
        return SearchResult(scores=scores, ids=ids.astype(np.int64), image_ids=image_ids, uris=uris)

    def lookup(self, ids: np.ndarray) -> tuple[list[list[str]], list[list[str]]]:
        """FAISS ids [Q, k] -> (image_ids, uris) as nested lists; "" for -1 or unknown ids."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.reshape(-1)
        pos = np.searchsorted(self._ids, flat)
        pos = np.minimum(pos, max(len(self._ids) - 1, 0))
        found = (flat >= 0) & (len(self._ids) > 0)
        if len(self._ids):
            found &= self._ids[pos] == flat
        take = pa.array(np.where(found, pos, 0))
        img = self._image_ids.take(take).to_pylist() if len(self._ids) else [""] * len(flat)
        uri = self._uris.take(take).to_pylist() if len(self._ids) else [""] * len(flat)
        img = [v if ok else "" for v, ok in zip(img, found, strict=True)]
        uri = [(v or "") if ok else "" for v, ok in zip(uri, found, strict=True)]
        k = ids.shape[-1] if ids.ndim else 1
        return [img[i:i + k] for i in range(0, len(img), k)], [uri[i:i + k] for i in range(0, len(uri), k)]
