"""Beam's local job service with SDK workers as separate processes: the Flink/Dataflow worker model on one machine.

``PortableRunner`` submits the job to the service; the service starts the SDK harness as subprocesses
(``beam:env:harness_subprocess_python:v1``) in the service's own working directory, so a worker shares neither
memory nor the launcher's working directory, as on a cluster. (``LOOPBACK`` would run the workers as threads of
the launcher and hide exactly those mistakes.) Tests and ``bench.portable`` use it; anyone can, to try a
deployment before sending it to a cluster::

    with LocalJobService() as service:
        ldot index /data/photos --output /data/out ... *service.beam_args()

Every gRPC server the service opens is bound to 127.0.0.1 (Beam binds its worker-facing servers to every
interface), and ``stop`` ends the service's whole process group, workers included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUBPROCESS_ENVIRONMENT = "beam:env:harness_subprocess_python:v1"
WORKER_MAIN = "apache_beam.runners.worker.sdk_worker_main"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class JobServiceError(RuntimeError):
    """The job service did not come up (its log is in the message)."""


class LocalJobService:
    """A local Beam job service in its own process group and working directory; workers are its subprocesses.

    The service and its workers import the project from this checkout (``PYTHONPATH``, as a cluster's workers
    have it installed) and nothing else of the launcher's; ``env`` is added to their environment.
    """

    def __init__(self, python: str = sys.executable, env: dict[str, str] | None = None,
                 workdir: str | os.PathLike[str] | None = None, start_timeout_s: float = 120.0) -> None:
        self.python = python
        self.env = dict(env or {})
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ldot-job-service-")).resolve()
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "job-service.log"

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise JobServiceError("the job service is not running")
        return f"localhost:{self.port}"

    def beam_args(self) -> list[str]:
        """The flags that send a pipeline to this service, its workers started as ``python -m sdk_worker_main``."""
        return ["--runner=PortableRunner", f"--job_endpoint={self.endpoint}",
                f"--environment_type={SUBPROCESS_ENVIRONMENT}",
                f"--environment_config={self.python} -m {WORKER_MAIN}"]

    def start(self) -> LocalJobService:
        port_file = self.workdir / "job-service.port"
        port_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it; closed below
        try:
            self.process = subprocess.Popen(
                [self.python, "-m", "pipeline.job_service", "--port", "0", "--port_file", str(port_file),
                 "--staging_dir", str(self.workdir / "staging")],
                cwd=self.workdir, env=self._environment(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group: stop() ends it with every worker it started
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_tail = self._log_tail()  # before stop() removes the directory it is in
                self.stop()
                raise JobServiceError(f"the local job service did not start; its log:\n{log_tail}")
            time.sleep(0.1)
        self.port = int(port_file.read_text())
        return self

    def _environment(self) -> dict[str, str]:
        paths = [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), **self.env}

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL to what is left after a few seconds; idempotent."""
        if self.process is None:
            return
        pgid = self.process.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            deadline = time.monotonic() + 5.0
            while group_processes(pgid) and time.monotonic() < deadline:
                self.process.poll()  # reap the service itself; its workers are reaped by init
                time.sleep(0.05)
            if not group_processes(pgid):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.process, self.port = None, None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> LocalJobService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def group_processes(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from ``/proc``: the service and every worker it started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # exited while we looked
        if int(group) == pgid and state != "Z":
            pids.append(int(entry.name))
    return pids


def _bind_loopback_only() -> None:
    """Beam binds the servers its workers connect to (control, data, state, logging, artifacts) to ``[::]``, every
    interface; on a shared machine nothing else may reach them, so every ``[::]:port`` becomes ``127.0.0.1:port``.
    The clients connect to ``localhost:port``, which is that address."""
    import grpc

    make_server = grpc.server

    def server(*args: object, **kwargs: object) -> grpc.Server:
        srv = make_server(*args, **kwargs)
        add_port = srv.add_insecure_port

        def add_insecure_port(address: str) -> int:
            return add_port("127.0.0.1:" + address[len("[::]:"):] if address.startswith("[::]:") else address)

        srv.add_insecure_port = add_insecure_port  # type: ignore[method-assign]
        return srv

    grpc.server = server


def _end_with_parent() -> None:
    """The service runs in its own session, so a launcher killed outright (SIGKILL, no ``stop``) would leave it and
    its workers behind: when the parent is gone, end the whole group."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def main(argv: list[str]) -> None:
    """``python -m pipeline.job_service --port 0 --port_file F``: Beam's local job service, loopback only, ending
    with the process that started it."""
    import logging

    from apache_beam.runners.portability import local_job_service_main

    _bind_loopback_only()
    _end_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.basicConfig(level=logging.INFO)
    local_job_service_main.run(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
