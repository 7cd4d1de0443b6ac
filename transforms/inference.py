"""What both model stages share on top of Beam's ``RunInference``: where a model copy lives, the one-element
fallback after a failed batch, and turning each per-element result into an output or a failure row.

``RunInference`` owns loading (once per process, or once per GPU for the machine when the model is shared across
the worker's SDK processes), batching (``batch_elements_kwargs``) and its inference metrics. Our handlers never
let a batch raise: ``run_inference`` returns one ``PredictionResult`` per element whose ``inference`` is the
output or an ``InferenceFailure``, so one bad image costs only itself and still lands as a failure row.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import apache_beam as beam
import fasteners
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from core.device import resolve_device
from transforms.models import DetectorSpec, EncoderSpec
from transforms.records import FAILED, failure

ExampleT = TypeVar("ExampleT")
OutputT = TypeVar("OutputT")


@dataclass(frozen=True)
class InferenceFailure:
    """The result of an element the model could not process: ``error`` a short kind, ``message`` the detail."""

    error: str
    message: str


def each_or_failure(items: Sequence[ExampleT], predict: Callable[[Sequence[ExampleT]], Sequence[OutputT]],
                    ) -> list[OutputT | InferenceFailure]:
    """``predict`` on the whole batch; if that raises, on one item at a time, so only the bad items fail."""
    try:
        outputs = list(predict(items))
        if len(outputs) != len(items):
            raise RuntimeError(f"the model returned {len(outputs)} results for {len(items)} inputs")
        return outputs
    except Exception as e:
        if len(items) == 1:
            return [InferenceFailure(type(e).__name__, str(e))]
    results: list[OutputT | InferenceFailure] = []
    for item in items:
        try:
            results.append(predict([item])[0])
        except Exception as e:
            results.append(InferenceFailure(type(e).__name__, str(e)))
    return results


def claim_gpu(key: str, count: int, directory: str | None = None) -> int:
    """The next of this machine's ``count`` GPUs for a copy of model ``key``, round robin across processes.

    Copies are loaded by whichever SDK process gets there first, each unaware of the others, so the turn is a
    counter file under a machine-wide lock (the temp directory is per machine on Dataflow and local runs)."""
    path = os.path.join(directory or tempfile.gettempdir(), f"ldot-gpu-turn-{key}")
    with fasteners.InterProcessLock(f"{path}.lock"):
        try:
            with open(path) as f:
                turn = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            turn = 0
        with open(path, "w") as f:
            f.write(str(turn + 1))
    return turn % count


class SpecModelHandler(ModelHandler[ExampleT, PredictionResult, Any], Generic[ExampleT]):
    """A ``ModelHandler`` over one of our picklable specs.

    ``share_across_processes``: ``None`` (default) shares on CUDA and not on the CPU. Shared, the worker holds
    one copy per GPU, served to all its SDK processes (Dataflow runs several per worker, and each would
    otherwise load its own copy onto the same GPU); not shared, each process loads its own, as CPU work wants.
    """

    def __init__(self, spec: EncoderSpec | DetectorSpec, share_across_processes: bool | None = None,
                 **batching: Any) -> None:
        super().__init__(min_batch_size=1, **batching)
        self.spec = spec
        self.share = share_across_processes
        self.key = hashlib.sha256(repr(spec).encode()).hexdigest()[:16]

    def _on_cuda(self) -> bool:
        return resolve_device(self.spec.device).startswith("cuda")

    def share_model_across_processes(self) -> bool:
        """Asked on the worker (``setup``), so ``auto`` resolves against the worker's own devices."""
        return self._on_cuda() if self.share is None else self.share

    def model_copies(self) -> int:
        if not (self.share_model_across_processes() and resolve_device(self.spec.device) == "cuda"):
            return 1
        import torch

        return max(1, torch.cuda.device_count())

    def load_model(self) -> Any:
        """On a machine with several GPUs and a plain ``cuda`` device, each copy takes the next GPU."""
        device = resolve_device(self.spec.device)
        if device == "cuda":
            import torch

            if torch.cuda.device_count() > 1:
                device = f"cuda:{claim_gpu(self.key, torch.cuda.device_count())}"
        return self.spec.load(device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.device}, key={self.key})"


class SplitResults(beam.DoFn):
    """PredictionResult -> the stage's output (main) or a failure row (``failed``), counted under ``ldot``."""

    def __init__(self, stage: str, ok_counter: str, failed_counter: str) -> None:
        self.stage = stage
        self.ok = Metrics.counter("ldot", ok_counter)
        self.failed = Metrics.counter("ldot", failed_counter)

    def process(self, result: PredictionResult) -> Iterator[Any]:
        example, inference = result.example, result.inference
        if isinstance(inference, InferenceFailure):
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(
                FAILED, failure(example.image_id, example.uri, self.stage, inference.error, inference.message))
            return
        self.ok.inc()
        yield self.output(example, inference)

    def output(self, example: Any, inference: Any) -> Any:
        raise NotImplementedError
