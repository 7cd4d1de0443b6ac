"""The last step of an index build (``Done``) runs once every branch has delivered and refuses a build that lacks
a shard or the ground truth: the pipeline fails and writes no ``_done``."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest

from index import storage
from index.shards import done_url
from pipeline.beam_args import pipeline_options
from tests.helpers_index import BEAM
from transforms.index_shards import GROUNDTRUTH, SHARD, Done

ENTRY = {"shard": 0, "path": "shards/shard-00000-of-00002.index", "count": 5}


@pytest.mark.parametrize(("branches", "message"), [
    ({SHARD: [ENTRY]}, r"1 shard entries for 2 shard\(s\) \(missing \[1\], repeated or unknown \[\]\)"),
    ({SHARD: [ENTRY, ENTRY, {**ENTRY, "shard": 1, "count": 0}]}, r"repeated or unknown \[0\]"),
    ({SHARD: [ENTRY, {**ENTRY, "shard": 1, "count": 0}], GROUNDTRUTH: []}, "ground truth of the held-out queries is "
                                                                           "missing"),
    ({SHARD: [ENTRY, {**ENTRY, "shard": 1, "count": 1}]}, "the shards hold 6 vectors but the inputs have 5 rows"),
], ids=["missing-shard", "repeated-shard", "missing-groundtruth", "wrong-count"])
def test_the_last_step_refuses_an_incomplete_build(tmp_path, branches, message):
    vdir = str(tmp_path / "version")
    with pytest.raises(Exception, match=message), beam.Pipeline(options=pipeline_options(BEAM)) as p:
        _ = {kind: p | f"Create{kind}" >> beam.Create(items) for kind, items in branches.items()} | Done(vdir, 2, 5)
    assert not storage.exists(done_url(vdir))


def test_the_last_step_writes_done_once_all_branches_delivered(tmp_path):
    vdir = str(tmp_path / "version")
    with beam.Pipeline(options=pipeline_options(BEAM)) as p:
        shards = p | "Shards" >> beam.Create([{**ENTRY, "shard": 1, "count": 0}, ENTRY])
        truth = p | "Truth" >> beam.Create(["groundtruth.npz"])
        _ = {SHARD: shards, GROUNDTRUTH: truth} | Done(vdir, 2, 5)
    done = json.loads(storage.read_text(done_url(vdir)))
    assert [s["shard"] for s in done["shards"]] == [0, 1] and done["shards"][0] == ENTRY
    assert (done["n_shards"], done["vectors"], done["groundtruth"]) == (2, 5, ["groundtruth.npz"])
