"""A directory INPUT is split into sub-directories that workers list in parallel: every object is listed exactly
once across the splits, ids stay relative to the INPUT, and duplicate ids are still resolved to one."""

from __future__ import annotations

import apache_beam as beam
import fsspec
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.listing import FANOUT, ListImages, Prefix, split_input
from transforms.records import FAILED, ImageRef

NAMES = [f"d{a:02d}/e{b:02d}/f{c:02d}.jpg" for a in range(20) for b in range(10) for c in range(10)]  # 2000


@pytest.fixture(params=["local", "memory"])
def corpus(request, tmp_path):
    if request.param == "local":
        for name in NAMES:
            path = tmp_path / "corpus" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        (tmp_path / "corpus" / "top.png").write_bytes(b"x")
        yield str(tmp_path / "corpus")
        return
    fs = fsspec.filesystem("memory")
    root = f"/fanout-{tmp_path.name}"
    for name in [*NAMES, "top.png"]:
        fs.pipe(f"{root}/{name}", b"x")
    yield f"memory://{root}"
    fs.rm(root, recursive=True)


def check(inputs: list[str], ids: list[str], winners: list[int], errors: list[str]) -> None:
    """Run ListImages on a real Beam pipeline: the listed ids, the input position of each, the failure kinds."""
    with BeamTestPipeline() as p:
        out = p | ListImages(inputs)
        assert_that(out["refs"] | "Ids" >> beam.Map(lambda r: r.image_id), equal_to(ids), label="Ids")
        assert_that(out["refs"] | "Winners" >> beam.Map(lambda r: r.order[0]), equal_to(winners), label="Winners")
        assert_that(out[FAILED] | "Errors" >> beam.Map(lambda f: f["error"]), equal_to(errors), label="Errors")


def test_split_into_several_prefixes(corpus):
    items = list(split_input(corpus, 0))
    prefixes = [i for i in items if isinstance(i, Prefix)]
    assert len(prefixes) >= 20 and len(prefixes) <= FANOUT * 10
    assert [i.image_id for i in items if isinstance(i, ImageRef)] == ["top.png"]


def test_every_object_listed_once_and_duplicates_resolved(corpus):
    everything = [*NAMES, "top.png"]
    # the same INPUT twice: every id twice; one each survives, relative to the INPUT, from the first INPUT
    check([corpus, corpus], everything, [0] * len(everything), ["duplicate_id"] * len(everything))


def test_empty_directory_tree_is_one_failure_row(tmp_path):
    (tmp_path / "empty" / "a" / "b").mkdir(parents=True)
    check([str(tmp_path / "empty")], [], [], ["no_images"])
