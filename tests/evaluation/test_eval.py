"""Recall@K as LightningDOT reports it: exact ranks, counting rules, missing images, caption readers, mapping."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.captions import CaptionError, CaptionSet, load_captions
from evaluation.core import EvaluationError, curve, evaluate
from evaluation.embeddings import Embeddings, EmbeddingsError, read_embeddings
from evaluation.image_mapping import map_images
from evaluation.recall import hits_from_topk, image_to_text_ranks, text_to_image_ranks


def caption_set(owners: list[int], names: list[str] | None = None) -> CaptionSet:
    n = max(owners) + 1
    names = names or [f"img{i:03d}.jpg" for i in range(n)]
    return CaptionSet(names=names, records=[{"filename": s} for s in names],
                      captions=[f"caption {c}" for c in range(len(owners))], caption_image=list(owners))


def embeddings(ids: list[str], vectors: np.ndarray) -> Embeddings:
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return Embeddings([ids[i] for i in order], np.asarray(vectors, np.float32)[order], None, [], ["mem"])


def run(owners, names, image_vecs, text_vecs, emb_ids=None, **kw):
    caps = caption_set(owners, names)
    emb = embeddings(emb_ids or caps.names, image_vecs)
    return evaluate(caps, emb, map_images(caps, emb.image_ids, "id"), text_vecs, **kw)


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- exact ranks ---------------------------------------------------------------------------------------------


def naive_t2i(text, images, gt):
    """Reference: sort every row, stable, score descending (ties: lower gallery index first)."""
    s = text @ images.T
    return np.array([list(np.lexsort((np.arange(len(images)), -row))).index(g) for row, g in zip(s, gt, strict=True)])


def naive_i2t(images, text, owner):
    s = images @ text.T
    out = []
    for j, row in enumerate(s):
        order = list(np.lexsort((np.arange(len(text)), -row)))
        out.append(min(order.index(c) for c in np.flatnonzero(owner == j)))
    return np.array(out)


@pytest.mark.parametrize("max_bytes", [64, 1 << 20])
def test_ranks_match_naive_sort_with_ties_and_chunks(max_bytes):
    rng = np.random.default_rng(1)
    images = rng.integers(-2, 3, (40, 4)).astype(np.float32)  # small integers: many exact ties
    owner = np.repeat(np.arange(40), 3)
    text = rng.integers(-2, 3, (120, 4)).astype(np.float32)
    t2i = text_to_image_ranks(text, images, owner, max_bytes=max_bytes)
    i2t = image_to_text_ranks(images, text, owner, max_bytes=max_bytes)
    np.testing.assert_array_equal(t2i.ranks, naive_t2i(text, images, owner))
    np.testing.assert_array_equal(i2t.ranks, naive_i2t(images, text, owner))
    assert t2i.ties > 0 and i2t.ties > 0


def test_constructed_set_every_caption_nearest_its_image_gives_all_ones():
    rng = np.random.default_rng(0)
    n, per = 300, 5
    images = unit(rng, n, 64)
    owners = np.repeat(np.arange(n), per)
    text = images[owners] + 0.05 * unit(rng, n * per, 64)  # each caption close to its own image, same norm-ish
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    # caption nearest its own image, and each image's captions nearest it among all captions
    assert (np.argmax(text @ images.T, 1) == owners).all()
    rep = run(list(owners), None, images, text, ks=[1, 5, 10])
    for d in ("text_to_image", "image_to_text"):
        assert rep["exact"][d]["recall"] == {"1": 1.0, "5": 1.0, "10": 1.0}
        assert rep["exact"][d]["median_rank"] == 1.0
    assert rep["exact"]["text_to_image"]["queries"] == n * per
    assert rep["exact"]["image_to_text"]["queries"] == n
    assert rep["exact"]["mean_recall"] == 1.0


def binomial_tolerance(p: float, n: int, z: float = 5.0) -> float:
    """z standard errors of a binomial proportion (z=5: a false failure about once in 1.7 million seeds)."""
    return z * math.sqrt(p * (1 - p) / n) + 1e-12


def test_random_embeddings_give_chance_recall():
    """Uniform directions: any gallery item is equally likely at any rank, so t2i R@k = k/N and i2t R@k is the
    chance that one of an image's m captions lands in the top k of C = 1 - C(C-m, k)/C(C, k)."""
    rng = np.random.default_rng(7)
    n, per, d = 1000, 5, 64
    c = n * per
    ks = [1, 5, 10, 50]
    rep = run(list(np.repeat(np.arange(n), per)), None, unit(rng, n, d), unit(rng, c, d), ks=ks)
    for k in ks:
        p_t2i = k / n
        got = rep["exact"]["text_to_image"]["recall"][str(k)]
        assert abs(got - p_t2i) <= binomial_tolerance(p_t2i, c), (k, got, p_t2i)
        p_i2t = 1 - math.prod((c - per - i) / (c - i) for i in range(k))
        got = rep["exact"]["image_to_text"]["recall"][str(k)]
        assert abs(got - p_i2t) <= binomial_tolerance(p_i2t, n), (k, got, p_i2t)


