"""``ldot eval`` end to end with a tiny random text tower: captions file + embeddings Parquet -> table, JSON, PNG."""

from __future__ import annotations

import json
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encoders.config import TINY_CONFIG
from encoders.lightningdot import LightningDOT
from index.settings import BuildSettings
from pipeline.build_index_job import build_index
from tests.helpers_index import write_vocab

WORDS = [
    "a", "an", "the", "dog", "cat", "man", "woman", "child", "bike", "ball", "red", "blue", "green", "big", "small",
    "runs", "sits", "jumps", "sleeps", "on", "in", "near", "beach", "park", "street", "grass", "water", "snow",
    "with", "two", "three", "young", "old", "plays", "holds", "looks", "at", ",", ".",
]
SUBJECTS = ["dog", "cat", "man", "woman", "child", "bike"]
PLACES = ["beach", "park", "street", "grass", "water", "snow"]


def make_captions(n_images: int) -> list[tuple[str, list[str]]]:
    out = []
    for i in range(n_images):
        s, p, c = SUBJECTS[i % 6], PLACES[(i // 6) % 6], ["red", "blue", "green", "big", "small"][i % 5]
        out.append((f"{1000 + i}.jpg", [f"A {c} {s} runs on the {p} .", f"Two {s} near the {p} with a ball .",
                                          f"The {c} {s} sleeps in the {p} ."]))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("eval")
    vocab = write_vocab(root / "vocab.txt", [*WORDS, "A", "Two", "The"])
    model = LightningDOT.from_checkpoint(tiny_checkpoint, vocab=str(vocab))  # a text tower that tells captions apart
    data = make_captions(24)
    # image embedding = unit vector along its FIRST caption's text embedding: that caption then scores its own
    # image above every other (q·q/|q| = |q| >= q·x for any unit x), so text->image R@1 >= 1/3 by construction
    first = model.encode_captions([caps[0] for _, caps in data])
    images = first / np.linalg.norm(first, axis=1, keepdims=True)
    missing_name = data[-1][0]
    kept = [(name, v) for (name, _), v in zip(data, images, strict=True) if name != missing_name]
    ids = [f"gs://bucket/flickr/{name}" for name, _ in kept]
    vec = np.stack([v for _, v in kept]).astype(np.float32)
    emb = root / "emb"
    emb.mkdir()
    for part, sl in enumerate((slice(0, 10), slice(10, None))):
        pq.write_table(pa.table({
            "image_id": ids[sl], "uri": ids[sl], "content_sha256": ["0" * 64] * len(ids[sl]),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vec[sl].reshape(-1)), 768),
            "num_boxes": [36] * len(ids[sl]), "width": [640] * len(ids[sl]), "height": [480] * len(ids[sl]),
            "model": [model.fingerprint] * len(ids[sl])}), emb / f"part-{part}.parquet")
    karpathy = root / "dataset_flickr30k.json"
    karpathy.write_text(json.dumps({"images": [
        {"filename": name, "imgid": i, "split": "test" if i % 8 else "train" if i == 8 else "test",
         "sentences": [{"raw": c, "tokens": c.lower().split(), "imgid": i, "sentid": 3 * i + j}
                       for j, c in enumerate(caps)]} for i, (name, caps) in enumerate(data)]}))
    csv_rows = ["image_name|comment"] + [f"{name}|{c}" for i, (name, caps) in enumerate(data) if i != 8
                                         for c in caps]
    csv_path = root / "captions.csv"
    csv_path.write_text("\n".join(csv_rows) + "\n")
    return types.SimpleNamespace(root=root, vocab=str(vocab), model=model, checkpoint=str(tiny_checkpoint), data=data,
                                 emb=str(emb), ids=ids,
                                 vectors=vec, karpathy=str(karpathy), csv=str(csv_path), missing=missing_name)


def run_eval(ldot, setup, *args, ok=True):
    model = ["--random-weights", "--encoder-config", str(TINY_CONFIG)] if "--seed" in args else \
        ["--checkpoint", setup.checkpoint]
    base = ["eval", "--embeddings", setup.emb, *model, "--vocab", setup.vocab, "--device", "cpu"]
    result = ldot(*base, *args)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def expected_t2i(setup, names_captions, k):
    """Independent reference: encode, score against the evaluated images only (the split's gallery), stable
    argsort, look up the own image."""
    texts = [c for _, caps in names_captions for c in caps]
    gallery = [f"gs://bucket/flickr/{n}" for n, _ in names_captions]
    owners = [g for g, (_, caps) in zip(gallery, names_captions, strict=True) for _ in caps]
    vectors = setup.vectors[[setup.ids.index(g) for g in gallery]]
    order = np.argsort(-(setup.model.encode_captions(texts) @ vectors.T), axis=1, kind="stable")
    return float(np.mean([gallery.index(o) in row[:k] for row, o in zip(order, owners, strict=True)]))


