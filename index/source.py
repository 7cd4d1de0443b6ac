"""Reading embedding tables (Parquet) in record batches.

Inputs may be files, directories of ``*.parquet`` parts, or globs, locally or on any fsspec filesystem. Only the
footers are read to plan the work (row counts, row groups, schema); vectors are read row group by row group, so a
1M x 768 table (3 GB) is never held in memory by the planner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.paths import parquet_files
from index import storage
from index.errors import EmbeddingsError, ModelMismatchError

REQUIRED = ("image_id", "uri", "embedding", "model")


@dataclasses.dataclass(frozen=True)
class SourceFile:
    url: str
    rows: int
    row_group_rows: tuple[int, ...]
    size: int
    modified: str | None

    @property
    def row_group_offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.row_group_rows)]).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """A run of consecutive row groups of one file: the unit of parallel work."""

    index: int
    url: str
    row_groups: tuple[int, ...]
    rows: int


def expand_inputs(inputs: str | Sequence[str]) -> list[str]:
    """Files, directories (``*.parquet`` inside, recursively) and globs -> sorted, de-duplicated URLs."""
    return parquet_files(inputs, missing=EmbeddingsError)


# Column chunks are read through a buffer of this size, page by page. Unbuffered (pyarrow's default) a reader
# holds a whole column chunk before decoding it: 31 MB for a 20k x 384 row group, and reading a 19.5k-row sample
# of it raised the peak by 94 MB for a 30 MB result (measured; 1 MiB buffered: 84 MB, with the allocator
# returning the rest between build stages, ``index.memory``).
READ_BUFFER = 1 << 20


def _open(url: str) -> pq.ParquetFile:
    fs, path = storage.fs_path(url)
    return pq.ParquetFile(fs.open(path, "rb"), buffer_size=READ_BUFFER, pre_buffer=False)


def embedding_dim(field: pa.Field) -> int | None:
    t = field.type
    if pa.types.is_fixed_size_list(t):
        return t.list_size
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return None
    raise EmbeddingsError(f"column 'embedding' must be a list of float32, got {t}")


class EmbeddingSource:
    """The files of one build, their schema checks, and batch readers."""

    def __init__(self, files: list[SourceFile], dim: int, model: str | None) -> None:
        self.files = files
        self.dim = dim
        self.model = model

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @classmethod
    def open(cls, inputs: Sequence[str], check_model: bool = True) -> EmbeddingSource:
        files: list[SourceFile] = []
        dim: int | None = None
        for url in expand_inputs(inputs):
            pf = _open(url)
            schema = pf.schema_arrow
            missing = [c for c in REQUIRED if c not in schema.names]
            if missing:
                raise EmbeddingsError(f"{url}: missing column(s) {missing}; has {schema.names}")
            file_dim = embedding_dim(schema.field("embedding"))
            if file_dim is None and pf.metadata.num_rows:
                first = pf.read_row_group(0, columns=["embedding"]).column("embedding")
                lengths = pc.unique(pc.list_value_length(first)).to_pylist()
                file_dim = lengths[0] if len(lengths) == 1 and lengths[0] is not None else None
                if file_dim is None:
                    raise EmbeddingsError(f"{url}: embedding lists have varying lengths {lengths}")
            if file_dim is not None:
                if dim is not None and file_dim != dim:
                    raise EmbeddingsError(f"{url}: embedding dim {file_dim}, other inputs have {dim}")
                dim = file_dim
            meta = pf.metadata
            rg_rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
            finfo = storage.info(url)
            modified = finfo.get("mtime") or finfo.get("updated") or finfo.get("LastModified")
            files.append(SourceFile(url=url, rows=meta.num_rows, row_group_rows=rg_rows,
                                    size=int(finfo.get("size") or 0),
                                    modified=str(modified) if modified is not None else None))
        if dim is None or not any(f.rows for f in files):
            raise EmbeddingsError(f"no embedding rows in {list(inputs)}")
        model = cls._model_fingerprint(files) if check_model else None
        return cls(files, dim, model)

    @staticmethod
    def _model_fingerprint(files: list[SourceFile]) -> str:
        """The one ``model`` value of all rows (row-group statistics when present, else a column scan)."""
        seen: dict[str, str] = {}
        for f in files:
            pf = _open(f.url)
            col = pf.schema_arrow.get_field_index("model")
            for i in range(pf.metadata.num_row_groups):
                if not f.row_group_rows[i]:
                    continue
                stats = pf.metadata.row_group(i).column(col).statistics
                if stats is not None and stats.has_min_max and stats.null_count == 0 and stats.min == stats.max:
                    values = [stats.min.decode() if isinstance(stats.min, bytes) else stats.min]
                else:
                    column = pf.read_row_group(i, columns=["model"]).column("model")
                    if column.null_count:
                        raise ModelMismatchError(f"{f.url}: {column.null_count} row(s) without a model fingerprint")
                    values = pc.unique(column).to_pylist()
                for v in values:
                    seen.setdefault(v, f.url)
                if len(seen) > 1:
                    shown = ", ".join(f"{k!r} (in {u})" for k, u in list(seen.items())[:4])
                    raise ModelMismatchError(
                        f"embeddings of one build must come from one model; found fingerprints {shown}. "
                        "Re-embed with one checkpoint or build separate indexes.")
        return next(iter(seen))

    def work_units(self, rows_per_unit: int = 100_000) -> list[WorkUnit]:
        units: list[WorkUnit] = []
        for f in self.files:
            current: list[int] = []
            rows = 0
            for i, n in enumerate(f.row_group_rows):
                if current and rows + n > rows_per_unit:
                    units.append(WorkUnit(len(units), f.url, tuple(current), rows))
                    current, rows = [], 0
                current.append(i)
                rows += n
            if current and rows:
                units.append(WorkUnit(len(units), f.url, tuple(current), rows))
        return units

    def describe(self) -> list[dict[str, Any]]:
        return [{"path": f.url, "rows": f.rows, "bytes": f.size, "modified": f.modified} for f in self.files]


# Rows decoded at a time. Arrow's Parquet reader holds about four batches' worth of decoded values while it
# yields one (pool high-water 9 / 26 / 69 MB at 1,024 / 4,096 / 16,384 rows of 384-d, measured), so the batch
# bounds the reading memory; 2,048 rows of 768-d are 6 MB. Decoded on the calling thread (``use_threads=False``):
# Arrow's decode threads each grow an allocator heap of their own; the shard stage of a 20k x 384 build peaked
# 13 MB lower without them (measured), and a batch's columns are too small to gain from parallel decoding.
UNIT_BATCH = 2_048


def iter_unit_batches(unit: WorkUnit, columns: Sequence[str],
                      batch_size: int = UNIT_BATCH) -> Iterator[pa.RecordBatch]:
    """A unit's rows in batches (``UNIT_BATCH``). A batch is held about three times over while it is encoded
    (Arrow, float32, a shard's selection): with 65,536 rows of 768-d the shard stage of a 50k build peaked 440 MB
    above the trained index, with 8,192 144 MB (measured, build_index in-process)."""
    pf = _open(unit.url)
    yield from pf.iter_batches(batch_size=batch_size, row_groups=list(unit.row_groups), columns=list(columns),
                               use_threads=False)


def vectors(column: pa.Array | pa.ChunkedArray, dim: int | None = None, where: str = "") -> np.ndarray:
    """A list<float> / fixed_size_list<float> column -> contiguous float32 [n, dim]; every row must have ``dim``
    values (None: whatever length they all share). Nulls, ragged rows, NaN and inf are refused, naming ``where``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    if column.null_count:
        raise EmbeddingsError(f"{where}: {column.null_count} row(s) with a null embedding")
    if pa.types.is_fixed_size_list(column.type):
        if dim is not None and column.type.list_size != dim:
            raise EmbeddingsError(f"{where}: embedding dim {column.type.list_size}, expected {dim}")
        dim = column.type.list_size
    elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = pc.list_value_length(column)
        low, high = (pc.min(lengths).as_py(), pc.max(lengths).as_py()) if n else (dim or 0, dim or 0)
        if low != high or (dim is not None and low != dim):
            expected = f", expected {dim}" if dim is not None else ""
            raise EmbeddingsError(f"{where}: embedding lengths {low}..{high}{expected}")
        dim = low
    else:
        raise EmbeddingsError(f"{where}: column 'embedding' must be a list of float32, got {column.type}")
    flat = column.flatten()
    if flat.null_count:
        raise EmbeddingsError(f"{where}: embeddings contain null elements")
    arr = np.ascontiguousarray(flat.to_numpy(zero_copy_only=False).reshape(n, dim), dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise EmbeddingsError(f"{where}: {bad} embedding(s) contain NaN or inf")
    return arr


READ_BATCH = 1_024  # rows decoded at a time by ``read_rows`` (a sample's reading transient: see ``UNIT_BATCH``)


def read_rows(source: EmbeddingSource, rows: np.ndarray, columns: Sequence[str] = ("embedding",), *,
              through: Callable[[np.ndarray], np.ndarray] | None = None, width: int | None = None) -> dict[str, Any]:
    """Read the given global row numbers (any order) -> {"embedding": [n, d] float32, other columns: lists},
    in the order given. Touches only the row groups that hold a requested row. ``through`` maps each decoded
    batch of embeddings to ``width`` columns before it is stored (a trained transform: only the output is held)."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    # embeddings go straight to their place in the output, one row group at a time: peak = output + one row
    # group (no take, concatenate or reorder copies: those made reading a 30 MB sample peak at 216 MB, measured)
    emb = np.empty((len(rows), width or source.dim), np.float32) if "embedding" in columns else None
    parts: dict[str, list[Any]] = {c: [] for c in columns if c != "embedding"}
    start = 0
    for f in source.files:
        lo, hi = np.searchsorted(sorted_rows, [start, start + f.rows])
        if hi > lo:
            local = sorted_rows[lo:hi] - start
            offsets = f.row_group_offsets
            pf = _open(f.url)
            groups = np.searchsorted(offsets, local, side="right") - 1
            for g in np.unique(groups):
                mine = np.nonzero(groups == g)[0]
                sel = local[mine] - offsets[g]
                first = 0
                for batch in pf.iter_batches(batch_size=READ_BATCH, row_groups=[int(g)], columns=list(columns),
                                             use_threads=False):
                    inside = (sel >= first) & (sel < first + batch.num_rows)
                    picked = sel[inside] - first
                    first += batch.num_rows
                    if not len(picked):
                        continue
                    for i, c in enumerate(columns):
                        if c == "embedding":
                            x = vectors(batch.column(i), source.dim, f"{f.url} row group {g}")
                            emb[order[lo + mine[inside]]] = x[picked] if through is None else through(x[picked])
                        else:
                            parts[c].append(batch.column(i).take(pa.array(picked)).to_pylist())
        start += f.rows
    out: dict[str, Any] = {}
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    for c in columns:
        if c == "embedding":
            out[c] = emb
        else:
            flat = [x for p in parts[c] for x in p]
            out[c] = [flat[i] for i in inverse]
    return out
