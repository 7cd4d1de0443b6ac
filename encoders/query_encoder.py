"""The query fast path: the text tower on ONNX Runtime, fp32 or int8, one intra-op thread per query.

    fast = QueryEncoder(model, precision="int8")       # exports the text tower once (seconds), then
    vectors = fast.encode_captions(["a dog on the beach"])  # [B, D] float32, like model.encode_captions

Why ONNX Runtime and not eager torch (``python -m bench.query`` measures all of this side by side and is the way
to get figures for a given machine; its latest run, at BERT-base size with random weights, a 16-token query,
batch 1, one thread, on 2 shared Zen 3 cores without AVX-512/VNNI under other agents' load: fast fp32 49.4 ms,
int8 32.4 ms, against FLOP floors of 37 and 18 ms):

- fp32: the same graph as eager torch (max |err| ~4e-6), faster: MLAS GEMMs beat the BLAS torch calls at a
  dozen rows, and LayerNorm/GELU/attention are fused.
- int8 (dynamic quantization, activations quantized per call): ONNX Runtime's, ~0.66x the fast fp32 latency above;
  torch's ``quantize_dynamic`` is deprecated and degrades several-fold at 2 threads beside a busy neighbour.
- Threads: any intra-op parallelism at batch 1 synchronises a dozen times per layer; when another process holds
  a core, every barrier waits for a descheduled thread and two threads become many times slower than one (on
  this shared machine, never idle, two are slower even without our own neighbour: bench.query's "fp32 intra-op"
  variant shows it). So the encoder takes a thread budget and spends it per call: a query runs on ONE
  intra-op thread, without spin-waiting, on the calling thread, whatever the budget (so a larger budget never
  slows a query); concurrent callers (the server's threads) run side by side (ONNX Runtime releases the GIL),
  and a batch is cut into length-sorted chunks that up to ``threads`` threads encode in parallel, one intra-op
  thread each. The session's thread count is its own setting, so nothing here touches torch's process-wide one.
  (Latest bench.query, BERT-base, one query: 2-thread ÷ 1-thread budget p50 0.98 fp32, 1.02 int8.)

int8 changes the numbers. A trained BERT's Linear inputs carry a few channels 10-30x the median one (and [CLS]
the largest values): one per-tensor activation scale stretched over them costs the rest most of their bits
(cosine to fp32 0.990 at worst on all-MiniLM-L6-v2 with real captions). So those channels, found on a few
calibration captions, stay in fp32 beside the int8 product (``OutlierSplitLinear``); weights are uint8 per
channel at full 8 bits (``quantize_int8`` says why not int8), and the six Linears a per-node sensitivity pass
ranks first stay fp32 (``sensitive_linears``): worst cosine 0.9992 over 90 real captions (0.9994 on the test's
30), top-10 overlap with fp32 0.96 on a built index, same top-1 (tests/encoders/test_query_encoder.py), at 0.68x
the fp32 latency (MiniLM, batch 1; the split costs ~0.1x of that). ONNX Runtime's block-wise 8-bit MatMulNBits
reaches 0.9994 but runs 2-3x slower than fp32 on AVX2, so it is not offered. fp32 is the default, int8 an
opt-in, and evaluation always uses the eager model.
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


OUTLIER_RATIO = 3.0  # an input channel whose calibration max |x| exceeds 3x the median channel's stays fp32
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
    to everything else (min cosine to fp32 0.992 without, 0.9990 with a ratio of 3, 0.9983 of 6, on
    all-MiniLM-L6-v2: ratio 2 reaches 0.9992 but keeps 2031 channels in fp32 and runs at 0.81x fp32, not 0.62x)."""

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


def sensitive_linears(num_layers: int) -> set[str]:
    """The Linears int8 leaves in fp32 whole: those a per-node sensitivity pass ranked first (quantizing each MatMul
    alone, 1 - min cosine to fp32 over 90 real captions, all-MiniLM-L6-v2 with the outlier split at ratio 3, in
    1e-6): layer L-2 FFN output 151, L-2 value 81, L-1 attention output 65, L-1 value 64, head output 63, L-2 FFN
    input 48; every other MatMul 45 or less (all 40 together: 889, i.e. min cosine 0.99897). Error piles up at the
    top of the stack, where nothing is left to average it out; V carries it to the output unlike Q and K, whose
    errors the softmax flattens. Keeping these six: min cosine 0.99923 at the same latency (0.68x fp32 either way),
    keeping nine: 0.99940 but 0.80x fp32 (the ninth, layer 0's FFN output, runs on every token)."""
    top, below = f"bert.encoder.layer.{num_layers - 1}", f"bert.encoder.layer.{num_layers - 2}"
    names = {f"{top}.attention.output.dense", f"{top}.attention.self.value", "encode_proj.3"}
    if num_layers >= 2:
        names |= {f"{below}.output.dense", f"{below}.attention.self.value", f"{below}.intermediate.dense"}
    return names


