"""Fixtures of the command-line tests: a tiny text tower whose captions each rank their own image first, and the
index built from those images with ``ldot build-index`` (shared by ``ldot search`` and ``ldot serve`` tests)."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.lightningdot import LightningDOT
from tests.helpers_index import write_embeddings, write_vocab

WORDS = ["a", "the", "dog", "cat", "man", "child", "red", "blue", "green", "runs", "sleeps", "on", "in", "beach",
         "park", "snow", "."]


CAPTIONS = [f"the {c} {s} {v} on the {p} ." for c, s, v, p in
            [("red", "dog", "runs", "beach"), ("blue", "cat", "sleeps", "park"), ("green", "man", "runs", "snow"),
             ("red", "child", "sleeps", "beach"), ("blue", "dog", "runs", "snow"), ("green", "cat", "runs", "park"),
             ("red", "man", "sleeps", "park"), ("blue", "child", "runs", "beach")]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint, ldot):
    from PIL import Image

    root = tmp_path_factory.mktemp("search")
    vocab = write_vocab(root / "vocab.txt", WORDS)
    model = LightningDOT.from_checkpoint(tiny_checkpoint, vocab=str(vocab))
    # image i's embedding = caption i's unit text embedding, so caption i ranks image i first
    text = model.encode_captions(CAPTIONS)
    images = text / np.linalg.norm(text, axis=1, keepdims=True)
    ids = [f"photo-{i}" for i in range(len(CAPTIONS))]
    emb = root / "emb.parquet"
    write_embeddings(emb, images, ids=ids, model=model.fingerprint)
    for i in range(len(ids)):  # local photos for the HTML thumbnails
        Image.new("RGB", (64, 48), (30 * i, 100, 200)).save(root / f"{ids[i]}.png")
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(emb)
    uris = [str(root / f"{i}.png") for i in ids]
    uris[-1] = "https://example.org/photo-7.jpg"
    table = table.set_column(table.schema.get_field_index("uri"), "uri", pa.array(uris, pa.string()))
    pq.write_table(table, emb)
    index_root = str(root / "index")
    result = ldot("build-index", str(emb), "--output", index_root, "--shards", "2",
                  "--queries", "4", "--direct_num_workers", "1")
    assert result.exit_code == 0, result.output
    return type("S", (), dict(root=root, vocab=str(vocab), checkpoint=str(tiny_checkpoint), index=index_root,
                              model=model, ids=ids, build_output=result.output))
