"""The query fast path: the text tower on ONNX Runtime, fp32 or int8, one intra-op thread per query.

    fast = QueryEncoder(model, precision="int8")       # exports the text tower once (seconds), then
    vectors = fast.encode_captions(["a dog on the beach"])  # [B, D] float32, like model.encode_captions

Why ONNX Runtime and not eager torch (``python -m bench.query`` measures all of this side by side; figures at
BERT-base size, a 12-token caption, batch 1, on 2 shared Zen 3 cores without AVX-512/VNNI):

- fp32: eager torch spends ~80 ms, ONNX Runtime ~40 ms for the same graph (max |err| ~4e-6): its MLAS GEMMs are
  faster at 12 rows than the BLAS torch calls, and LayerNorm/GELU/attention are fused.
- int8 (dynamic quantization of every MatMul weight, activations quantized per call): ONNX Runtime ~26 ms,
  torch's ``quantize_dynamic`` ~30 ms (and deprecated); with a busy neighbour process, torch's int8 at 2 threads
  degrades to ~160 ms, ONNX Runtime's at one thread stays ~27 ms.
- Threads: any intra-op parallelism at batch 1 synchronises a dozen times per layer; when another process holds
  a core, every barrier waits for a descheduled thread and two threads become many times slower than one.
  So a query runs on ONE intra-op thread, without spin-waiting, on the calling thread, and a machine's cores
  serve queries side by side: concurrent callers (the server's threads) run concurrently (ONNX Runtime releases
  the GIL), and a batch is cut into length-sorted chunks that ``workers`` threads encode in parallel.
  The session's thread count is its own setting, so nothing here touches torch's process-wide one.

int8 changes the numbers (cosine to fp32 >= 0.999 on real captions, checked in tests/test_query_encoder.py);
fp32 is the default, and evaluation always uses the eager model.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from encoders.batching import length_buckets
from encoders.lightningdot import LightningDOT

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "text_embedding"
MAX_CHUNK = 64  # rows per ONNX Runtime call in a large batch: bounds the activations, keeps the GEMMs full


def export_text_tower(model: LightningDOT, path: str | Path) -> Path:
    """Write the model's text tower as ONNX (dynamic batch and length, int64 inputs) with ``torch.onnx``."""
    tower = model.model.txt_model.to("cpu", torch.float32).eval()
    cfg = model.config
    # example sizes above 1: torch.export specialises dimensions of size 0 or 1
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    tokens = torch.export.Dim("tokens", min=1, max=cfg.max_position_embeddings)
    shapes = ({0: batch, 1: tokens}, {0: batch, 1: tokens})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
        program = torch.onnx.export(tower, (ids, mask), dynamo=True, input_names=list(INPUTS), output_names=[OUTPUT],
                                    dynamic_shapes=shapes, external_data=False, verbose=False)
    path = Path(path)
    program.save(str(path), external_data=False)
    return path


def quantize_int8(fp32_path: str | Path, int8_path: str | Path) -> Path:
    """ONNX Runtime dynamic quantization of every MatMul: int8 weights per output channel in 7 bits (``reduce_range``:
    without VNNI, AVX2's u8 x s8 multiply-add saturates at 8 bits), uint8 activations scaled per call."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_path))
    # The exporter's shape annotations trip the quantizer's own shape inference (it re-derives them anyway).
    del graph.graph.value_info[:]
    quantize_dynamic(graph, str(int8_path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    return Path(int8_path)


def build_graph(model: LightningDOT, precision: str = "fp32") -> bytes:
    """The serialized ONNX graph of the model's text tower at ``precision`` (export, then quantize for int8)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    with tempfile.TemporaryDirectory(prefix="ldot-onnx-") as tmp:
        path = export_text_tower(model, Path(tmp) / "text_fp32.onnx")
        if precision == "int8":
            path = quantize_int8(path, Path(tmp) / "text_int8.onnx")
        return path.read_bytes()


class QueryEncoder:
    """``encode_texts`` / ``encode_captions`` of a ``LightningDOT`` model on ONNX Runtime (CPU). ``graph``: the
    bytes ``build_graph`` gave for this model and precision, to make several encoders without exporting again."""

    def __init__(self, model: LightningDOT, precision: str = "fp32", *, threads_per_query: int = 1,
                 workers: int | None = None, graph: bytes | None = None) -> None:
        import onnxruntime as ort

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if model.device.type != "cpu":
            raise ValueError(f"the ONNX Runtime query path runs on the CPU; the model is on {model.device}")
        if threads_per_query < 1:
            raise ValueError(f"threads_per_query must be >= 1, got {threads_per_query}")
        self.model = model
        self.config = model.config
        self.precision = precision
        self.threads_per_query = threads_per_query
        self.workers = workers or len(os.sched_getaffinity(0))
        t0 = time.perf_counter()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads_per_query
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # spin-waiting threads steal the core a busy neighbour (or a concurrent query) needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(graph or build_graph(model, precision), options,
                                            providers=["CPUExecutionProvider"])
        self.build_seconds = time.perf_counter() - t0
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        log.info("query encoder: ONNX Runtime %s, %d thread(s) per query, %d workers, built in %.1fs",
                 precision, threads_per_query, self.workers, self.build_seconds)

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    def describe(self) -> dict[str, object]:
        return {"engine": "onnxruntime", "precision": self.precision, "threads_per_query": self.threads_per_query,
                "workers": self.workers, "fingerprint": self.fingerprint}

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        width = max(int(mask.sum(1).max()), 1)
        return self.session.run([OUTPUT], {INPUTS[0]: np.ascontiguousarray(ids[:, :width]),
                                           INPUTS[1]: np.ascontiguousarray(mask[:, :width])})[0]

    def encode_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """[B, L] token ids and 0/1 mask -> [B, D] float32. One query runs on the calling thread; a batch is cut
        into length-sorted chunks encoded by ``workers`` threads side by side."""
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.asarray(attention_mask, dtype=np.int64)
        self.model.check_text_inputs(ids, mask)
        if ids.shape[0] <= 1:
            return self._run(ids, mask) if ids.shape[0] else np.empty((0, self.config.project_dim), np.float32)
        parts = list(length_buckets(mask.sum(1), self._chunk(ids.shape[0])))
        encode = lambda idx: self._run(ids[idx], mask[idx])  # noqa: E731
        embedded = self._executor().map(encode, parts) if len(parts) > 1 else map(encode, parts)
        out = np.empty((ids.shape[0], self.config.project_dim), dtype=np.float32)
        for idx, emb in zip(parts, embedded, strict=True):
            out[idx] = emb
        return out

    def _chunk(self, n: int) -> int:
        """Rows per session call. int8 scales activations over the whole call, so there a query's embedding would
        depend on its batch-mates: one row per call (the GEMMs of one 12-token query are already ~full)."""
        return 1 if self.precision == "int8" else min(MAX_CHUNK, math.ceil(n / self.workers))

    def encode_captions(self, texts: list[str]) -> np.ndarray:
        """Raw strings -> [B, D], tokenized exactly as ``LightningDOT.encode_captions`` does."""
        ids, mask = self.model.tokenizer().encode(texts)
        return self.encode_texts(ids, mask)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ldot-query")
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