def _module_of(node) -> str:
    """The Linear an exported MatMul comes from (``...layer.4.output.dense``; ``.main`` of a split one dropped)."""
    scope = next((p.value for p in node.metadata_props if p.key == "namespace"), "").split("/")
    name = scope[-2].partition(":")[0] if len(scope) >= 2 else ""
    return name.removesuffix(".main")


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


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, num_layers: int, expect_outliers: int = 0) -> Path:
    """ONNX Runtime dynamic quantization of every MatMul but the outlier ones and ``sensitive_linears``: uint8
    weights per output channel, uint8 activations scaled per call. Measured on all-MiniLM-L6-v2 (min cosine over 90
    real captions, outlier split at ratio 3, nothing else kept): u8 x u8 0.99897, ``QInt8`` weights with
    ``reduce_range`` (7 bits: AVX2's u8 x s8 multiply-add saturates at 8 without VNNI) 0.99851; at ratio 6,
    ``QInt8`` at 8 bits 0.987 (that saturation). u8 x u8 runs through MLAS's widening kernel, no slower (9.3 vs
    9.5 ms at ratio 6). Without the split: per-channel u8 x u8 0.992, per-tensor 0.983."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_path))
    # The exporter's shape annotations trip the quantizer's own shape inference (it re-derives them anyway).
    del graph.graph.value_info[:]
    matmuls = [node for node in graph.graph.node if node.op_type == "MatMul"]
    outliers = [node.name for node in matmuls if _module_of(node).endswith(".outlier")]
    if len(outliers) != expect_outliers:
        raise RuntimeError(f"found {len(outliers)} outlier MatMuls in the exported graph, expected {expect_outliers}")
    wanted = sensitive_linears(num_layers)
    sensitive = [node.name for node in matmuls if _module_of(node) in wanted]
    if len(sensitive) != len(wanted):
        raise RuntimeError(f"found {len(sensitive)} of the {len(wanted)} sensitive MatMuls in the exported graph")
    quantize_dynamic(graph, str(int8_path), weight_type=QuantType.QUInt8, per_channel=True,
                     nodes_to_exclude=outliers + sensitive)
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
            path = quantize_int8(path, Path(tmp) / "text_int8.onnx", model.config.num_layers, expect_outliers=split)
        return path.read_bytes()


def ort_session(graph: bytes, intra_op_threads: int = 1):
    """An ONNX Runtime CPU session of ``graph``. One intra-op thread is what ``QueryEncoder`` uses (the module
    docstring says why); bench/query.py also times 2 to show it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # spin-waiting threads steal the core a busy neighbour (or a concurrent query) needs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


class QueryEncoder:
    """``encode_texts`` / ``encode_captions`` of a ``LightningDOT`` model on ONNX Runtime (CPU). ``graph``: the
    bytes ``build_graph`` gave for this model and precision, to make several encoders without exporting again."""

    def __init__(self, model: LightningDOT, precision: str = "fp32", *, threads: int | None = None,
                 graph: bytes | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if model.device.type != "cpu":
            raise ValueError(f"the ONNX Runtime query path runs on the CPU; the model is on {model.device}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.model = model
        self.config = model.config
        self.precision = precision
        self.threads = threads or len(os.sched_getaffinity(0))
        t0 = time.perf_counter()
        self.session = ort_session(graph or build_graph(model, precision))
        self.build_seconds = time.perf_counter() - t0
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        log.info("query encoder: ONNX Runtime %s, a budget of %d thread(s), built in %.1fs",
                 precision, self.threads, self.build_seconds)

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    def describe(self) -> dict[str, object]:
        return {"engine": "onnxruntime", "precision": self.precision, "threads": self.threads,
                "fingerprint": self.fingerprint}

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        width = max(int(mask.sum(1).max()), 1)
        return self.session.run([OUTPUT], {INPUTS[0]: np.ascontiguousarray(ids[:, :width]),
                                           INPUTS[1]: np.ascontiguousarray(mask[:, :width])})[0]

    def encode_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """[B, L] token ids and 0/1 mask -> [B, D] float32. The thread budget is spent per call: one query runs on
        the calling thread alone (whatever the budget, so a larger budget never slows it); a batch is cut into
        length-sorted chunks that up to ``threads`` threads encode side by side, one intra-op thread each."""
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.asarray(attention_mask, dtype=np.int64)
        self.model.check_text_inputs(ids, mask)
        if ids.shape[0] <= 1:
            return self._run(ids, mask) if ids.shape[0] else np.empty((0, self.config.project_dim), np.float32)
        parts = list(length_buckets(mask.sum(1), self._chunk(ids.shape[0])))
        encode = lambda idx: self._run(ids[idx], mask[idx])  # noqa: E731
        parallel = len(parts) > 1 and self.threads > 1
        embedded = self._executor().map(encode, parts) if parallel else map(encode, parts)
        out = np.empty((ids.shape[0], self.config.project_dim), dtype=np.float32)
        for idx, emb in zip(parts, embedded, strict=True):
            out[idx] = emb
        return out

    def _chunk(self, n: int) -> int:
        """Rows per session call. int8 scales activations over the whole call, so there a query's embedding would
        depend on its batch-mates: one row per call (the GEMMs of one 12-token query are already ~full)."""
        return 1 if self.precision == "int8" else min(MAX_CHUNK, math.ceil(n / self.threads))

    def encode_captions(self, texts: list[str]) -> np.ndarray:
        """Raw strings -> [B, D], tokenized exactly as ``LightningDOT.encode_captions`` does."""
        ids, mask = self.model.tokenizer().encode(texts)
        return self.encode_texts(ids, mask)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ldot-query")
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
