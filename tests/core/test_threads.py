"""``--workers N``: each worker process gets its share of the CPU threads, set in the worker's own setup."""

from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from core.threads import cpu_share, share_cpu_threads


def test_cpu_share():
    assert (cpu_share(3, cpus=8), cpu_share(16, cpus=2), cpu_share(1, cpus=4)) == (2, 1, 4)


def test_one_process_or_an_explicit_pool_keeps_its_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert share_cpu_threads(4, cpus=8) is None  # the user sized the pool
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert share_cpu_threads(1) is None and share_cpu_threads(None) is None


class ReportThreads(beam.DoFn):
    """What a model-loading DoFn does in setup (before its first forward pass), then what torch uses."""

    def setup(self) -> None:
        self.threads = share_cpu_threads(2, cpus=8)

    def process(self, x):
        import torch

        yield f"{os.getpid()} {self.threads} {torch.get_num_threads()}"


@pytest.mark.slow
def test_each_worker_process_gets_its_share(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the workers inherit the launcher's environment
    options = PipelineOptions(["--runner=FnApiRunner", "--direct_num_workers=2",
                               "--direct_running_mode=multi_processing"])
    with beam.Pipeline(options=options) as p:
        _ = (p | beam.Create(range(8)) | beam.Reshuffle() | beam.ParDo(ReportThreads())
             | beam.io.WriteToText(str(tmp_path / "threads"), shard_name_template=""))
    seen = [line.split() for line in (tmp_path / "threads").read_text().splitlines()]
    assert len(seen) == 8
    assert str(os.getpid()) not in {pid for pid, _, _ in seen}
    assert {(set_to, used) for _, set_to, used in seen} == {("4", "4")}
