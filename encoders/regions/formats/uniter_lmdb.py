"""Reader for UNITER image DBs (the region features UNITER and LightningDOT were trained on).

Layout (UNITER's ``scripts/convert_imgdir.py``, read by ``data/data.py`` ``DetectFeatLmdb``)::

    <img_db>/feat_th0.2_max100_min10[_compressed]/   LMDB; key = feature file name (e.g. coco_val2014_000000000042.npz)
    <img_db>/nbb_th0.2_max100_min10.json             {name: number of boxes}
    (or <img_db>/all[_compressed]/ with every stored box and no json)

Each record holds fp16 ``features`` [N,2048], ``norm_bb`` [N,6], ``conf`` [N] and ``soft_labels`` [N,1601]:
an ``.npz`` archive (``*_compressed`` DBs, ``np.savez_compressed``) or msgpack with msgpack_numpy arrays.
A record is cut to the box count of the json, else to UNITER's rule ``clamp(#(conf > th), min, max)``.
Records hold no image size, so the Regions have ``width = height = 0`` and ``boxes = norm_bb[:, :4]``
(normalised coordinates). The LMDB's ``__keys__`` entry is skipped.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from core.files import printable_id
from encoders.regions.formats._msgpack import unpackb
from encoders.regions.formats.bad_records import BAD_RECORD, BadRecord, RegionItem, strict
from encoders.regions.types import Regions

KEYS_PER_RANGE = 1000  # records per key range read by one worker (~100 MB of UNITER's fp16 features)


def compute_num_bb(conf: np.ndarray, conf_th: float, min_bb: int, max_bb: int) -> int:
    """UNITER's ``compute_num_bb``: ``min(max_bb, max(min_bb, #(conf > conf_th)))``."""
    return int(min(max_bb, max(min_bb, int((np.asarray(conf) > conf_th).sum()))))


def is_lmdb_dir(path: Path) -> bool:
    return path.is_dir() and (path / "data.mdb").is_file()


def find_uniter_db(
    path: str | Path, conf_th: float = 0.2, max_bb: int = 100, min_bb: int = 10
) -> tuple[Path, Path | None]:
    """``(lmdb_dir, nbb_json or None)`` for an image DB directory or an LMDB directory inside one."""
    path = Path(path)
    if path.is_file() and path.name == "data.mdb":
        path = path.parent
    nbb_name = f"nbb_th{conf_th}_max{max_bb}_min{min_bb}.json"
    if is_lmdb_dir(path):
        nbb = path.parent / nbb_name
        name = path.name
        # the 'all' DBs keep every box: the json (if any) says how many to use
        return path, nbb if nbb.is_file() and not name.startswith("feat_numbb") else None
    preferred = [f"feat_th{conf_th}_max{max_bb}_min{min_bb}", f"feat_th{conf_th}_max{max_bb}_min{min_bb}_compressed",
                 "all", "all_compressed"]
    for name in preferred:
        if is_lmdb_dir(path / name):
            nbb = path / nbb_name
            return path / name, nbb if nbb.is_file() else None
    candidates = sorted(p for p in path.iterdir() if is_lmdb_dir(p)) if path.is_dir() else []
    if candidates:
        return candidates[0], None
    raise FileNotFoundError(f"{path}: no UNITER image DB (an LMDB directory with data.mdb) found")


