"""WebDataset shards and inline-bytes Parquet as INPUTs: every sample / row lands exactly once (embedded or a
failure row), ids are ``<shard or file name>/<key>``, captions are kept, a bad member never stops its shard."""

from __future__ import annotations

import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.embed_job import EmbedJob, run_embed_job
from tests.helpers_pipeline import TINY_DETECTOR, TINY_ENCODER, encode, photo, read_table, write_tar
from transforms.records import ImageBytes
from transforms.sources.inline_parquet import parse_spec
from transforms.sources.webdataset import ReadShard, split_key

TINY = {"random_weights": True, "encoder_config": TINY_ENCODER, "detector_config": TINY_DETECTOR, "device": "cpu"}
JPG = encode(photo("astronaut.jpg", 48), "JPEG", quality=90)
PNG = encode(photo("coffee.jpg", 48), "PNG")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    shards = root / "shards"
    shards.mkdir()
    write_tar(shards / "00000.tar", [
        ("a.jpg", JPG), ("a.txt", b"an astronaut"), ("a.json", json.dumps({"w": 48}).encode()),
        ("b.png", PNG),
        ("c.txt", b"a caption without its image"),          # missing_image
        ("d.jpg", b"not a jpeg at all"),                     # decodes badly: a decode failure row
        ("e.jpg", JPG), ("e.png", PNG),                      # a second image for key e: duplicate_id
        ("a.cls", b"3"),                                     # key a again, later on: duplicate_id
    ])
    # a shard cut off in the middle of its second image
    write_tar(root / "whole.tar", [("x.jpg", JPG), ("y.jpg", JPG), ("z.jpg", PNG)])
    with tarfile.open(root / "whole.tar") as tar:
        cut = tar.getmember("y.jpg").offset_data + 100
    (shards / "00001.tar").write_bytes((root / "whole.tar").read_bytes()[:cut])
    table = pa.table({"key": ["k1", "k2", None, "k4", "k1"], "url": ["http://x/1", None, "http://x/3", "http://x/4",
                                                                    "http://x/5"],
                      "jpg": [JPG, PNG, JPG, b"", PNG]})
    pq.write_table(table, root / "part.parquet", row_group_size=2)  # three row groups: three worker elements
    out = root / "out"
    report = run_embed_job(EmbedJob(inputs=[str(shards / "*.tar"), f"parquet+bytes://{root}/part.parquet"],
                                    output=str(out), **TINY))
    return report, read_table(out / "embeddings"), read_table(out / "failures"), read_table(out / "captions")


def test_every_sample_and_row_lands_once(corpus):
    _, embedded, failed, _ = corpus
    outcomes: dict[str, list[str]] = {}
    for r in embedded:
        outcomes.setdefault(r["image_id"], []).append("embedded")
    for r in failed:
        outcomes.setdefault(r["image_id"], []).append(r["error"])
    assert {k: sorted(v) for k, v in outcomes.items()} == {
        "00000.tar/a": ["duplicate_id", "embedded"],  # its key again at the shard's end
        "00000.tar/b": ["embedded"],
        "00000.tar/c": ["missing_image"],
        "00000.tar/d": ["not_an_image"],
        "00000.tar/e": ["duplicate_id", "embedded"],  # e.jpg kept, e.png a failure row
        "00001.tar/x": ["embedded"],
        "00001.tar/y": ["truncated"],
        "00001.tar": ["bad_shard"],  # the rest of the shard, after the cut
        "part.parquet/k1": ["duplicate_id", "embedded"],  # a second row with key k1
        "part.parquet/k2": ["embedded"],
        "part.parquet/row-2": ["missing_id"],
        "part.parquet/k4": ["empty_file"],
    }


def test_ids_uris_and_captions(corpus):
    report, embedded, _, captions = corpus
    by_id = {r["image_id"]: r for r in embedded}
    assert by_id["00000.tar/a"]["uri"].endswith("shards/00000.tar#a.jpg")
    assert by_id["part.parquet/k1"]["uri"] == "http://x/1"
    assert by_id["part.parquet/k2"]["uri"].endswith("part.parquet#row=1")
    caption = {r["image_id"]: r for r in captions}["00000.tar/a"]
    assert caption["caption"] == "an astronaut" and json.loads(caption["metadata"]) == {"w": 48}
    assert report["counts"]["inputs"] == report["counts"]["embedded"] + report["counts"]["failed"]


def test_read_shard_member_over_the_limit_is_not_read(tmp_path):
    write_tar(tmp_path / "s.tar", [("big.jpg", b"\xff" * (len(PNG) + 1)), ("small.png", PNG)])
    out = list(ReadShard(max_bytes=len(PNG)).process((0, str(tmp_path / "s.tar"), "s.tar")))
    images = [o for o in out if isinstance(o, ImageBytes)]
    failed = [o.value for o in out if not isinstance(o, ImageBytes)]
    assert [i.image_id for i in images] == ["s.tar/small"]
    assert [(f["image_id"], f["error"]) for f in failed] == [("s.tar/big", "too_large")]


def test_split_key_and_spec():
    assert split_key("dir/abc.seg.png") == ("dir/abc", ".seg.png")
    path, columns = parse_spec("parquet+bytes:///d/x.parquet?bytes=image&id=sha")
    assert (path, columns.bytes, columns.id, columns.url) == ("/d/x.parquet", "image", "sha", "url")
    with pytest.raises(ValueError, match="unknown option"):
        parse_spec("parquet+bytes://a.parquet?byte=jpg")
