"""An incremental run decides from the listing's size and version stamp: an untouched image is carried without
being opened, a touched one with the same bytes is re-hashed and carried, a changed one re-embedded;
``verify_content`` reads everything."""

from __future__ import annotations

import hashlib
import os

import pytest

from pipeline.embed_job import EmbedJob, run_embed_job
from tests.helpers_pipeline import TINY_DETECTOR, TINY_ENCODER, photo, read_table

TINY = {"random_weights": True, "encoder_config": TINY_ENCODER, "detector_config": TINY_DETECTOR, "device": "cpu"}


def embed(images, out, previous=None, **kw):
    report = run_embed_job(EmbedJob(inputs=[str(images)], output=str(out), previous=previous, **TINY, **kw))
    rows = {r["image_id"]: r for r in read_table(out / "embeddings")}
    return report["counters"], rows


@pytest.mark.slow
def test_untouched_unread_touched_rehashed_changed_reembedded(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name, source in (("a.jpg", "astronaut.jpg"), ("b.jpg", "coffee.jpg"), ("c.jpg", "rocket.jpg"),
                         ("d.jpg", "chelsea.jpg")):
        photo(source, 64).save(images / name, quality=90)
    _, first = embed(images, tmp_path / "run1")
    assert set(first) == {"a.jpg", "b.jpg", "c.jpg", "d.jpg"}

    # a: other bytes of the same size, its mtime put back: only a read could notice, and none may happen
    a = images / "a.jpg"
    st = a.stat()
    a.write_bytes(a.read_bytes()[::-1])
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    b = images / "b.jpg"  # touched: same bytes, a new mtime
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    c = images / "c.jpg"  # changed
    photo("coffee.jpg", 48).save(c, quality=80)

    counters, second = embed(images, tmp_path / "run2", previous=str(tmp_path / "run1" / "embeddings"))
    assert counters["read"] == 2 and counters["bytes_read"] == b.stat().st_size + c.stat().st_size  # b and c only
    assert counters["carried_unread"] == 2  # a and d
    assert counters["carried"] == 3 and counters["changed"] == 1 and counters.get("dropped", 0) == 0
    assert second["a.jpg"]["content_sha256"] == first["a.jpg"]["content_sha256"]  # never opened
    assert second["b.jpg"]["content_sha256"] == first["b.jpg"]["content_sha256"]  # re-hashed: the same bytes
    assert second["c.jpg"]["content_sha256"] == hashlib.sha256(c.read_bytes()).hexdigest() != \
        first["c.jpg"]["content_sha256"]

    counters, third = embed(images, tmp_path / "run3", previous=str(tmp_path / "run2" / "embeddings"),
                            verify_content=True)
    assert counters["read"] == 4 and "carried_unread" not in counters
    # now noticed: its reversed bytes are read, differ from the snapshot's, and do not decode
    assert "a.jpg" not in third
    assert [(f["image_id"], f["stage"]) for f in read_table(tmp_path / "run3" / "failures")] == [("a.jpg", "decode")]
    assert counters["changed"] == 1 and counters["carried"] == 3


def test_a_snapshot_without_stamps_reads_everything(tmp_path):
    """An older snapshot (no stamps/ table) still works: every image is read and compared by content."""
    images = tmp_path / "images"
    images.mkdir()
    photo("astronaut.jpg", 48).save(images / "a.jpg")
    embed(images, tmp_path / "run1")
    for name in os.listdir(tmp_path / "run1" / "stamps"):
        os.remove(tmp_path / "run1" / "stamps" / name)
    counters, rows = embed(images, tmp_path / "run2", previous=str(tmp_path / "run1" / "embeddings"))
    assert counters["read"] == 1 and counters["carried"] == 1 and set(rows) == {"a.jpg"}
