"""The local job service the portable tests run on: workers really are other processes in another directory,
its servers listen on loopback only, and everything it started ends with it (on failure, and when its launcher
is killed outright)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.job_service import LocalJobService, group_processes

REPO = Path(__file__).resolve().parents[2]


def where_workers_run(service: LocalJobService, out: Path) -> list[tuple[int, str, int]]:
    """(pid, cwd, process group) of the worker that ran each element, written by the workers to ``out``."""
    with beam.Pipeline(options=PipelineOptions(service.beam_args())) as p:
        _ = (p | beam.Create(range(4))
             | beam.Map(lambda _: f"{os.getpid()}\t{os.getcwd()}\t{os.getpgid(0)}")
             | beam.io.WriteToText(str(out / "where"), shard_name_template=""))
    return [(int(pid), cwd, int(group)) for pid, cwd, group in
            (line.split("\t") for line in (out / "where").read_text().splitlines())]


def listening_sockets(pids: list[int]) -> list[str]:
    """Local addresses (hex ``ADDR:PORT`` as in /proc/net/tcp*) the given processes listen on."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd) if fd.is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1])
    return found


def test_workers_are_other_processes_in_another_directory(job_service, tmp_path):
    seen = where_workers_run(job_service, tmp_path)
    assert len(seen) == 4
    pids = {pid for pid, _, _ in seen}
    assert os.getpid() not in pids
    assert {cwd for _, cwd, _ in seen} == {str(job_service.workdir)} != {os.getcwd()}
    assert {group for _, _, group in seen} == {job_service.process.pid}  # the service's group: stop() ends them


def test_servers_listen_on_loopback_only(job_service, tmp_path):
    where_workers_run(job_service, tmp_path)  # a job ran: the worker-facing servers were opened too
    addresses = listening_sockets(group_processes(job_service.process.pid))
    assert addresses
    loopback = ("0100007F:", "00000000000000000000000001000000:", "0000000000000000FFFF00000100007F:")
    assert all(a.startswith(loopback) for a in addresses), addresses


def test_stop_ends_every_process_even_when_the_job_fails(tmp_path):
    def fail(x: int) -> int:
        raise RuntimeError(f"worker {os.getpid()} fails on purpose")

    service = LocalJobService()
    with pytest.raises(RuntimeError, match="fails on purpose"), service:
        group = service.process.pid
        workdir = service.workdir
        with beam.Pipeline(options=PipelineOptions(service.beam_args())) as p:
            _ = p | beam.Create([1]) | beam.Map(fail)
    assert group_processes(group) == []
    assert not workdir.exists()
    service.stop()  # idempotent


def test_service_ends_with_a_launcher_killed_outright(tmp_path):
    """A launcher that dies by SIGKILL runs no cleanup: the service notices and ends its own group."""
    script = ("import sys, time; from pipeline.job_service import LocalJobService\n"
              "s = LocalJobService(workdir=sys.argv[1]).start()\n"
              "print(s.process.pid, flush=True); time.sleep(600)\n")
    launcher = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    group = None
    try:
        group = int(launcher.stdout.readline())
        assert group_processes(group)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 15
        while group_processes(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_processes(group) == []
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if group is not None and group_processes(group):
            os.killpg(group, signal.SIGKILL)
