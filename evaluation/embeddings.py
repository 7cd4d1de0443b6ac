"""Read the pipeline's embedding tables (Parquet: a file, a directory of files, or a glob; local or fsspec URL)."""

from __future__ import annotations

from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.paths import parquet_files
from index.errors import EmbeddingsError


@dataclass
class Embeddings:
    """Rows sorted by ``image_id`` (so tie-breaking never depends on file order), duplicates dropped."""

    image_ids: list[str]
    vectors: np.ndarray  # [N, D] float32, C-contiguous
    uris: list[str] | None
    models: list[str]  # distinct fingerprints in the ``model`` column ([] when the column is absent)
    files: list[str]
    duplicates: int = 0  # rows dropped because their image_id appeared before (same vector)
    conflicting: list[str] = field(default_factory=list)  # image_ids whose duplicate rows had different vectors

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.image_ids)


def expand_paths(spec: str | list[str]) -> list[str]:
    """A file, a directory (every ``*.parquet`` below it), or a glob -> sorted list of files (with protocol)."""
    return parquet_files(spec, missing=EmbeddingsError)


def _vectors(column: pa.ChunkedArray, path: str) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise EmbeddingsError(f"{path}: {arr.null_count} rows have a null embedding")
    if pa.types.is_fixed_size_list(arr.type):
        dim = arr.type.list_size
        values = arr.flatten()
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lengths = arr.value_lengths().to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            raise EmbeddingsError(f"{path}: embeddings of different lengths {sorted(set(lengths.tolist()))[:5]}")
        dim = int(lengths[0]) if len(lengths) else 0
        values = arr.flatten()
    else:
        raise EmbeddingsError(f"{path}: 'embedding' must be a list of floats, got {arr.type}")
    if values.null_count:
        raise EmbeddingsError(f"{path}: embeddings contain null values")
    out = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(arr), dim)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).any(axis=1).sum())
        raise EmbeddingsError(f"{path}: {bad} embeddings contain NaN or inf")
    return out


def read_embeddings(spec: str | list[str]) -> Embeddings:
    files = expand_paths(spec)
    ids: list[str] = []
    uris: list[str] | None = []
    models: set[str] = set()
    blocks: list[np.ndarray] = []
    dim = None
    for path in files:
        with fsspec.open(path, "rb") as f:
            schema = pq.read_schema(f)
            names = set(schema.names)
            missing = {"image_id", "embedding"} - names
            if missing:
                raise EmbeddingsError(f"{path}: missing column(s) {sorted(missing)}; has {sorted(names)}")
            cols = [c for c in ("image_id", "embedding", "uri", "model") if c in names]
            f.seek(0)
            table = pq.read_table(f, columns=cols)
        if table.num_rows == 0:
            continue
        vec = _vectors(table.column("embedding"), path)
        if dim is not None and vec.shape[1] != dim:
            raise EmbeddingsError(f"{path}: embeddings of dim {vec.shape[1]}, earlier files had {dim}")
        dim = vec.shape[1]
        blocks.append(vec)
        ids += [str(x) for x in table.column("image_id").to_pylist()]
        if uris is not None and "uri" in names:
            uris += [str(x) if x is not None else "" for x in table.column("uri").to_pylist()]
        else:
            uris = None
        if "model" in names:
            models.update(str(m) for m in table.column("model").unique().to_pylist() if m is not None)
    if not ids:
        raise EmbeddingsError(f"{spec}: no rows")
    vectors = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    keep, duplicates, conflicting = [], 0, []
    for row in order:
        if keep and ids[keep[-1]] == ids[row]:
            duplicates += 1
            if not np.array_equal(vectors[keep[-1]], vectors[row]):
                conflicting.append(ids[row])
            continue
        keep.append(row)
    sel = np.asarray(keep)
    return Embeddings(
        image_ids=[ids[r] for r in keep],
        vectors=np.ascontiguousarray(vectors[sel]),
        uris=[uris[r] for r in keep] if uris is not None else None,
        models=sorted(models),
        files=files,
        duplicates=duplicates,
        conflicting=sorted(set(conflicting)),
    )