def test_shuffled_assignment_gives_chance_recall():
    """A perfectly aligned set with its caption→image assignment shuffled: recall drops to chance."""
    rng = np.random.default_rng(3)
    n, d = 2000, 64
    images = unit(rng, n, d)
    text = images.copy()  # caption i is exactly image i ...
    owners = rng.permutation(n)  # ... but is credited to a random image
    rep = run(list(owners), None, images, text, ks=[10, 100])
    for k in (10, 100):
        got = rep["exact"]["text_to_image"]["recall"][str(k)]
        assert abs(got - k / n) <= binomial_tolerance(k / n, n), (k, got)


def test_image_with_five_captions_counts_once_for_i2t_and_five_times_for_t2i():
    e = np.eye(3, dtype=np.float32)
    images = e  # A, B, C
    # A's five captions all point at A; B's caption is nearer C than B; C's caption points at C (weaker).
    text = np.stack([e[0], 0.9 * e[0], 0.8 * e[0], 0.7 * e[0], 0.6 * e[0], 0.5 * e[1] + 1.0 * e[2], 0.9 * e[2]])
    rep = run([0, 0, 0, 0, 0, 1, 2], ["A", "B", "C"], images, text, ks=[1, 2])
    t2i, i2t = rep["exact"]["text_to_image"], rep["exact"]["image_to_text"]
    assert t2i["queries"] == 7 and i2t["queries"] == 3
    assert t2i["recall"] == {"1": 6 / 7, "2": 1.0}
    # image C: B's caption (score 1.0) beats C's own (0.9): miss at 1, hit at 2; A and B hit at 1
    assert i2t["recall"] == {"1": 2 / 3, "2": 1.0}


def test_missing_images_reported_skipped_or_counted_as_misses():
    e = np.eye(4, dtype=np.float32)
    owners = [0, 0, 1, 2, 3, 3]
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    text = e[owners]
    emb_ids = ["a.jpg", "c.jpg", "d.jpg"]  # b.jpg has no embedding
    images = e[[0, 2, 3]]
    rep = run(owners, names, images, text, emb_ids=emb_ids, ks=[1])
    assert rep["missing"] == {"images": 1, "captions": 1, "policy": "skip", "image_names": ["b.jpg"]}
    assert rep["evaluated"] == {"images": 3, "captions": 5, "gallery": "split", "gallery_images": 3}
    assert rep["exact"]["text_to_image"]["recall"]["1"] == 1.0
    assert any("b.jpg" in w for w in rep["warnings"])

    rep = run(owners, names, images, text, emb_ids=emb_ids, ks=[1], missing="miss")
    assert rep["exact"]["text_to_image"]["recall"]["1"] == 5 / 6
    assert rep["exact"]["text_to_image"]["queries"] == 6
    assert rep["exact"]["image_to_text"]["recall"]["1"] == 3 / 4

    with pytest.raises(EvaluationError, match=r"b\.jpg"):
        run(owners, names, images, text, emb_ids=emb_ids, ks=[1], missing="error")
    with pytest.raises(EvaluationError, match="none of the"):
        run(owners, names, images, text, emb_ids=["x", "y", "z"], ks=[1])


