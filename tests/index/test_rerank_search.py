"""Two-stage retrieval on a tiny real index (built with ``ldot build-index``): the dot product chooses the top M,
the UNITER cross-encoder alone orders them; ``ldot search --rerank`` and ``ldot eval --rerank``."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from encoders.config import TINY_CONFIG
from encoders.lightningdot import LightningDOT
from encoders.regions.formats import RegionsWriter
from encoders.regions.formats.regions_lookup import open_region_store
from encoders.reranker import UniterReranker
from index.rerank import MissingRegionsError, PairScorer, RerankingSearch, rerank_order
from index.search import SearchIndex
from tests.helpers_index import spread_weights, write_embeddings, write_vocab
from tests.helpers_regions import make_regions

WORDS = ["a", "the", "dog", "cat", "man", "child", "red", "blue", "green", "runs", "sleeps", "on", "in", "beach",
         "park", "snow", "."]
QUERY = "the red dog runs on the beach ."
N = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint, ldot):
    root = tmp_path_factory.mktemp("rerank")
    vocab = write_vocab(root / "vocab.txt", WORDS)
    encoder = LightningDOT.from_checkpoint(tiny_checkpoint, vocab=str(vocab))
    uniter = UniterReranker.random(TINY_CONFIG, seed=3)
    spread_weights(uniter.model, 8)
    torch.save(uniter.model.state_dict(), root / "model_step_1000.pt")  # UNITER's flat uniter.* layout
    reranker = UniterReranker.from_checkpoint(root / "model_step_1000.pt", TINY_CONFIG, vocab=str(vocab))

    ids = [f"photo-{i}" for i in range(N)]
    with RegionsWriter(root / "regions", rows_per_file=5) as w:
        for n, i in enumerate(ids):
            w.write(i, None, make_regions(n, 5 + 7 * n))
    regions = open_region_store(root / "regions").fetch(ids)  # as served: features stored in fp16
    cross = reranker.score_texts_images([QUERY] * N, [regions[i].features for i in ids],
                                        [regions[i].norm_bb for i in ids])
    assert len(set(np.round(cross, 4))) == N  # the cross-encoder tells the images apart
    # the constructed case: the dot product ranks the images in exactly the reverse of the cross-encoder's order
    by_cross = np.argsort(-cross, kind="stable")
    q = encoder.encode_captions([QUERY])[0]
    q /= np.linalg.norm(q)
    vectors = np.zeros((N, len(q)), np.float32)
    for cross_rank, image in enumerate(by_cross):
        vectors[image] = q * (1.0 + cross_rank)
    write_embeddings(root / "emb.parquet", vectors, ids=ids, model=encoder.fingerprint)
    index = str(root / "index")
    result = ldot("build-index", str(root / "emb.parquet"), "--output", index,
                  "--shards", "2", "--queries", "4", "--direct_num_workers", "1")
    assert result.exit_code == 0, result.output
    return types.SimpleNamespace(root=root, vocab=str(vocab), ldot=str(tiny_checkpoint), encoder=encoder,
                                 uniter=str(root / "model_step_1000.pt"), reranker=reranker, ids=ids, index=index,
                                 regions=str(root / "regions"), region_data=regions, cross=cross, by_cross=by_cross,
                                 vectors=vectors)


def test_rerank_order_is_by_score_with_ties_in_dot_order():
    np.testing.assert_array_equal(rerank_order(np.array([0.1, 2.0, 0.1, 3.0, 2.0])), [3, 1, 4, 0, 2])


def test_cross_encoder_order_replaces_the_dot_product_order(setup):
    search = RerankingSearch(SearchIndex.open(setup.index), setup.encoder,
                             PairScorer(setup.reranker, open_region_store(setup.regions)), top_m=N)
    plain = SearchIndex.open(setup.index).search(setup.encoder.encode_captions([QUERY]), N).image_ids[0]
    assert plain == [setup.ids[i] for i in setup.by_cross[::-1]]  # the dot product: worst cross-encoder first
    (rows,) = search.search([QUERY], k=N)
    assert [r["image_id"] for r in rows] == [setup.ids[i] for i in setup.by_cross]
    assert [r["dot_rank"] for r in rows] == list(range(N, 0, -1))
    np.testing.assert_allclose([r["rerank_score"] for r in rows], setup.cross[setup.by_cross], rtol=0, atol=1e-6)
    assert all(r["score"] == r["rerank_score"] for r in rows)
    assert [r["dot_score"] for r in rows] == sorted(r["dot_score"] for r in rows)  # increasing: order replaced


def test_the_dot_product_only_chooses_the_m(setup):
    search = RerankingSearch(SearchIndex.open(setup.index), setup.encoder,
                             PairScorer(setup.reranker, open_region_store(setup.regions)), top_m=3)
    (rows,) = search.search([QUERY], k=2)
    chosen = setup.by_cross[::-1][:3]  # the dot product's top 3 = the cross-encoder's bottom 3
    want = [setup.ids[i] for i in chosen[np.argsort(-setup.cross[chosen], kind="stable")]][:2]
    assert [r["image_id"] for r in rows] == want and [r["rank"] for r in rows] == [1, 2]
    with pytest.raises(ValueError, match=r"k must be in 1\.\.top_m"):
        search.search([QUERY], k=4)


def test_missing_regions_are_named(setup, tmp_path):
    with RegionsWriter(tmp_path, rows_per_file=50) as w:
        for i in setup.ids[1:]:
            w.write(i, None, setup.region_data[i])
    scorer = PairScorer(setup.reranker, open_region_store(tmp_path))
    with pytest.raises(MissingRegionsError, match="'photo-0'"):
        scorer([QUERY, QUERY], ["photo-3", "photo-0"])


def search_cli(ldot, setup, *args):
    return ldot("search", setup.index, QUERY, "--checkpoint", setup.ldot, "--vocab",
                setup.vocab, *args)


def test_search_cli_rerank_json_text_and_html(setup, tmp_path, ldot):
    html = tmp_path / "r.html"
    result = search_cli(ldot, setup, "--rerank", setup.uniter, "--rerank-top", str(N), "-k", "5", "--regions",
                        setup.regions, "--rerank-config", str(TINY_CONFIG), "--json", "--html", str(html))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    rows = out["queries"][0]["results"]
    assert [r["image_id"] for r in rows] == [setup.ids[i] for i in setup.by_cross[:5]]
    assert out["rerank"]["top_m"] == N and out["rerank"]["head"] == "rank"
    assert out["rerank"]["fingerprint"] == setup.reranker.fingerprint
    page = html.read_text()
    assert page.count("UNITER ") == 5 and "dot " in page
    text = search_cli(ldot, setup, "--rerank", setup.uniter, "-k", "3", "--regions", setup.regions,
                      "--rerank-config", str(TINY_CONFIG))  # M defaults to max(20, k): every image here
    assert text.exit_code == 0, text.output
    first = text.stdout.splitlines()[1]
    assert setup.ids[setup.by_cross[0]] in first and f"(#{N})" in first and "dot" in first
    itm = search_cli(ldot, setup, "--rerank", setup.uniter, "-k", "3", "--regions", setup.regions,
                     "--rerank-config", str(TINY_CONFIG), "--rerank-head", "itm", "--json")
    assert itm.exit_code == 0 and json.loads(itm.stdout)["rerank"]["scores_with"] == "itm_output[1]"


def test_search_cli_rerank_errors(setup, tmp_path, ldot):
    cfg = ["--rerank-config", str(TINY_CONFIG)]
    no_regions = search_cli(ldot, setup, "--rerank", setup.uniter, *cfg)
    assert no_regions.exit_code == 2 and "--rerank needs --regions" in no_regions.output
    stray = search_cli(ldot, setup, "--regions", setup.regions)
    assert stray.exit_code == 2 and "only apply with --rerank" in stray.output
    small = search_cli(ldot, setup, "--rerank", setup.uniter, "--regions", setup.regions, "--rerank-top", "3",
                       "-k", "5")
    assert small.exit_code == 2 and "at least -k" in small.output
    wrong_size = search_cli(ldot, setup, "--rerank", setup.uniter, "--regions", setup.regions)  # UNITER-base config
    assert wrong_size.exit_code == 2 and "shape mismatch" in wrong_size.output
    with RegionsWriter(tmp_path, rows_per_file=50) as w:
        w.write("photo-0", None, setup.region_data["photo-0"])
    partial = search_cli(ldot, setup, "--rerank", setup.uniter, "--regions", str(tmp_path), *cfg)
    assert partial.exit_code == 2 and "no region features for" in partial.output


def expected_rerank(setup, captions, k, top_m):
    """Independent recomputation for the eval: dot top-M by stable argsort, cross-encoder per pair, re-sort."""
    texts = [c for _, caps in captions for c in caps]
    owner = [n for n, (_, caps) in enumerate(captions) for _ in caps]
    t = setup.encoder.encode_captions(texts)
    g = setup.vectors  # gallery = the 8 images, in image_id order (= setup.ids order)
    reg = setup.region_data

    def cross(text, image):
        return setup.reranker.score_texts_images([text], [reg[image].features], [reg[image].norm_bb])[0]

    t2i = []
    for c, text in enumerate(texts):
        cands = list(np.argsort(-(t[c] @ g.T), kind="stable")[:top_m])
        s = [cross(text, setup.ids[i]) for i in cands]
        order = [cands[j] for j in sorted(range(len(cands)), key=lambda j: -s[j])]
        t2i.append(owner[c] in order[:k])
    i2t = []
    for img in range(N):
        cands = list(np.argsort(-(g[img] @ t.T), kind="stable")[:top_m])
        s = [cross(texts[c], setup.ids[img]) for c in cands]
        order = [cands[j] for j in sorted(range(len(cands)), key=lambda j: -s[j])]
        i2t.append(any(owner[c] == img for c in order[:k]))
    return float(np.mean(t2i)), float(np.mean(i2t))


def test_eval_cli_recall_before_and_after(setup, tmp_path, ldot):
    captions = [(i, [f"the {c} {s} runs on the {p} .", f"a {s} sleeps in the {p} ."]) for i, (c, s, p) in
                zip(setup.ids, [("red", "dog", "beach"), ("blue", "cat", "park"), ("green", "man", "snow"),
                                ("red", "child", "park"), ("blue", "dog", "snow"), ("green", "cat", "beach"),
                                ("red", "man", "park"), ("blue", "child", "beach")], strict=True)]
    csv = tmp_path / "captions.csv"
    csv.write_text("image_id|caption\n" + "".join(f"{i}|{c}\n" for i, caps in captions for c in caps))
    report, png = tmp_path / "report.json", tmp_path / "recall.png"
    args = ["eval", "--captions", str(csv), "--embeddings", str(setup.root / "emb.parquet"), "--checkpoint",
            setup.ldot, "--vocab", setup.vocab, "--device", "cpu", "--k", "1,3", "--rerank", setup.uniter,
            "--rerank-top", "4", "--regions", setup.regions, "--rerank-config", str(TINY_CONFIG), "--json",
            str(report), "--plot", str(png)]
    result = ldot(*args)
    assert result.exit_code == 0, result.output
    rep = json.loads(report.read_text())
    rr = rep["rerank"]
    assert rr["top_m"] == 4 and rr["pairs_scored"] == 16 * 4 + 8 * 4 and rr["head"] == "rank"
    for d in ("text_to_image", "image_to_text"):
        assert rr[d]["before"]["recall"] == rep["exact"][d]["recall"]  # the same candidates in dot order
    for k in (1, 3):
        t2i, i2t = expected_rerank(setup, captions, k, 4)
        assert rr["text_to_image"]["after"]["recall"][str(k)] == pytest.approx(t2i)
        assert rr["image_to_text"]["after"]["recall"][str(k)] == pytest.approx(i2t)
        for d in ("text_to_image", "image_to_text"):
            assert rr[d]["difference"][str(k)] == pytest.approx(rr[d]["after"]["recall"][str(k)]
                                                                - rr[d]["before"]["recall"][str(k)])
    assert any(rr[d]["difference"][k] != 0 for d in ("text_to_image", "image_to_text") for k in ("1", "3"))
    assert "rerank@4" in result.stdout and "Δ rerank" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    small = ldot(*args[:-4], "--rerank-top", "2")
    assert small.exit_code == 2 and "at least the largest k" in small.output
    no_model = [a for a in args[:-4] if a != setup.uniter and a != "--rerank"]
    stray = ldot(*no_model)
    assert stray.exit_code == 2 and "--rerank and --regions go together" in stray.output
