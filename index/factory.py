"""Choosing a FAISS factory string the way careful users do, and saying why.

``choose_factory(n, d, max_memory)`` walks from the most to the least accurate index that fits the memory budget:

1. ``Flat`` (exact) for small sets: below ``flat_max`` vectors a query scans everything in a few milliseconds.
2. ``IVF{nlist},Flat`` when raw vectors fit the budget; ``nlist`` = the power of two nearest 4·√N (FAISS's usual
   guidance is 4–16·√N; the low end keeps k-means training affordable), at most N/39 so every list gets ≥ 39
   training points; a flat coarse quantizer up to 2^14 lists, an HNSW32 one above (assignment cost grows with
   nlist).
3. ``IVF{nlist},SQ8`` (1 byte/dim, near IVF-Flat recall) when that fits.
4. ``[OPQ{m},]IVF{nlist},PQ{m}`` with the largest ``m`` (bytes per code, a divisor of d) that fits; OPQ when each
   sub-quantizer spans ≥ 8 dimensions, where a learned rotation that balances variance across sub-spaces pays off.

Memory is the serving footprint of the whole index (all shards): codes + 8-byte ids per vector + coarse centroids
+ PQ/OPQ tables; code sizes come from ``faiss.contrib.factory_tools.get_code_size``. The reasoning is returned as
lines, printed by the CLI and stored in the manifest.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from index.errors import FactoryError

DEFAULT_MAX_MEMORY = 4 << 30
FLAT_MAX = 50_000
HNSW_QUANTIZER_MIN_NLIST = 1 << 15
ID_BYTES = 8
MIN_POINTS_PER_LIST = 39
PQ_MIN_TRAIN = 256 * MIN_POINTS_PER_LIST
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


def parse_memory(value: str | int | float | None) -> int | None:
    """'4G', '512MiB', '1.5GB', 10**9 -> bytes (binary units: K/M/G/T are powers of 1024)."""
    if value is None or isinstance(value, int | float):
        return None if value is None else int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot parse memory size {value!r} (examples: 512M, 4G, 1.5GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@dataclasses.dataclass
class FactoryChoice:
    factory: str                    # faiss.index_factory string (ids are added with add_with_ids)
    kind: str                       # flat | ivf-flat | ivf-sq8 | ivf-pq
    nlist: int | None
    pq_m: int | None
    opq: bool
    quantizer: str | None           # flat | hnsw32
    est_bytes: int                  # serving memory estimate, whole index
    bytes_per_vector: float         # codes + id
    train_size: int                 # vectors to train on (0: no training)
    reasoning: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def code_size(d: int, factory: str) -> int:
    """Bytes of one vector's code (ids not counted), by FAISS's own ``get_code_size``. It does not parse the
    ``IDMap,`` wrapper or the ``np`` suffix (no polysemous training), neither of which changes the code."""
    from faiss.contrib.factory_tools import get_code_size

    key = re.sub(r"^IDMap2?,", "", factory.strip())
    key = re.sub(r"(PQ\d+(?:x\d+)?)np$", r"\1", key)
    return int(get_code_size(d, key))


def nlist_for(n: int) -> int:
    if n < 2 * MIN_POINTS_PER_LIST:
        return 1
    target = 4 * math.sqrt(n)
    nlist = 2 ** round(math.log2(target))
    while nlist > 1 and nlist * MIN_POINTS_PER_LIST > n:
        nlist //= 2
    return max(1, nlist)


def _divisors_desc(d: int) -> list[int]:
    return sorted((m for m in range(1, d + 1) if d % m == 0), reverse=True)


def choose_factory(n: int, d: int, max_memory: int | str | None = DEFAULT_MAX_MEMORY, *,
                   flat_max: int = FLAT_MAX, train_per_list: int = 64) -> FactoryChoice:
    budget = parse_memory(max_memory) if max_memory is not None else None
    cap = budget if budget is not None else float("inf")
    why: list[str] = []
    raw_per_vec = code_size(d, "Flat") + ID_BYTES
    bstr = fmt_bytes(budget) if budget is not None else "unlimited"
    why.append(f"{n:,} vectors of dim {d}, memory budget {bstr}; raw float32 + ids = {fmt_bytes(n * raw_per_vec)}")

    if n <= flat_max and n * raw_per_vec <= cap:
        why.append(f"N <= {flat_max:,}: exact search (Flat) scans {n * d * 4 / 1e6:.0f} MB per query — fast enough "
                   "and recall 1.0, so no approximation is worth it")
        return FactoryChoice("IDMap,Flat", "flat", None, None, False, None, n * raw_per_vec, raw_per_vec, 0, why)

    nlist = nlist_for(n)
    quantizer = "hnsw32" if nlist >= HNSW_QUANTIZER_MIN_NLIST else "flat"
    ivf = f"IVF{nlist}_HNSW32" if quantizer == "hnsw32" else f"IVF{nlist}"
    centroid_bytes = nlist * d * 4 + (nlist * 32 * 2 * 4 if quantizer == "hnsw32" else 0)
    train = min(n, max(nlist * train_per_list, nlist * MIN_POINTS_PER_LIST))
    qwhy = ("HNSW keeps assignment cheap for many lists" if quantizer == "hnsw32"
            else "exact assignment is cheap at this nlist")
    why.append(f"nlist = {nlist} (power of two nearest 4*sqrt(N) = {4 * math.sqrt(n):.0f}, capped so each list has "
               f">= {MIN_POINTS_PER_LIST} training points), {quantizer} coarse quantizer ({qwhy}); "
               f"train on {train:,} vectors ({train_per_list}/list, seeded random sample)")

    est = n * raw_per_vec + centroid_bytes
    if est <= cap:
        why.append(f"IVF-Flat fits ({fmt_bytes(est)} <= {bstr}): uncompressed vectors, recall limited only by nprobe")
        return FactoryChoice(f"{ivf},Flat", "ivf-flat", nlist, None, False, quantizer, est, raw_per_vec, train, why)
    why.append(f"IVF-Flat needs {fmt_bytes(est)} > budget")

    sq_per_vec = code_size(d, "SQ8") + ID_BYTES
    est = n * sq_per_vec + centroid_bytes + 2 * d * 4
    if est <= cap:
        why.append(f"IVF-SQ8 fits ({fmt_bytes(est)}): 1 byte per dimension, recall close to IVF-Flat")
        return FactoryChoice(f"{ivf},SQ8", "ivf-sq8", nlist, None, False, quantizer, est, sq_per_vec, train, why)
    why.append(f"IVF-SQ8 needs {fmt_bytes(est)} > budget: product quantization")

    train = min(n, max(train, PQ_MIN_TRAIN))
    for m in _divisors_desc(d):
        if m > d // 2 or m > 256:
            continue  # sub-vectors of < 2 dims: SQ8 is better and did not fit either
        opq = d // m >= 8
        fixed = centroid_bytes + 256 * d * 4 + (d * d * 4 if opq else 0)
        pq_per_vec = code_size(d, f"PQ{m}") + ID_BYTES
        est = n * pq_per_vec + fixed
        if est <= cap:
            why.append(f"IVF-PQ: largest code that fits is PQ{m} ({pq_per_vec - ID_BYTES} B/vector + {ID_BYTES} B id, "
                       f"{fmt_bytes(est)} total); " + (
                           f"OPQ rotation since each sub-quantizer spans {d // m} dims" if opq else
                           f"no OPQ: sub-vectors of {d // m} dims are already fine-grained") + "; 8-bit codes")
            # "np": no polysemous training (it only serves Hamming pre-filtering, which we do not use, and costs
            # minutes of simulated annealing at build time)
            factory = f"OPQ{m},{ivf},PQ{m}np" if opq else f"{ivf},PQ{m}np"
            return FactoryChoice(factory, "ivf-pq", nlist, m, opq, quantizer, est, pq_per_vec, train, why)
    smallest = min(m for m in _divisors_desc(d))
    need = n * (code_size(d, f"PQ{smallest}") + ID_BYTES) + centroid_bytes
    raise FactoryError(f"memory budget {bstr} is too small for {n:,} vectors of dim {d}: even PQ{smallest} needs "
                       f"about {fmt_bytes(need)}. Raise --max-memory or shard across machines.")


def describe_factory(factory: str, n: int, d: int, train_per_list: int = 64) -> FactoryChoice:
    """A ``FactoryChoice`` for a user-given factory string (no budget reasoning, but the training size)."""
    key = factory.strip()
    m_ivf = re.search(r"IVF(\d+)", key)
    m_pq = re.search(r"PQ(\d+)", key)
    nlist = int(m_ivf.group(1)) if m_ivf else None
    pq_m = int(m_pq.group(1)) if m_pq else None
    opq = key.startswith("OPQ")
    if nlist is None and not key.startswith("IDMap"):
        key = f"IDMap,{key}"  # non-IVF indexes store ids through an IDMap wrapper
    if nlist:
        train = min(n, nlist * train_per_list)
        if pq_m:
            train = min(n, max(train, PQ_MIN_TRAIN))
        kind = "ivf-pq" if pq_m else "ivf-sq8" if "SQ" in key else "ivf-flat" if key.endswith("Flat") else "ivf"
    else:
        train = 0 if key.endswith(",Flat") else min(n, PQ_MIN_TRAIN * 4)
        kind = "flat" if key.endswith(",Flat") else "other"
    why = [f"factory {factory!r} given by the user; train on {train:,} vectors"]
    try:
        per_vec = code_size(d, key) + ID_BYTES
    except RuntimeError:  # a factory FAISS builds but get_code_size cannot parse: estimate raw vectors
        per_vec = code_size(d, "Flat") + ID_BYTES
        why.append(f"code size of {factory!r} unknown to faiss.contrib.factory_tools: memory estimated as raw float32")
    quantizer = "hnsw32" if "_HNSW" in key else "flat" if nlist else None
    return FactoryChoice(key, kind, nlist, pq_m, opq, quantizer, int(n * per_vec), per_vec, train, why)
