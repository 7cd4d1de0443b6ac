"""Read the pipeline's embedding tables (Parquet: a file, a directory of files, or a glob; local or fsspec URL)
whole into memory, for exact evaluation. Paths and vectors are read the way the index build reads them
(``index.source``), so both accept and refuse the same tables."""

from __future__ import annotations

from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow.parquet as pq

from index.errors import EmbeddingsError
from index.source import expand_inputs, vectors


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


def read_embeddings(spec: str | list[str]) -> Embeddings:
    files = expand_inputs(spec)
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
        vec = vectors(table.column("embedding"), where=path)
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
    stacked = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    keep, duplicates, conflicting = [], 0, []
    for row in order:
        if keep and ids[keep[-1]] == ids[row]:
            duplicates += 1
            if not np.array_equal(stacked[keep[-1]], stacked[row]):
                conflicting.append(ids[row])
            continue
        keep.append(row)
    sel = np.asarray(keep)
    return Embeddings(
        image_ids=[ids[r] for r in keep],
        vectors=np.ascontiguousarray(stacked[sel]),
        uris=[uris[r] for r in keep] if uris is not None else None,
        models=sorted(models),
        files=files,
        duplicates=duplicates,
        conflicting=sorted(set(conflicting)),
    )
