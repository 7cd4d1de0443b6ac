"""One progress display in the launcher, fed by the runner's metrics, for runs whose workers are other processes.

An in-process run (FnApiRunner, one worker) shows the bar its own DoFns drive (``transforms.progress``): every
stage runs in the launcher's process. Anywhere else each worker's tally holds only that worker's share, so the
launcher follows the run instead: ``follow`` polls the job's state and Beam's ``ldot`` counters while it runs
(Dataflow reports them live; Beam's portable job service, and so Flink, only when the job ends) and prints the
final line from the counters the runner reports at the end. Workers' own lines say they are partial
(``transforms.progress.partial_prefix``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineState

from pipeline.accounting import CARRIED, ENCODED, LIST_FAILED, LISTED, NAMESPACE, counter_totals
from transforms.progress import progress_line

# Stage totals among the ``failed_*`` counters (the others, ``failed_read_not_found`` ..., break them down).
FAILED_STAGES = ("failed_list", "failed_duplicate_id", "failed_read", "failed_decode", "failed_extract",
                 "failed_encode")


def live_counters(result: Any) -> dict[str, int]:
    """The ``ldot`` counters of a running job as the runner reports them now (empty when it reports none yet):
    attempted values, which move while bundles run (committed ones may only appear at the end)."""
    # portable_runner.PipelineResult keeps its first metrics() answer; a poll must neither read a stale one nor
    # leave one behind for the accounting after the run
    cached = hasattr(result, "_metrics")
    try:
        if cached:
            result._metrics = None
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception:  # a runner without metrics, or one that cannot answer while the job starts
        return {}
    finally:
        if cached:
            result._metrics = None
    return counter_totals(counters, attempted=True)


def counters_line(counters: dict[str, int], seconds: float) -> str:
    """A progress line (``transforms.progress.progress_line``) from the counters of the whole job."""
    listed = counters.get(LISTED, 0) + counters.get(LIST_FAILED, 0)
    ok = counters.get(ENCODED, 0) + counters.get(CARRIED, 0)
    failed = sum(counters.get(name, 0) for name in FAILED_STAGES)
    return progress_line(ok, failed, seconds, listed or None)


def follow(result: Any, every_s: float = 5.0, echo: Callable[[str], None] = print,
           poll_s: float = 1.0) -> Any:
    """Wait for ``result`` (from ``Pipeline.run()``), printing a line every ``every_s`` seconds and a final one from
    the runner's counters; returns the final state (raises as ``wait_until_finish`` does on a failed job)."""
    start = last = time.monotonic()
    while not PipelineState.is_terminal(result.state):
        time.sleep(poll_s)
        now = time.monotonic()
        if now - last < every_s:
            continue
        last = now
        counters = live_counters(result)
        if counters:
            echo(f"[ldot] {counters_line(counters, now - start)}")
        else:
            echo(f"[ldot] running for {now - start:.0f}s, no counts from the runner yet (some give them only when "
                 "the job ends)")
    state = result.wait_until_finish()
    counters = live_counters(result)
    if counters:
        echo(f"[ldot] {counters_line(counters, time.monotonic() - start)} (final, from the runner's counters)")
    else:
        echo(f"[ldot] {state}: the runner reported no counters")
    return state
