"""The query fast path: the text tower on ONNX Runtime, fp32 or int8, one intra-op thread per query.

    fast = QueryEncoder(model, precision="int8")       # exports the text tower once (seconds), then
    vectors = fast.encode_captions(["a dog on the beach"])  # [B, D] float32, like model.encode_captions

Why ONNX Runtime and not eager torch (``python -m bench.query`` measures all of this side by side; figures at
BERT-base size, a 12-token caption, batch 1, on 2 shared Zen 3 cores without AVX-512/VNNI):

- fp32: eager torch spends ~80 ms, ONNX Runtime ~40 ms for the same graph (max |err| ~4e-6): its MLAS GEMMs are
  faster at 12 rows than the BLAS torch calls, and LayerNorm/GELU/attention are fused.
- int8 (dynamic quantization of every MatMul weight, activations quantized per call): ONNX Runtime ~26 ms,
  torch's ``quantize_dynamic`` ~30 ms (and deprecated); with a busy neighbour process, torch's int8 at 2 threads
  degrades to ~160 ms, ONNX Runtime's at one thread stays ~27 ms. (Plain per-tensor int8; the outlier split
  below adds ~25% on MiniLM.)
- Threads: any intra-op parallelism at batch 1 synchronises a dozen times per layer; when another process holds
  a core, every barrier waits for a descheduled thread and two threads become many times slower than one.
  So a query runs on ONE intra-op thread, without spin-waiting, on the calling thread, and a machine's cores
  serve queries side by side: concurrent callers (the server's threads) run concurrently (ONNX Runtime releases
  the GIL), and a batch is cut into length-sorted chunks that ``workers`` threads encode in parallel.
  The session's thread count is its own setting, so nothing here touches torch's process-wide one.

int8 changes the numbers. A trained BERT's Linear inputs carry a few channels 10-30x the median one (and [CLS]
the largest values): one per-tensor activation scale stretched over them costs the rest most of their bits
(cosine to fp32 0.991 at worst on all-MiniLM-L6-v2 with real captions). So those channels, found on a few
calibration captions, stay in fp32 beside the int8 product (``OutlierSplitLinear``): worst cosine 0.998, mean
0.9986, top-10 overlap with fp32 0.94 on a built index, same top-1 (tests/test_query_encoder.py). ONNX Runtime's
block-wise 8-bit MatMulNBits reaches 0.9994 but runs 2-3x slower than fp32 on AVX2, so it is not offered.
fp32 is the default, int8 an opt-in, and evaluation always uses the eager model.
"""

from __future__ import annotations

import copy
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
from torch import nn

from encoders.batching import length_buckets
from encoders.lightningdot import LightningDOT

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "text_embedding"
MAX_CHUNK = 64  # rows per ONNX Runtime call in a large batch: bounds the activations, keeps the GEMMs full


OUTLIER_RATIO = 6.0  # an input channel whose calibration max |x| exceeds 6x the median channel's stays fp32
# Caption-like calibration texts: BERT's outlier channels are systematic (LayerNorm dims), not input-specific.
CALIBRATION = [
    "A man riding a bike down a busy street.", "Two cats sleeping on a couch.", "A plate of pasta with tomatoes.",
    "A group of children playing in the snow.", "An old stone bridge over a river at sunset.",
    "A woman in a red coat walking her dog.", "A train arriving at a crowded platform.",
    "A bowl of soup next to a loaf of bread.", "Surfers waiting for a wave on a sunny day.",
    "A tall building with many windows.", "A baby laughing in a high chair.", "Horses grazing in a green field.",
    "A chef chopping vegetables in a kitchen.", "A yellow taxi parked by the curb.",
    "People sitting at tables outside a cafe.", "A small boat on a calm lake surrounded by trees.",
]