def test_cli_karpathy_end_to_end(setup, tmp_path, ldot):
    out_json, out_png = tmp_path / "report.json", tmp_path / "recall.png"
    result = run_eval(ldot, setup, "--captions", setup.karpathy, "--split", "test", "--json", str(out_json),
                      "--plot", str(out_png), "--reference", "flickr30k", "--k", "1,5,10")
    rep = json.loads(out_json.read_text())
    # image 8 is in train; image 23 has no embedding: reported, not dropped silently
    assert rep["captions"]["images"] == 23 and rep["captions"]["captions"] == 69
    assert rep["missing"]["images"] == 1 and rep["missing"]["captions"] == 3
    assert rep["missing"]["image_names"] == [setup.missing]
    assert rep["mapping"]["method"] == "auto:basename"
    assert rep["evaluated"] == {"images": 22, "captions": 66, "gallery": "split", "gallery_images": 22}
    t2i = rep["exact"]["text_to_image"]
    assert t2i["queries"] == 66 and rep["exact"]["image_to_text"]["queries"] == 22
    evaluated = [(n, c) for i, (n, c) in enumerate(setup.data) if i != 8 and n != setup.missing]
    for k in (1, 5, 10):
        assert t2i["recall"][str(k)] == pytest.approx(expected_t2i(setup, evaluated, k))
    assert t2i["recall"]["1"] >= 1 / 3
    assert rep["reference"]["text_to_image"]["published"]["1"] == pytest.approx(0.699)
    assert rep["model"]["fingerprint"] == setup.model.fingerprint
    assert "text → image" in result.stdout and "paper" in result.stdout and "MISSING" in result.stdout
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_csv_agrees_with_karpathy(setup, tmp_path, ldot):
    a, b = tmp_path / "k.json", tmp_path / "c.json"
    run_eval(ldot, setup, "--captions", setup.karpathy, "--split", "test", "--json", str(a))
    run_eval(ldot, setup, "--captions", setup.csv, "--json", str(b))
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["exact"] == rb["exact"] and ra["missing"] == rb["missing"]


def test_cli_refuses_embeddings_of_another_model(setup, ldot):
    result = run_eval(ldot, setup, "--captions", setup.csv, "--seed", "1", ok=False)
    assert result.exit_code != 0 and "made by model(s)" in result.output
    assert run_eval(ldot, setup, "--captions", setup.csv, "--seed", "1", "--ignore-model-mismatch").exit_code == 0


def test_cli_missing_error_policy_and_bad_mapping(setup, ldot):
    result = run_eval(ldot, setup, "--captions", setup.csv, "--missing", "error", ok=False)
    assert result.exit_code != 0 and setup.missing in result.output
    result = run_eval(ldot, setup, "--captions", setup.csv, "--map", "id", ok=False)
    assert result.exit_code != 0 and "none of the" in result.output


def test_cli_with_index_side_by_side(setup, tmp_path, ldot):
    """The ``--index`` path through a real approximate index over the same 23 embeddings: IVF-PQ with 4-byte codes
    (PQ8x4) loses some true first hits to quantization, so the difference column has something to show. Every row
    trains the quantizers (no held-out queries: 23 rows are barely enough for 16 centroids per sub-quantizer)."""
    root = str(tmp_path / "index")
    build_index([setup.emb], root, BuildSettings(factory="IVF2,PQ8x4", nprobe=2, selfcheck_queries=0),
                beam_args=["--runner=FnApiRunner"])
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    result = run_eval(ldot, setup, "--captions", setup.karpathy, "--index", root, "--json", str(out_json),
                      "--plot", str(out_png), "--gallery", "all")
    rep = json.loads(out_json.read_text())
    idx = rep["index"]
    assert idx["factory"] == "IVF2,PQ8x4" and idx["nprobe"] == 2 and idx["vectors"] == 23
    exact = rep["exact"]["text_to_image"]["recall"]
    for k in ("1", "5", "10"):
        assert idx["difference"][k] == pytest.approx(idx["text_to_image"]["recall"][k] - exact[k])
    assert idx["difference"]["1"] < 0
    assert "index" in result.stdout and "Δ index" in result.stdout
    assert out_png.stat().st_size > 10_000


def test_cli_with_a_built_flat_index_matches_exact(setup, tmp_path, ldot):
    """A real index (``ldot build-index`` code, auto factory = Flat for 23 vectors): the ANN column equals exact
    search over the same embeddings, difference 0."""
    root = str(tmp_path / "index")
    build_index([setup.emb], root, BuildSettings(shards=2, selfcheck_queries=10), beam_args=["--runner=FnApiRunner"])
    out_json = tmp_path / "r.json"
    run_eval(ldot, setup, "--captions", setup.karpathy, "--index", root, "--json", str(out_json))
    rep = json.loads(out_json.read_text())
    idx = rep["index"]
    assert idx["vectors"] == 23 and "Flat" in idx["factory"] and idx["model"] == setup.model.fingerprint
    assert idx["text_to_image"]["recall"] == rep["exact_all"]["text_to_image"]["recall"]
    assert set(idx["difference"].values()) == {0.0}