def decode_record(value: bytes) -> dict[str, np.ndarray]:
    """One LMDB value -> dict of arrays (npz archive or msgpack)."""
    if value[:2] == b"PK":  # zip: np.savez[_compressed]
        with np.load(io.BytesIO(value), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    obj = unpackb(value)
    if not isinstance(obj, dict):
        raise ValueError("UNITER record is not a map")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def record_to_regions(rec: dict[str, np.ndarray], nbb: int | None, conf_th: float, min_bb: int,
                      max_bb: int) -> Regions:
    feats = np.asarray(rec["features"], dtype=np.float32)
    norm_bb = np.asarray(rec["norm_bb"], dtype=np.float32)
    n = feats.shape[0]
    conf = np.asarray(rec["conf"], dtype=np.float32).reshape(-1) if "conf" in rec else None
    if nbb is None:
        nbb = compute_num_bb(conf, conf_th, min_bb, max_bb) if conf is not None else n
    nbb = min(int(nbb), n)
    soft = rec.get("soft_labels")
    feats, norm_bb = feats[:nbb], norm_bb[:nbb]
    conf = np.ones(nbb, dtype=np.float32) if conf is None else conf[:nbb]
    soft = None if soft is None or np.asarray(soft).ndim != 2 else np.asarray(soft, dtype=np.float32)[:nbb]
    if norm_bb.shape[1] == 7:  # some DBs store the 7-d box with the area appended
        norm_bb = norm_bb[:, :6]
    order = np.argsort(-conf, kind="stable")  # the contract: conf descending (a no-op for UNITER's DBs)
    return Regions(
        features=feats[order], boxes=norm_bb[order, :4], norm_bb=norm_bb[order], conf=conf[order],
        soft_labels=None if soft is None else soft[order], width=0, height=0,
    )


class UniterImageDB:
    """An open UNITER image DB: ``get(name)`` reads one image's record by key (re-ranking), ``records()`` yields
    every record in key order, a record that cannot be decoded as a ``BadRecord`` naming its key.

    Records are cut to the box count of the DB's json, else to UNITER's rule (see the module docstring).
    A DB that cannot be opened is an error.
    """

    def __init__(self, path: str | Path, conf_th: float = 0.2, max_bb: int = 100, min_bb: int = 10) -> None:
        import lmdb

        db_dir, nbb_path = find_uniter_db(path, conf_th, max_bb, min_bb)
        self.path = db_dir
        self.conf_th, self.max_bb, self.min_bb = conf_th, max_bb, min_bb
        self.name2nbb: dict[str, int] | None = json.loads(nbb_path.read_text()) if nbb_path is not None else None
        if self.name2nbb is None and re.match(r"feat_th", db_dir.name):
            # DBs built with a threshold were already cut to the rule when written
            self.name2nbb = {}
        self._env = lmdb.open(str(db_dir), readonly=True, create=False, lock=False, readahead=False, subdir=True)

    def _regions(self, name: str, value: bytes) -> Regions:
        rec = decode_record(value)
        nbb = None if self.name2nbb is None else self.name2nbb.get(name)
        if self.name2nbb is not None and nbb is None:
            nbb = rec["features"].shape[0]
        return record_to_regions(rec, nbb, self.conf_th, self.min_bb, self.max_bb)

    def get(self, name: str) -> Regions | None:
        """The regions stored under ``name``; None when the DB has no such key."""
        with self._env.begin(buffers=False) as txn:
            value = txn.get(name.encode("utf-8"))
        return None if value is None or name == "__keys__" else self._regions(name, bytes(value))

    def key_ranges(self, keys_per_range: int | None = None) -> Iterator[tuple[bytes | None, bytes | None]]:
        """``[low, high)`` key ranges of ``keys_per_range`` (``KEYS_PER_RANGE``) keys each (``None``: open-ended),
        for ``records`` on several workers. Walks the keys only: LMDB keeps large values on overflow pages, so this
        reads the B-tree's leaves, not the features."""
        keys_per_range = keys_per_range or KEYS_PER_RANGE
        low: bytes | None = None
        with self._env.begin(buffers=False) as txn:
            for count, key in enumerate(txn.cursor().iternext(keys=True, values=False)):
                if count and count % keys_per_range == 0:
                    yield low, bytes(key)
                    low = bytes(key)
        yield low, None

    def records(self, low: bytes | None = None, high: bytes | None = None) -> Iterator[RegionItem]:
        """The records with keys in ``[low, high)`` (default: all), in key order."""
        with self._env.begin(buffers=False) as txn:
            cursor = txn.cursor()
            if not (cursor.first() if low is None else cursor.set_range(low)):
                return
            for key, value in cursor:
                if high is not None and bytes(key) >= high:
                    return
                name = printable_id(bytes(key).decode("utf-8", "surrogateescape"))
                if name == "__keys__":
                    continue
                try:
                    regions = self._regions(name, bytes(value))
                except Exception as exc:  # a truncated or foreign value, a missing array, a recursion bomb...
                    yield BadRecord(name, BAD_RECORD, f"{self.path} key {name!r}: {type(exc).__name__}: {exc}")
                    continue
                yield name, regions

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> UniterImageDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_uniter_db(
    path: str | Path, conf_th: float = 0.2, max_bb: int = 100, min_bb: int = 10
) -> Iterator[RegionItem]:
    """``(name, Regions)`` for every image of a UNITER image DB, in key order; bad records as ``BadRecord``."""
    with UniterImageDB(path, conf_th, max_bb, min_bb) as db:
        yield from db.records()


def read_uniter_db(
    path: str | Path, conf_th: float = 0.2, max_bb: int = 100, min_bb: int = 10
) -> Iterator[tuple[str, Regions]]:
    """Like :func:`iter_uniter_db`, raising ``ValueError`` (naming the key) at the first bad record."""
    yield from strict(iter_uniter_db(path, conf_th, max_bb, min_bb))
