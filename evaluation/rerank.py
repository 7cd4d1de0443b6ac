"""Recall@K after re-ranking, as LightningDOT evaluates its second stage: for every query the exact dot product
picks the top M candidates (text → image: M images per caption; image → text: M captions per image), a
cross-encoder scores those M pairs, and the M are re-ordered by that score alone. Recall before (the dot
product's order of the same M) and after are computed from the same candidate lists, so they compare like for
like; a ground truth outside the top M is a miss either way.

The cross-encoder comes in as ``score(texts, image_ids) -> [P] scores``, so this module stays plain numpy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evaluation.recall import DEFAULT_MAX_BYTES, _rows_per_chunk
from index.rerank import rerank_order

PairScore = Callable[[list[str], list[str]], np.ndarray]
PAIRS_PER_CALL = 256  # candidates scored per call: bounds the region features held in memory at once


@dataclass
class Reranking:
    """What ``evaluate`` needs to re-rank: the scorer, M, and provenance for the report."""

    score: PairScore
    top_m: int
    info: dict[str, Any] = field(default_factory=dict)


def top_m_by_dot(queries: np.ndarray, keys: np.ndarray, m: int, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """[Q, min(m, K)] key indices, best first; equal scores in key order (the tie rule of ``evaluation.recall``)."""
    m = min(m, len(keys))
    out = np.empty((len(queries), m), dtype=np.int64)
    step = _rows_per_chunk(len(keys), max_bytes)
    for a in range(0, len(queries), step):
        s = queries[a : a + step] @ keys.T
        out[a : a + step] = np.argsort(-s, axis=1, kind="stable")[:, :m]
    return out


def _rerank_lists(candidates: np.ndarray, pair_texts: Callable[[int, np.ndarray], tuple[list[str], list[str]]],
                  score: PairScore) -> tuple[np.ndarray, int]:
    """Re-order each row of ``candidates`` by the cross-encoder score (stable: ties keep the dot order)."""
    q, m = candidates.shape
    out = np.empty_like(candidates)
    per_call = max(1, PAIRS_PER_CALL // max(m, 1))
    for a in range(0, q, per_call):
        rows = range(a, min(a + per_call, q))
        texts, ids = [], []
        for r in rows:
            t, i = pair_texts(r, candidates[r])
            texts += t
            ids += i
        scores = np.asarray(score(texts, ids), dtype=np.float32).reshape(len(rows), m)
        for j, r in enumerate(rows):
            out[r] = candidates[r][rerank_order(scores[j])]
    return out, q * m


def _first_hit(lists: np.ndarray, hit: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """0-based position of the first hit in each list; the list length when there is none."""
    ranks = np.full(len(lists), lists.shape[1], dtype=np.int64)
    for q in range(len(lists)):
        where = np.flatnonzero(hit(q, lists[q]))
        if len(where):
            ranks[q] = where[0]
    return ranks


def _block(before: np.ndarray, after: np.ndarray, ks: Sequence[int], extra_misses: int) -> dict[str, Any]:
    def recall(r: np.ndarray) -> dict[str, float]:
        n = len(r) + extra_misses
        return {str(k): float((r < k).sum() / n) if n else float("nan") for k in ks}

    b, a = recall(before), recall(after)
    miss = np.full(extra_misses, np.iinfo(np.int64).max // 2, dtype=np.int64)
    return {"before": {"recall": b}, "after": {"recall": a}, "difference": {k: a[k] - b[k] for k in b},
            "queries": len(before) + extra_misses, "_ranks": np.concatenate([after, miss]),
            "_ranks_before": np.concatenate([before, miss])}


def rerank_recall(texts: Sequence[str], text_vectors: np.ndarray, caption_gallery: np.ndarray,
                  caption_owner: np.ndarray, gallery_vectors: np.ndarray, gallery_ids: Sequence[str],
                  query_vectors: np.ndarray, query_ids: Sequence[str], ks: Sequence[int], rerank: Reranking,
                  extra_misses: tuple[int, int] = (0, 0), max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Both directions before and after re-ranking.

    Caption ``c`` (``texts[c]``, ``text_vectors[c]``) shows gallery image ``caption_gallery[c]`` and belongs to
    query image ``caption_owner[c]``. ``extra_misses``: (captions, images) counted as failed queries (the
    ``--missing miss`` policy).
    """
    m = rerank.top_m
    if m < max(ks):
        raise ValueError(f"--rerank-top ({m}) must be at least the largest k ({max(ks)}): only the top M are ranked")
    gallery_ids, query_ids, texts = list(gallery_ids), list(query_ids), list(texts)
    t0 = time.perf_counter()
    # text -> image: M gallery images per caption
    cands = top_m_by_dot(text_vectors, gallery_vectors, m, max_bytes)
    reranked, pairs_t2i = _rerank_lists(cands, lambda c, row: ([texts[c]] * len(row), [gallery_ids[i] for i in row]),
                                        rerank.score)
    t2i = _block(_first_hit(cands, lambda c, row: row == caption_gallery[c]),
                 _first_hit(reranked, lambda c, row: row == caption_gallery[c]), ks, extra_misses[0])
    t_t2i = time.perf_counter() - t0
    # image -> text: M captions per image
    t0 = time.perf_counter()
    cands = top_m_by_dot(query_vectors, text_vectors, m, max_bytes)
    reranked, pairs_i2t = _rerank_lists(cands, lambda q, row: ([texts[c] for c in row], [query_ids[q]] * len(row)),
                                        rerank.score)
    i2t = _block(_first_hit(cands, lambda q, row: caption_owner[row] == q),
                 _first_hit(reranked, lambda q, row: caption_owner[row] == q), ks, extra_misses[1])
    return {**rerank.info, "top_m": m, "text_to_image": t2i, "image_to_text": i2t,
            "pairs_scored": pairs_t2i + pairs_i2t,
            "timings": {"text_to_image_s": t_t2i, "image_to_text_s": time.perf_counter() - t0}}
