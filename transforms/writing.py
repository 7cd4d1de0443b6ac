"""Write rows as Parquet through Beam's file sinks: temp files first, renamed when the stage commits, so a
reader never sees a half-written part. Rows are batched into Arrow record batches (no per-float Python)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.parquetio import WriteToParquetBatched

EMBEDDING_DIM = 768


def embeddings_schema(dim: int = EMBEDDING_DIM) -> pa.Schema:
    return pa.schema([
        ("image_id", pa.string()), ("uri", pa.string()), ("content_sha256", pa.string()),
        ("embedding", pa.list_(pa.float32(), dim)), ("num_boxes", pa.int32()), ("width", pa.int32()),
        ("height", pa.int32()), ("model", pa.string()), ("detector", pa.string()),
    ])


FAILURES_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("stage", pa.string()),
                             ("error", pa.string()), ("message", pa.string())])


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    columns = {}
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if pa.types.is_fixed_size_list(field.type):
            flat = np.stack(values).astype(np.float32).reshape(-1) if values else np.empty(0, np.float32)
            columns[field.name] = pa.FixedSizeListArray.from_arrays(pa.array(flat), field.type.list_size)
        else:
            columns[field.name] = pa.array(values, type=field.type)
    return pa.Table.from_pydict(columns, schema=schema)


class WriteRows(beam.PTransform):
    """dict rows -> ``<prefix>-SSSSS-of-NNNNN.parquet`` files with ``schema`` (an empty input still writes one
    valid, empty file, so readers always find the table). ``max_rows_per_file`` caps a file's rows (default: as
    the runner's bundles fall)."""

    def __init__(self, file_path_prefix: str, schema: pa.Schema, batch_size: int = 512,
                 to_table: Callable[[list[dict[str, Any]]], pa.Table] | None = None,
                 max_rows_per_file: int | None = None) -> None:
        super().__init__()
        self.prefix = file_path_prefix
        self.schema = schema
        self.batch_size = min(batch_size, max_rows_per_file) if max_rows_per_file else batch_size
        self.to_table = to_table
        self.max_rows_per_file = max_rows_per_file

    def expand(self, rows: beam.PCollection) -> Any:
        schema, to_table = self.schema, self.to_table
        convert = (lambda batch: to_table(batch)) if to_table else (lambda batch: rows_to_table(batch, schema))
        write = WriteToParquetBatched(self.prefix, schema=schema, file_name_suffix=".parquet")
        if self.max_rows_per_file:
            # Each record of this sink is one table of at most ``batch_size`` rows. FileBasedSink takes
            # ``max_records_per_shard`` (and starts a new file when it is reached); WriteToParquetBatched builds
            # its sink without forwarding it, so it is set on that sink.
            write._sink.max_records_per_shard = self.max_rows_per_file // self.batch_size
        return (rows
                | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
                | "ToArrow" >> beam.Map(convert)
                | "Write" >> write)
