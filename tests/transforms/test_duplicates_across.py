"""An image_id that arrives both as a listed file and as a source sample (or from two sources) is resolved to one
by the listing's rule: the INPUT given first wins, whichever kind it is; the other is a duplicate_id row."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.helpers_pipeline import encode, photo, write_tar
from transforms.duplicates import OnePerIdAcross
from transforms.listing import ListImages
from transforms.records import FAILED
from transforms.sources import ReadSources

JPG = encode(photo("astronaut.jpg", 32), "JPEG", quality=90)
PNG = encode(photo("coffee.jpg", 32), "PNG")


@pytest.fixture
def inputs(tmp_path):
    write_tar(tmp_path / "s.tar", [("a.jpg", JPG), ("b.png", PNG)])
    (tmp_path / "file-a.jpg").write_bytes(JPG)
    (tmp_path / "own.jpg").write_bytes(JPG)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"uri": str(tmp_path / "file-a.jpg"), "image_id": "s.tar/a"}) + "\n"
                        + json.dumps({"uri": str(tmp_path / "own.jpg"), "image_id": "own"}) + "\n")
    return str(manifest), str(tmp_path / "s.tar"), tmp_path


def resolve(specs: list[str], refs: list, images: list, failed: list) -> None:
    with BeamTestPipeline() as p:
        one = (p | "List" >> ListImages(specs))["refs"], (p | "Sources" >> ReadSources(specs))["bytes"]
        out = one | OnePerIdAcross()
        assert_that(out["refs"] | "Refs" >> beam.Map(lambda r: (r.image_id, r.uri)), equal_to(refs), label="Refs")
        assert_that(out["bytes"] | "Bytes" >> beam.Map(lambda b: (b.image_id, b.uri)), equal_to(images),
                    label="Bytes")
        assert_that(out[FAILED] | "Failed" >> beam.Map(lambda f: (f["image_id"], f["uri"], f["error"])),
                    equal_to(failed), label="Failed")


def test_a_listed_file_given_first_beats_the_source_sample(inputs):
    manifest, shard, root = inputs
    resolve([manifest, shard], refs=[("s.tar/a", str(root / "file-a.jpg")), ("own", str(root / "own.jpg"))],
            images=[("s.tar/b", f"{shard}#b.png")], failed=[("s.tar/a", f"{shard}#a.jpg", "duplicate_id")])


def test_a_source_given_first_beats_the_listed_file_and_a_second_copy_of_itself(inputs):
    manifest, shard, root = inputs
    resolve([shard, manifest, shard], refs=[("own", str(root / "own.jpg"))],
            images=[("s.tar/a", f"{shard}#a.jpg"), ("s.tar/b", f"{shard}#b.png")],
            failed=[("s.tar/a", str(root / "file-a.jpg"), "duplicate_id"),
                    ("s.tar/a", f"{shard}#a.jpg", "duplicate_id"), ("s.tar/b", f"{shard}#b.png", "duplicate_id")])
