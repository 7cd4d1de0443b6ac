"""Two-stage retrieval, LightningDOT's rule: the index picks the top M by dot product, then the UNITER
cross-encoder re-orders those M by its score alone (the dot product chooses the M and keeps no weight)::

    scorer = PairScorer(UniterReranker.from_checkpoint("model_step_5000.pt", vocab="vocab.txt"),
                        open_region_store("out/regions"))
    search = RerankingSearch(SearchIndex.open(root), LightningDOT.from_checkpoint(...), scorer, top_m=20)
    results = search.search(["a dog on a beach"], k=10)  # per query: records with both scores

Ties in the cross-encoder score keep the dot-product order, so a ranking is the same on every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import UsageError
from index.errors import IndexError_


class MissingRegionsError(IndexError_, UsageError):
    """Candidates whose region features are not in the regions source: it does not match the index."""


def rerank_order(scores: np.ndarray) -> np.ndarray:
    """Positions of candidates (given best-first by dot product) in re-ranked order: by cross-encoder score,
    descending; equal scores keep the dot-product order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


class PairScorer:
    """Cross-encoder scores of (text, image_id) pairs, each image's regions fetched once per call."""

    def __init__(self, reranker: Any, regions: Any, batch_size: int = 16) -> None:
        self.reranker = reranker
        self.regions = regions
        self.batch_size = batch_size

    @classmethod
    def open(cls, checkpoint: str, regions: str, config: str | None = None, head: str = "rank",
             device: str = "cpu", dtype: str = "float32", vocab: str | None = None) -> PairScorer:
        """A UNITER checkpoint and a regions source (Parquet directory or UNITER image DB) by path or URL;
        either wrong is a ``core.errors.UsageError`` that names it."""
        from encoders.regions.formats.regions_lookup import open_region_store
        from encoders.reranker import UniterReranker

        reranker = UniterReranker.from_checkpoint(checkpoint, config=config, device=device, head=head, dtype=dtype,
                                                  vocab=vocab)
        return cls(reranker, open_region_store(regions))

    def describe(self) -> dict[str, Any]:
        return {**self.reranker.describe(), "regions": self.regions.source}

    def __call__(self, texts: Sequence[str], image_ids: Sequence[str]) -> np.ndarray:
        if len(texts) != len(image_ids):
            raise ValueError(f"{len(texts)} texts for {len(image_ids)} images")
        wanted = list(dict.fromkeys(image_ids))
        found = self.regions.fetch(wanted)
        missing = [i for i in wanted if i not in found]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (f", … ({len(missing)} in all)" if len(missing) > 5
                                                                else "")
            raise MissingRegionsError(f"no region features for {shown} in the regions source: it must hold every "
                                      "indexed image (the --keep-regions table of the run that built the index)")
        return self.reranker.score_texts_images(list(texts), [found[i].features for i in image_ids],
                                                [found[i].norm_bb for i in image_ids], batch_size=self.batch_size)


class RerankingSearch:
    """``SearchIndex`` + text tower for the top M, then :class:`PairScorer` for the final order."""

    def __init__(self, index: Any, encoder: Any, scorer: PairScorer, top_m: int = 20) -> None:
        if top_m < 1:
            raise ValueError(f"top_m must be >= 1, got {top_m}")
        self.index = index
        self.encoder = encoder
        self.scorer = scorer
        self.top_m = top_m

    def search(self, texts: Sequence[str], k: int = 10) -> list[list[dict[str, Any]]]:
        """Per query, the best ``k`` of the dot product's top M after re-ranking (``k <= top_m``): records with
        ``rank``, ``score`` (= ``rerank_score``, the cross-encoder logit), ``dot_score``, ``dot_rank``,
        ``faiss_id``, ``image_id`` and ``uri``."""
        if not 1 <= k <= self.top_m:
            raise ValueError(f"k must be in 1..top_m ({self.top_m}), got {k}: re-ranking orders only the top M")
        res = self.index.search(self.encoder.encode_captions(list(texts)), self.top_m)
        return [self.rerank(text, res.records(q))[:k] for q, text in enumerate(texts)]

    def rerank(self, text: str, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Re-order dot-product records (best first) of one query by the cross-encoder."""
        if not candidates:
            return []
        scores = self.scorer([text] * len(candidates), [c["image_id"] for c in candidates])
        out = []
        for rank, i in enumerate(rerank_order(scores), start=1):
            c = candidates[i]
            out.append({"rank": rank, "score": float(scores[i]), "rerank_score": float(scores[i]),
                        "dot_score": c["score"], "dot_rank": c["rank"], "faiss_id": c["faiss_id"],
                        "image_id": c["image_id"], "uri": c["uri"]})
        return out