def test_gallery_all_adds_distractors_and_index_is_compared_with_it():
    rng = np.random.default_rng(5)
    n_cap_images, n_all, d = 50, 400, 32
    images = unit(rng, n_all, d)
    ids = [f"i{r:04d}" for r in range(n_all)]
    owners = list(range(n_cap_images))
    text = images[:n_cap_images] + 0.7 * unit(rng, n_cap_images, d)
    caps = caption_set(owners, ids[:n_cap_images])
    emb = embeddings(ids, images)
    m = map_images(caps, emb.image_ids, "id")
    split = evaluate(caps, emb, m, text, [1, 5])
    every = evaluate(caps, emb, m, text, [1, 5], gallery="all")
    assert every["evaluated"]["gallery_images"] == n_all and split["evaluated"]["gallery_images"] == n_cap_images
    assert every["exact"]["text_to_image"]["recall"]["5"] <= split["exact"]["text_to_image"]["recall"]["5"]

    def exact_search(q, k):  # a perfect "index" over the whole table
        top = np.argsort(-(q @ emb.vectors.T), axis=1, kind="stable")[:, :k]
        return [[emb.image_ids[j] for j in row] for row in top]

    rep = evaluate(caps, emb, m, text, [1, 5], search=exact_search, index_info={"vectors": n_all})
    assert rep["index"]["text_to_image"]["recall"] == rep["exact_all"]["text_to_image"]["recall"]
    assert rep["index"]["difference"] == {"1": 0.0, "5": 0.0}
    assert rep["exact_all"]["text_to_image"]["recall"] == every["exact"]["text_to_image"]["recall"]


def test_hits_from_topk_and_curve():
    assert hits_from_topk([["a", "b"], ["c", "a"], []], ["a", "a", "a"], [1, 2]) == {1: 1 / 3, 2: 2 / 3}
    assert curve(np.array([0, 1, 1, 5]), 3) == [0.25, 0.75, 0.75]


# ---- caption readers and mapping ------------------------------------------------------------------------------


def karpathy(tmp_path, images):
    path = tmp_path / "dataset_test.json"
    path.write_text(json.dumps({"dataset": "flickr30k", "images": images}))
    return str(path)


KARPATHY_IMAGES = [
    {"filename": "100.jpg", "imgid": 0, "split": "test",
     "sentences": [{"raw": "A dog runs.", "tokens": ["a", "dog", "runs"], "imgid": 0, "sentid": 0},
                   {"raw": "A brown dog.", "tokens": ["a", "brown", "dog"], "imgid": 0, "sentid": 1}]},
    {"filename": "200.jpg", "imgid": 1, "split": "train",
     "sentences": [{"raw": "Train only.", "tokens": ["train", "only"], "imgid": 1, "sentid": 2}]},
    {"filename": "300.jpg", "imgid": 2, "split": "test",
     "sentences": [{"raw": "Two cats, sleeping.", "tokens": ["two", "cats", "sleeping"], "imgid": 2, "sentid": 3}]},
]


def test_karpathy_csv_jsonl_and_coco_inputs_agree(tmp_path):
    k = load_captions(karpathy(tmp_path, KARPATHY_IMAGES), split="test")
    assert k.format == "karpathy" and k.names == ["100.jpg", "300.jpg"]
    assert k.captions == ["A dog runs.", "A brown dog.", "Two cats, sleeping."]
    assert k.caption_image == [0, 0, 1]
    assert load_captions(karpathy(tmp_path, KARPATHY_IMAGES), split="test", text_field="tokens").captions[0] == \
        "a dog runs"
    assert load_captions(karpathy(tmp_path, KARPATHY_IMAGES), split="all").num_images == 3

    csv_path = tmp_path / "caps.csv"
    csv_path.write_text('image_id,caption,split\n100.jpg,A dog runs.,test\n100.jpg,A brown dog.,test\n'
                        '200.jpg,Train only.,train\n300.jpg,"Two cats, sleeping.",test\n')
    jsonl_path = tmp_path / "caps.jsonl"
    jsonl_path.write_text("".join(json.dumps({"image": n, "text": c}) + "\n"
                                  for n, c in [("100.jpg", "A dog runs."), ("100.jpg", "A brown dog."),
                                               ("300.jpg", "Two cats, sleeping.")]))
    tsv_path = tmp_path / "caps.tsv"
    tsv_path.write_text("filename\tsentence\n100.jpg\tA dog runs.\n100.jpg\tA brown dog.\n"
                        "300.jpg\tTwo cats, sleeping.\n")
    coco_path = tmp_path / "captions_val.json"
    coco_path.write_text(json.dumps({
        "images": [{"id": 100, "file_name": "100.jpg"}, {"id": 300, "file_name": "300.jpg"}],
        "annotations": [{"id": 1, "image_id": 100, "caption": "A dog runs."},
                        {"id": 2, "image_id": 100, "caption": "A brown dog."},
                        {"id": 3, "image_id": 300, "caption": "Two cats, sleeping."}]}))
    for path in (csv_path, jsonl_path, tsv_path, coco_path):
        other = load_captions(str(path), split="test")
        assert (other.names, other.captions, other.caption_image) == (k.names, k.captions, k.caption_image), path
    assert load_captions(str(csv_path), split="test").split == ["test"]
    assert any("no split column" in n for n in load_captions(str(jsonl_path), split="test").notes)


