"""``ldot build-index`` / ``ldot search`` / ``ldot index-info`` end to end with a tiny text tower."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from encoders.config import TINY_CONFIG
from encoders.lightningdot import LightningDOT
from index import layout
from jobs.cli import main
from tests.test_index import write_embeddings

WORDS = ["a", "the", "dog", "cat", "man", "child", "red", "blue", "green", "runs", "sleeps", "on", "in", "beach",
         "park", "snow", "."]
CAPTIONS = [f"the {c} {s} {v} on the {p} ." for c, s, v, p in
            [("red", "dog", "runs", "beach"), ("blue", "cat", "sleeps", "park"), ("green", "man", "runs", "snow"),
             ("red", "child", "sleeps", "beach"), ("blue", "dog", "runs", "snow"), ("green", "cat", "runs", "park"),
             ("red", "man", "sleeps", "park"), ("blue", "child", "runs", "beach")]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("search")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    model = LightningDOT.random(TINY_CONFIG, seed=0)
    with torch.no_grad():  # spread the random text tower's outputs (N(0, 0.02) weights make them near-parallel)
        for p in model.model.txt_model.parameters():
            if p.ndim == 2:
                p.mul_(25)
    checkpoint = root / "tiny.pt"
    model.save(checkpoint)
    model = LightningDOT.from_checkpoint(checkpoint, vocab=str(vocab))
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
    result = CliRunner().invoke(main, ["build-index", str(emb), "--output", index_root, "--shards", "2",
                                       "--queries", "4", "--direct_num_workers", "1"])
    assert result.exit_code == 0, result.output
    return type("S", (), dict(root=root, vocab=str(vocab), checkpoint=str(checkpoint), index=index_root,
                              model=model, ids=ids, build_output=result.output))


def test_build_index_cli_prints_reasoning_and_publishes(setup):
    assert "factory: IDMap,Flat" in setup.build_output and "exact search (Flat)" in setup.build_output
    assert "published" in setup.build_output
    result = CliRunner().invoke(main, ["index-info", setup.index])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["version"] == layout.read_current(setup.index) and manifest["count"] == len(CAPTIONS)
    assert manifest["model"] == setup.model.fingerprint and manifest["beam_args"] == ["--direct_num_workers", "1"]
    assert CliRunner().invoke(main, ["index-info", setup.index, "--verify"]).exit_code == 0
    assert CliRunner().invoke(main, ["index-info", str(setup.root / "nothing")]).exit_code == 1


def test_search_cli_finds_the_captioned_image_and_writes_html(setup, tmp_path):
    html = tmp_path / "results.html"
    args = ["search", setup.index, CAPTIONS[0], CAPTIONS[7], "-k", "3", "--checkpoint", setup.checkpoint,
            "--vocab", setup.vocab, "--json", "--html", str(html)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    first, last = out["queries"]
    assert first["results"][0]["image_id"] == "photo-0" and last["results"][0]["image_id"] == "photo-7"
    assert len(first["results"]) == 3 and first["results"][0]["score"] >= first["results"][1]["score"]
    page = html.read_text()
    assert page.count("data:image/jpeg;base64,") >= 4 and "https://example.org/photo-7.jpg" in page
    plain = CliRunner().invoke(main, ["search", setup.index, CAPTIONS[2], "--checkpoint", setup.checkpoint,
                                      "--vocab", setup.vocab])
    assert plain.exit_code == 0 and "photo-2" in plain.stdout.splitlines()[1]


def test_search_refuses_another_model_unless_forced(setup):
    base = ["search", setup.index, "a dog", "--random-weights", "--encoder-config", str(TINY_CONFIG),
            "--vocab", setup.vocab]
    refused = CliRunner().invoke(main, base)
    assert refused.exit_code != 0 and "--force" in refused.output and setup.model.fingerprint in refused.output
    forced = CliRunner().invoke(main, [*base, "--force", "-k", "2"])
    assert forced.exit_code == 0, forced.output
    assert "warning" in forced.stderr and len(forced.stdout.splitlines()) == 3


def test_build_index_cli_errors_are_clear(setup, tmp_path):
    result = CliRunner().invoke(main, ["build-index", str(tmp_path / "missing.parquet"), "--output",
                                       str(tmp_path / "ix")])
    assert result.exit_code != 0 and "not found" in result.output
    assert not Path(tmp_path / "ix" / "CURRENT").exists()
