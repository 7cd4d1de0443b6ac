"""Candidate index families that fit a memory budget, for the measured ``auto`` choice (``index.chooser``).

For N vectors of dim d and a serving budget, each family is taken at the widest transform that still fits:

- ``IVF,Flat`` (32 bits/dim) and ``IVF,SQ8`` at full d when raw floats fit (SQ8 scans 4x fewer bytes: it can win
  under a tight latency target);
- ``[PCA{w},]IVF,SQ8 | SQ6 | SQ4``: a scalar code of 8/6/4 bits per dimension after PCA to the width w the
  budget allows — a decaying spectrum puts most of the signal in the first components, so fewer dimensions at more
  bits can beat more dimensions at fewer bits, and only measurement tells which;
- ``[PCAR{w},]IVF,PQ{m}x4fs``: 4-bit fast-scan PQ over 2-dim sub-vectors (2 bits/dim, SIMD scanning), and
  ``[PCAR{w},]IVF,PQ{m}np``: 8-bit PQ over 4-dim sub-vectors (2 bits/dim, slower scan, finer codebook); the random
  rotation after PCA (PCAR) spreads variance over the sub-quantizers; ``OPQ{m}_{w}`` (a learned rotation, minutes
  of training at d=768) is tried in the chooser's second round for the best PQ family only.

A family dominated by another (no wider and no more bits per dimension) is dropped: it cannot recall more (the
two PQ families are both kept: bits per dimension do not rank an 8-bit codebook against a fast-scan one).
No refine stage (``RFlat``/``Refine(SQ8)``): ``IndexRefine`` takes no explicit ids and has no ``merge_from``
(faiss 1.15), and every shard of ours is built with ``add_with_ids`` and merged; nor has one won where it could
fit: on MiniLM 20k x 384 at 176 B/vector a flat or SQ8 refine is over budget by itself (1,536 / 384 B), and
``IVF512,PQ64x4fs,Refine(PQ96np)`` serializes to 209 B/vector (two codebooks) for recall 0.853 at 0.12 ms
(nprobe 64, k_factor 8) against ``IVF512,PQ96np``'s 0.855 at 0.16 ms in 163 B/vector (measured, one thread).
The HNSW coarse quantizer is added by the rule in ``index.factory`` (nlist >= 2^15), where a sample is too small
to measure it.

Bytes per vector: ``faiss.contrib.factory_tools.get_code_size`` + 8 bytes of id in the inverted lists; fast-scan
lists are padded to blocks of 32 codes. Fixed bytes: coarse centroids, transform matrix, codebooks. The chooser
checks this model against the serialized size of every candidate it builds.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from index.factory import HNSW_QUANTIZER_MIN_NLIST, ID_BYTES

FASTSCAN_BLOCK = 32


@dataclasses.dataclass(frozen=True)
class Candidate:
    family: str             # flat | sq8 | sq6 | sq4 | pq4fs | pq8 (+ "opq-" prefix for the learned rotation)
    transform: str          # "" | PCA{w} | PCAR{w} | OPQ{m}_{w}
    codec: str              # Flat | SQ8 | SQ6 | SQ4 | PQ{m}x4fs | PQ{m}np
    width: int              # dimensions after the transform
    bits_per_dim: float     # information kept per remaining dimension (dominance order)

    def factory(self, nlist: int) -> str:
        ivf = f"IVF{nlist}_HNSW32" if nlist >= HNSW_QUANTIZER_MIN_NLIST else f"IVF{nlist}"
        return ",".join(p for p in (self.transform, ivf, self.codec) if p)

    @property
    def code_bytes(self) -> int:
        from faiss.contrib.factory_tools import get_code_size

        codec = self.codec[:-2] if self.codec.endswith("np") else self.codec
        return int(get_code_size(self.width, codec))

    @property
    def fastscan(self) -> bool:
        return self.codec.endswith("fs")

    def fixed_bytes(self, d: int, nlist: int) -> int:
        """Coarse centroids + transform + codebooks (+ HNSW links when the factory adds an HNSW quantizer)."""
        w = self.width
        quantizer = nlist * w * 4 + (nlist * 32 * 2 * 4 if nlist >= HNSW_QUANTIZER_MIN_NLIST else 0)
        if self.transform.startswith("PCA"):  # A, b and the mean (index.train drops the d x d eigenvectors)
            transform = (d * w + w + d) * 4
        else:
            transform = (d * w + w) * 4 if self.transform else 0
        if self.codec.startswith("SQ"):
            codebook = 2 * w * 4
        elif self.codec.startswith("PQ"):
            codebook = (16 if self.fastscan else 256) * w * 4
        else:
            codebook = 0
        return quantizer + transform + codebook

    def index_bytes(self, n: int, d: int, nlist: int) -> int:
        """Serving bytes of the whole index for ``n`` vectors (lists of equal length assumed for the padding)."""
        codes = n * self.code_bytes
        if self.fastscan:
            per_list = n / max(nlist, 1)
            codes = int(nlist * math.ceil(per_list / FASTSCAN_BLOCK) * FASTSCAN_BLOCK * self.code_bytes)
        return self.fixed_bytes(d, nlist) + codes + n * ID_BYTES

    def with_opq(self) -> Candidate:
        m = int(self.codec[2:].split("x")[0].rstrip("np"))
        return dataclasses.replace(self, family=f"opq-{self.family}", transform=f"OPQ{m}_{self.width}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _widest(make, widths, fits) -> Candidate | None:
    for w in widths:
        c = make(w)
        if c is not None and fits(c):
            return c
    return None


def candidates_for(n: int, d: int, budget: int | None, nlist: int) -> list[Candidate]:
    """The families above at their widest fitting width, dominated ones dropped; cheapest to train first."""
    def fits(c: Candidate) -> bool:
        return budget is None or c.index_bytes(n, d, nlist) <= budget

    def reduce(w: int, rotate: bool = False) -> str:
        return "" if w == d else f"PCAR{w}" if rotate else f"PCA{w}"

    widths = [d] + [w for w in range(d - d % 8, 0, -8) if w < d]   # full width, then multiples of 8
    found: list[Candidate] = []
    flat = Candidate("flat", "", "Flat", d, 32.0)
    if fits(flat):
        found.append(flat)
    for bits in (8, 6, 4):
        c = _widest(lambda w, b=bits: Candidate(f"sq{b}", reduce(w), f"SQ{b}", w, float(b)), widths, fits)
        if c is not None:
            found.append(c)

    def pq(w: int, sub: int, fast: bool) -> Candidate | None:
        if w % sub:
            return None
        m = w // sub
        if fast and m % 2:
            return None
        codec = f"PQ{m}x4fs" if fast else f"PQ{m}np"
        return Candidate("pq4fs" if fast else "pq8", reduce(w, rotate=True), codec, w, 8 / sub if not fast else 2.0)

    for sub, fast in ((2, True), (4, False)):
        c = _widest(lambda w, s=sub, f=fast: pq(w, s, f), widths, fits)
        if c is not None:
            found.append(c)

    def dominated(c: Candidate) -> bool:  # the two PQ families trade scan speed for codebook size: keep both
        return any(o is not c and o.width >= c.width and o.bits_per_dim >= c.bits_per_dim
                   and (o.width > c.width or o.bits_per_dim > c.bits_per_dim)
                   and not (o.codec.startswith("PQ") and c.codec.startswith("PQ")) for o in found)

    keep = [c for c in found if not dominated(c)]
    if flat in keep and found[1:2] and found[1].width == d:
        keep.append(found[1])  # SQ8 at full width: 4x fewer bytes to scan than Flat under a latency target
    return keep