def test_caption_reader_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,words\nx,y\n")
    with pytest.raises(CaptionError, match="no caption column"):
        load_captions(str(bad))
    with pytest.raises(CaptionError, match="has splits"):
        load_captions(karpathy(tmp_path, KARPATHY_IMAGES), split="val")
    empty = [*KARPATHY_IMAGES, {"filename": "400.jpg", "imgid": 3, "split": "test", "sentences": []}]
    caps = load_captions(karpathy(tmp_path, empty), split="test")
    assert caps.num_images == 2 and any("400.jpg" in n and "no sentences" in n for n in caps.notes)


def test_mapping_methods():
    caps = CaptionSet(names=["flickr/100.jpg", "300.jpg"], records=[{"imgid": 0, "cocoid": 100}, {"imgid": 2,
                      "cocoid": 300}], captions=["a", "b"], caption_image=[0, 1])
    ids = ["gs://b/imgs/100.jpg", "gs://b/imgs/300.jpg"]
    assert map_images(caps, ids, "id").missing == [0, 1]
    assert map_images(caps, ids, "basename").image_row == [0, 1]
    auto = map_images(caps, ids, "auto")
    assert auto.method == "auto:basename" and auto.tried == {"id": 0, "basename": 2}
    assert map_images(caps, ["100", "300"], "stem").image_row == [0, 1]
    assert map_images(caps, ["COCO_000000000300", "COCO_000000000100"],
                      "template:COCO_{cocoid:012d}").image_row == [1, 0]
    with pytest.raises(CaptionError, match="needs field"):
        map_images(caps, ids, "template:{nope}")
    # two embedding ids with the same stem: ambiguous, so missing rather than an arbitrary one
    amb = map_images(caps, ["a/100.jpg", "b/100.png", "300.jpg"], "stem")
    assert amb.image_row == [-1, 2] and set(amb.ambiguous) == {"100"}


# ---- embeddings reader -----------------------------------------------------------------------------------------


def write_table(path, ids, vectors, model="m1", fixed=True):
    vectors = np.asarray(vectors, np.float32)
    flat = pa.array(vectors.reshape(-1))
    emb = (pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]) if fixed
           else pa.array([list(map(float, v)) for v in vectors], pa.list_(pa.float32())))
    pq.write_table(pa.table({"image_id": ids, "uri": [f"file:///x/{i}" for i in ids], "embedding": emb,
                             "model": [model] * len(ids)}), path)


def test_read_embeddings_dir_glob_lists_and_duplicates(tmp_path):
    d = tmp_path / "emb"
    d.mkdir()
    write_table(d / "part-1.parquet", ["b", "a"], [[1, 0], [0, 1]])
    write_table(d / "part-2.parquet", ["c", "a"], [[1, 1], [0, 1]], fixed=False)
    for spec in (str(d), str(d / "*.parquet"), [str(d / "part-1.parquet"), str(d / "part-2.parquet")]):
        e = read_embeddings(spec)
        assert e.image_ids == ["a", "b", "c"] and e.duplicates == 1 and not e.conflicting
        np.testing.assert_array_equal(e.vectors, [[0, 1], [1, 0], [1, 1]])
        assert e.models == ["m1"] and e.uris == ["file:///x/a", "file:///x/b", "file:///x/c"]
    with pytest.raises(EmbeddingsError, match="no Parquet"):
        read_embeddings(str(tmp_path / "nothing"))
    write_table(d / "part-3.parquet", ["z"], [[1, 2, 3]])
    with pytest.raises(EmbeddingsError, match="dim 3"):
        read_embeddings(str(d))
