"""A process's progress lines: the whole run's bar in an in-process run; elsewhere its own share, labelled as
partial, with no total, percentage or end (the launcher's display speaks for the whole run)."""

from __future__ import annotations

import os
import re

from apache_beam.internal import pickler

from transforms.progress import EMBEDDED, LISTED, STAGE_FAILED, CountProgress, Tally, partial_prefix


def test_whole_and_partial_line_text():
    whole, partial = Tally(every=3600), Tally(every=3600, partial=True)
    for t in (whole, partial):
        t.total, t.ok, t.failed = 4, 1, 1  # 4 inputs listed here, 1 embedded, 1 failed
    assert whole.line(2.0) == ("[###############...............] 2/4  50%  embedded 1, failed 1  1.0 images/s  "
                               "ETA 0m02s")
    assert partial.line(2.0) == f"worker {os.getpid()}, partial: embedded 1, failed 1  1.0 images/s"
    assert partial_prefix(17) == "worker 17, partial: "


def test_a_partial_tally_prints_its_share_at_once_and_never_a_finished_run(capsys):
    whole, partial = Tally(every=3600), Tally(every=3600, partial=True)
    for t in (partial, whole):
        for kind in (LISTED, LISTED, EMBEDDED, STAGE_FAILED):
            t.add(kind)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    # the partial one prints on its first count (a short share would print nothing otherwise), then only when due;
    # the whole one when the last input lands: 2 of 2 is the run's end only where this process saw the whole run
    assert re.fullmatch(rf"\d\d:\d\d:\d\d \[ldot\] worker {os.getpid()}, partial: embedded 1, failed 0  "
                        r"[\d.]+ images/s", lines[0]), lines[0]
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[ldot\] \[#+\] 2/2 100%  embedded 1, failed 1  [\d.]+ images/s  ETA 0m00s",
                        lines[1]), lines[1]


def test_the_partial_flag_travels_with_the_pickled_dofn():
    dofn = pickler.loads(pickler.dumps(CountProgress("run", EMBEDDED, partial=True)))
    dofn.setup()
    assert dofn.tally.partial
