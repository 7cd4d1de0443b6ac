"""Counts that reconcile: every listed input is in exactly one of embeddings, failures or carried, or the run fails.

Two independent sources, compared by the launcher after the pipeline:

- the output tables, counted from their Parquet footers (never by reading the tables; the failures table is read
  for its ``stage`` and ``error`` columns only), where the launcher sees them;
- Beam's ``ldot`` counters, which the workers report to the runner, where the runner gives them to the launcher.

When the workers wrote somewhere the launcher does not see (a relative path in their own working directory, a
filesystem it does not share) the two disagree, and ``RunCounts.check`` raises ``CountsMismatchError`` (exit 1)
naming the numbers instead of reporting an empty run as a success. A runner that gives no metrics gets
``"unknown"`` in the report, never zeros.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.parquet as pq
from apache_beam.metrics.metric import MetricsFilter

from core.errors import LdotError
from core.paths import parquet_files

log = logging.getLogger(__name__)

NAMESPACE = "ldot"
UNKNOWN = "unknown"
# The counters of transforms/ the reconciliation rests on: inputs listed (and input specs that could not be listed,
# one failure row each), images encoded in this run, rows carried over from the previous snapshot.
LISTED, LIST_FAILED, ENCODED, CARRIED = "listed", "failed_list", "encoded", "carried"


class CountsMismatchError(LdotError):
    """The output tables do not hold what the pipeline's own counters say it produced."""


def table_files(directory: str) -> list[str]:
    """The part files of an output table (``core.paths.parquet_files``); none when the stage wrote nothing."""
    fs, path = fsspec.core.url_to_fs(directory)
    if not fs.isdir(path):
        return []
    try:
        return parquet_files(directory)
    except FileNotFoundError:  # the folder exists but holds no part file
        return []


def failure_rows(directory: str) -> list[dict[str, Any]]:
    """Every row of a failures table (small by the failure-rate guard), for printing them."""
    rows: list[dict[str, Any]] = []
    for url in table_files(directory):
        with fsspec.open(url, "rb") as f:
            rows += pq.read_table(f).to_pylist()
    return rows


def parquet_rows(directory: str) -> int:
    """Rows of a Parquet directory, from each file's footer."""
    total = 0
    for url in table_files(directory):
        with fsspec.open(url, "rb") as f:
            total += pq.read_metadata(f).num_rows
    return total


def failure_breakdown(directory: str) -> tuple[dict[str, int], dict[str, int]]:
    """(rows per stage, rows per error kind) of a failures table, reading those two columns only."""
    stages: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for url in table_files(directory):
        with fsspec.open(url, "rb") as f:
            table = pq.read_table(f, columns=["stage", "error"])
        stages.update(table.column("stage").to_pylist())
        errors.update(table.column("error").to_pylist())
    return dict(sorted(stages.items())), dict(sorted(errors.items()))


def counter_totals(counters: list[Any], attempted: bool = False) -> dict[str, int]:
    """Beam ``MetricResult`` counters of our namespace summed over steps, by name. Committed values (exact, what the
    accounting needs) unless ``attempted`` (live while bundles run: progress); either one where a runner has only it."""
    totals: Counter[str] = Counter()
    for c in counters:
        if c.key.metric.namespace == NAMESPACE:
            first, other = (c.attempted, c.committed) if attempted else (c.committed, c.attempted)
            totals[c.key.metric.name] += int((first if first is not None else other) or 0)
    return dict(sorted(totals.items()))


def ldot_counters(result: Any) -> dict[str, int] | None:
    """The ``ldot`` counters of a finished run; ``None`` when the runner gives the launcher no metrics (or none of
    ours: a run that listed nothing still reports ``listed`` = 0)."""
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception as e:  # runners without metrics raise NotImplementedError, others their own errors
        log.info("the runner reports no metrics (%s: %s): counts from the output tables only", type(e).__name__, e)
        return None
    return counter_totals(counters) or None


@dataclass(frozen=True)
class RunCounts:
    """What one embed run produced: table rows (footers) and, when the runner gave them, its counters."""

    output: str
    embedded_rows: int          # rows of OUTPUT/embeddings: embedded in this run + carried over
    failed_rows: int            # rows of OUTPUT/failures
    failed_by_stage: dict[str, int]
    failed_by_error: dict[str, int]
    counters: dict[str, int] | None

    @classmethod
    def of_run(cls, result: Any, output: str, table: str = "embeddings") -> RunCounts:
        """``table``: where a finished input lands (``regions`` for a regions-only run)."""
        out = output.rstrip("/")
        by_stage, by_error = failure_breakdown(f"{out}/failures")
        return cls(out, parquet_rows(f"{out}/{table}"), parquet_rows(f"{out}/failures"), by_stage, by_error,
                   ldot_counters(result))

    def counter(self, name: str) -> int | str:
        """A counter's value, ``"unknown"`` when the runner gave no metrics, 0 when it gave metrics without it
        (a stage that never ran: no carried rows in a full run)."""
        return UNKNOWN if self.counters is None else self.counters.get(name, 0)

    @property
    def listed(self) -> int | str:
        """Inputs the pipeline listed, an input spec that could not be listed counting as one (its failure row);
        unknown without metrics or without listing (``--regions``)."""
        if self.counters is None or (LISTED not in self.counters and LIST_FAILED not in self.counters):
            return UNKNOWN
        return self.counters.get(LISTED, 0) + self.counters.get(LIST_FAILED, 0)

    def report(self) -> dict[str, Any]:
        """The ``counts`` of run.json; ``failure_rate`` is over the rows the tables hold."""
        total = self.embedded_rows + self.failed_rows
        return {"listed": self.listed, "inputs": total, "embedded": self.embedded_rows, "failed": self.failed_rows,
                "encoded": self.counter(ENCODED), "carried": self.counter(CARRIED),
                "failed_by_stage": self.failed_by_stage, "failed_by_error": self.failed_by_error,
                "failure_rate": self.failed_rows / total if total else 0.0,
                "sources": {"tables": "Parquet footers",
                            "counters": "Beam metrics" if self.counters is not None else "unknown: the runner "
                                        "reported no metrics, so the tables could not be checked against them"}}

    def check(self) -> None:
        """Raise ``CountsMismatchError`` unless listed == embedded + failed (carried rows are in the embeddings
        table) and embedded rows == encoded + carried, wherever the counters are known."""
        problems = []
        listed = self.listed
        if listed != UNKNOWN and listed != self.embedded_rows + self.failed_rows:
            problems.append(f"{listed} input(s) listed (Beam counters) but {self.embedded_rows} embedding row(s) + "
                            f"{self.failed_rows} failure row(s) = {self.embedded_rows + self.failed_rows} in the "
                            f"tables (Parquet footers)")
        if self.counters is not None and ENCODED in self.counters:
            made = self.counters[ENCODED] + self.counters.get(CARRIED, 0)
            if made != self.embedded_rows:
                problems.append(f"{self.counters[ENCODED]} encoded + {self.counters.get(CARRIED, 0)} carried = {made} "
                                f"(Beam counters) but {self.embedded_rows} row(s) in {self.output}/embeddings")
        if problems:
            raise CountsMismatchError(
                "counts do not reconcile: " + "; ".join(problems) + f". The workers wrote rows where this launcher "
                f"does not see them (is {self.output} on a filesystem both share, at the same path?) or lost them; "
                "nothing of this run should be used")