class OutlierSplitLinear(nn.Module):
    """``linear(x)`` with a few outlier input channels apart: ``main`` sees them zeroed (and is quantized), the
    small ``outlier`` product keeps them in fp32 (LLM.int8()'s decomposition). A trained BERT's inputs to its
    Linears carry channels ~10-30x the median one; one per-tensor int8 scale stretched over those leaves ~4 bits
    to everything else (cosine to fp32 0.991 without, 0.998 with, on all-MiniLM-L6-v2)."""

    def __init__(self, linear: nn.Linear, channels: torch.Tensor) -> None:
        super().__init__()
        keep = torch.ones(linear.in_features)
        keep[channels] = 0.0
        self.register_buffer("keep", keep)
        self.register_buffer("channels", channels.clone())
        self.main = nn.Linear(linear.in_features, linear.out_features)
        self.outlier = nn.Linear(len(channels), linear.out_features, bias=False)
        with torch.no_grad():
            self.main.weight.copy_(linear.weight * keep[None])
            self.main.bias.copy_(linear.bias)
            self.outlier.weight.copy_(linear.weight[:, channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x * self.keep) + self.outlier(x.index_select(-1, self.channels))


def split_outlier_channels(model: LightningDOT, texts: list[str] = CALIBRATION,
                           ratio: float = OUTLIER_RATIO) -> tuple[nn.Module, int]:
    """A copy of the text tower whose Linears keep their outlier input channels (max |x| over ``texts`` above
    ``ratio`` x the median channel's) in ``OutlierSplitLinear``; -> (tower, number of split Linears)."""
    tower = copy.deepcopy(model.model.txt_model).to("cpu", torch.float32).eval()
    peaks: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
            peaks[name] = torch.maximum(peaks[name], x) if name in peaks else x
        return hook

    linears = {name: m for name, m in tower.named_modules() if isinstance(m, nn.Linear)}
    hooks = [m.register_forward_hook(record(name)) for name, m in linears.items()]
    ids, mask = model.tokenizer().encode(texts)
    with torch.inference_mode():
        tower(torch.as_tensor(ids), torch.as_tensor(mask))
    for h in hooks:
        h.remove()
    split = 0
    for name, linear in linears.items():
        peak = peaks[name]
        channels = (peak > ratio * peak.median()).nonzero().squeeze(1)
        if len(channels):
            parent = tower.get_submodule(name.rpartition(".")[0])
            setattr(parent, name.rpartition(".")[2], OutlierSplitLinear(linear, channels))
            split += 1
    return tower, split


def export_text_tower(tower: nn.Module, max_tokens: int, path: str | Path) -> Path:
    """Write a text tower as ONNX (dynamic batch and length, int64 inputs) with ``torch.onnx``."""
    # example sizes above 1: torch.export specialises dimensions of size 0 or 1
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    tokens = torch.export.Dim("tokens", min=1, max=max_tokens)
    shapes = ({0: batch, 1: tokens}, {0: batch, 1: tokens})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
        program = torch.onnx.export(tower, (ids, mask), dynamo=True, input_names=list(INPUTS), output_names=[OUTPUT],
                                    dynamic_shapes=shapes, external_data=False, verbose=False)
    path = Path(path)
    program.save(str(path), external_data=False)
    return path


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, expect_outliers: int = 0) -> Path:
    """ONNX Runtime dynamic quantization of every MatMul but the outlier ones: int8 weights per output channel in
    7 bits (``reduce_range``: without VNNI, AVX2's u8 x s8 multiply-add saturates at 8 bits), uint8 activations
    scaled per call."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_path))
    # The exporter's shape annotations trip the quantizer's own shape inference (it re-derives them anyway).
    del graph.graph.value_info[:]
    outliers = [node.name for node in graph.graph.node if node.op_type == "MatMul" and any(
        p.key == "namespace" and ".outlier" in p.value for p in node.metadata_props)]
    if len(outliers) != expect_outliers:
        raise RuntimeError(f"found {len(outliers)} outlier MatMuls in the exported graph, expected {expect_outliers}")
    quantize_dynamic(graph, str(int8_path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     nodes_to_exclude=outliers)
    return Path(int8_path)


def build_graph(model: LightningDOT, precision: str = "fp32") -> bytes:
    """The serialized ONNX graph of the model's text tower at ``precision``. int8: outlier channels split off
    (calibrated on ``CALIBRATION``, which needs the model's vocab), exported, then quantized."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    tower, split = (model.model.txt_model.to("cpu", torch.float32).eval(), 0) if precision == "fp32" else \
        split_outlier_channels(model)
    with tempfile.TemporaryDirectory(prefix="ldot-onnx-") as tmp:
        path = export_text_tower(tower, model.config.max_position_embeddings, Path(tmp) / "text_fp32.onnx")
        if precision == "int8":
            log.info("int8: %d Linears keep outlier input channels in fp32", split)
            path = quantize_int8(path, Path(tmp) / "text_int8.onnx", expect_outliers=split)
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
        parallel = len(parts) > 1 and self.workers > 1
        embedded = self._executor().map(encode, parts) if parallel else map(encode, parts)
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
