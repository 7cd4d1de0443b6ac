"""Counts that reconcile: rows from Parquet footers only, Beam's counters from the PipelineResult ("unknown" when a
runner gives none), and a mismatch that names its numbers; the launcher's progress lines from those counters."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult, PipelineState

from core.errors import EXIT_ERROR
from pipeline.accounting import UNKNOWN, CountsMismatchError, RunCounts, failure_breakdown, ldot_counters, parquet_rows
from pipeline.progress_poll import counters_line, follow


def write_parts(directory, tables: list[pa.Table], row_group_size: int = 2) -> None:
    directory.mkdir(parents=True)
    for i, table in enumerate(tables):
        pq.write_table(table, directory / f"part-{i:05d}.parquet", row_group_size=row_group_size)


def test_rows_come_from_footers_only(tmp_path):
    write_parts(tmp_path / "emb", [pa.table({"image_id": [f"{i}" for i in range(n)],
                                            "x": [b"\x01" * 4000] * n}) for n in (5, 3)])
    (tmp_path / "emb" / "_SUCCESS").write_text("")  # not a part file
    part = tmp_path / "emb" / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[100:6000] = b"\xff" * 5900  # wreck the data pages, keep the footer
    part.write_bytes(bytes(data))
    with pytest.raises(OSError):
        pq.read_table(part)  # the table cannot be read any more ...
    assert parquet_rows(str(tmp_path / "emb")) == 8  # ... its footer still counts it
    assert parquet_rows(str(tmp_path / "absent")) == 0


def test_failure_breakdown_reads_two_columns(tmp_path):
    write_parts(tmp_path / "failures", [pa.table({"image_id": ["a", "b", "c"], "stage": ["read", "decode", "decode"],
                                                 "error": ["not_found", "truncated", "truncated"],
                                                 "message": ["m", "m", "m"]})])
    assert failure_breakdown(str(tmp_path / "failures")) == ({"decode": 2, "read": 1},
                                                             {"not_found": 1, "truncated": 2})


class Count(beam.DoFn):
    def __init__(self, name: str) -> None:
        self.name = name
        self.counter = Metrics.counter("ldot", name)
        self.other = Metrics.counter("elsewhere", name)

    def process(self, x):
        self.counter.inc()
        self.other.inc()
        yield x


def test_counters_from_a_real_run_and_unknown_without_metrics():
    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    items = p | beam.Create(range(5))
    _ = items | "Listed" >> beam.ParDo(Count("listed"))
    _ = items | beam.Filter(lambda x: x < 3) | "Encoded" >> beam.ParDo(Count("encoded"))
    result = p.run()
    result.wait_until_finish()
    assert ldot_counters(result) == {"encoded": 3, "listed": 5}  # the ldot namespace only
    assert ldot_counters(PipelineResult(PipelineState.DONE)) is None  # Beam's base result: no metrics


def counts(embedded: int, failed: int, counters: dict[str, int] | None) -> RunCounts:
    return RunCounts("/data/out", embedded, failed, {}, {}, counters)


def test_counts_that_reconcile():
    full = counts(7, 2, {"listed": 9, "encoded": 7, "decoded": 7})
    full.check()
    assert full.report()["listed"] == 9 and full.report()["carried"] == 0
    incremental = counts(5, 1, {"listed": 5, "failed_list": 1, "encoded": 2, "carried": 3})
    incremental.check()  # one unlistable input spec counts as one listed input (its failure row)
    assert incremental.report()["listed"] == 6


def test_counts_unknown_without_metrics():
    no_metrics = counts(7, 2, None)
    no_metrics.check()  # nothing to check against: not an error, but said so
    report = no_metrics.report()
    assert report["listed"] == report["encoded"] == report["carried"] == UNKNOWN
    assert report["embedded"] == 7 and report["sources"]["counters"].startswith("unknown")
    precomputed = counts(4, 0, {"encoded": 4})  # --regions: nothing listed
    precomputed.check()
    assert precomputed.report()["listed"] == UNKNOWN


def test_mismatch_names_the_numbers():
    with pytest.raises(CountsMismatchError) as e:
        counts(0, 0, {"listed": 11, "encoded": 7}).check()  # tables written where the launcher does not look
    assert e.value.exit_code == EXIT_ERROR
    message = str(e.value)
    assert "11 input(s) listed (Beam counters) but 0 embedding row(s) + 0 failure row(s) = 0" in message
    assert "7 encoded + 0 carried = 7 (Beam counters) but 0 row(s) in /data/out/embeddings" in message
    with pytest.raises(CountsMismatchError, match="3 encoded \\+ 2 carried = 5"):
        counts(4, 1, {"listed": 5, "encoded": 3, "carried": 2}).check()


def test_progress_line_from_counters():
    line = counters_line({"listed": 11, "failed_list": 1, "encoded": 5, "carried": 1, "failed_read": 1,
                          "failed_read_not_found": 1, "failed_decode": 2, "decoded": 5}, 10.0)
    assert line.startswith("[") and "10/12  83%  embedded 6, failed 4" in line  # subcounts not added twice


def test_follow_a_blocking_local_run_prints_one_final_line():
    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    items = p | beam.Create(range(3))
    _ = items | "Listed" >> beam.ParDo(Count("listed"))
    _ = items | "Encoded" >> beam.ParDo(Count("encoded"))
    lines: list[str] = []
    assert follow(p.run(), echo=lines.append) == PipelineState.DONE
    assert len(lines) == 1 and "3/3 100%  embedded 3, failed 0" in lines[0] and "final" in lines[0]


def slow(x: int) -> int:
    import time

    time.sleep(0.5)
    return x


def test_follow_a_job_on_worker_processes(job_service):
    """PortableRunner returns at once; the launcher follows the job, prints the one final line from the counters
    the runner reports at the end, and leaves them for the accounting after it."""
    p = beam.Pipeline(options=PipelineOptions(job_service.beam_args()))
    items = p | beam.Create(range(5)) | beam.Reshuffle()
    _ = items | "Listed" >> beam.ParDo(Count("listed"))
    _ = items | beam.Map(slow) | "Encoded" >> beam.ParDo(Count("encoded"))
    result = p.run()
    lines: list[str] = []
    assert follow(result, every_s=0.5, poll_s=0.1, echo=lines.append) == PipelineState.DONE
    assert any("no counts from the runner yet" in line for line in lines[:-1])  # Beam's job service: at the end
    assert lines[-1].startswith("[ldot] [") and "5/5 100%  embedded 5, failed 0" in lines[-1]
    assert all("partial" not in line for line in lines)
    assert ldot_counters(result) == {"encoded": 5, "listed": 5}
