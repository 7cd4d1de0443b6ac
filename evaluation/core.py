"""One evaluation: captions + embeddings (+ caption vectors, + optionally an ANN index) -> a JSON-able report.

The caller encodes the captions (``jobs/evaluate.py`` does it with the LightningDOT text tower); everything here
is plain numpy, so tests can hand in constructed vectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core.errors import UsageError
from evaluation.captions import CaptionSet
from evaluation.embeddings import Embeddings
from evaluation.image_mapping import Mapping
from evaluation.recall import DEFAULT_MAX_BYTES, Ranks, hits_from_topk, image_to_text_ranks, text_to_image_ranks
from evaluation.rerank import Reranking, rerank_recall

MISSING_POLICIES = ("skip", "miss", "error")
GALLERIES = ("split", "all")

# The published LightningDOT results without re-ranking (docs/conventions.md), in percent.
REFERENCE: dict[str, dict[str, Any]] = {
    "flickr30k": {
        "label": "Flickr30k test (1k images)", "images": 1000, "captions": 5000,
        "text_to_image": {1: 69.9, 5: 91.1, 10: 95.2}, "image_to_text": {1: 83.9, 5: 97.2, 10: 98.6},
    },
    "coco": {
        "label": "COCO 5k test", "images": 5000, "captions": 25010,
        "text_to_image": {1: 45.8, 5: 74.5, 10: 83.8}, "image_to_text": {1: 60.1, 5: 85.2, 10: 91.7},
    },
}


class EvaluationError(UsageError):
    """Inputs that cannot be evaluated (no overlap, missing images under --missing error, ...)."""


def parse_ks(text: str | Sequence[int]) -> list[int]:
    try:
        ks = sorted({int(k) for k in (text.split(",") if isinstance(text, str) else text) if str(k).strip()})
    except ValueError as e:
        raise EvaluationError(f"--k must be comma-separated positive integers, got {text!r}") from e
    if not ks or ks[0] < 1:
        raise EvaluationError(f"--k must be comma-separated positive integers, got {text!r}")
    return ks


def _direction(ranks: Ranks, ks: Sequence[int], extra_misses: int = 0) -> dict[str, Any]:
    r = ranks.ranks
    if extra_misses:
        r = np.concatenate([r, np.full(extra_misses, np.iinfo(np.int64).max // 2, dtype=np.int64)])
    full = Ranks(r, ranks.ties)
    return {
        "recall": {str(k): v for k, v in full.recall_at(ks).items()},
        "queries": len(r),
        "median_rank": full.median_rank() if not extra_misses else None,
        "mean_rank": full.mean_rank() if not extra_misses else None,
        "ties": ranks.ties,
        "_ranks": r,  # dropped before JSON; used for curves
    }


def curve(ranks: np.ndarray, k_max: int) -> list[float]:
    """Recall at every k = 1..k_max from full ranks."""
    if not len(ranks):
        return []
    hist = np.bincount(np.minimum(ranks, k_max), minlength=k_max + 1)[:k_max]
    return (np.cumsum(hist) / len(ranks)).tolist()


def evaluate(
    captions: CaptionSet,
    embeddings: Embeddings,
    mapping: Mapping,
    text_vectors: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    *,
    gallery: str = "split",
    missing: str = "skip",
    search: Callable[[np.ndarray, int], list[list[str]]] | None = None,
    index_info: dict[str, Any] | None = None,
    reference: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    rerank: Reranking | None = None,
) -> dict[str, Any]:
    """Recall both ways by exact dot product; text → image through ``search`` too when given; both ways before
    and after re-ranking the dot product's top M with ``rerank`` when given (``evaluation.rerank``).

    ``text_vectors[c]`` is caption ``c``'s embedding. ``search(vectors, k) -> image ids per query`` wraps the ANN
    index. ``missing``: ``skip`` leaves captions of images absent from the embeddings out of the figures (counted
    and listed in the report), ``miss`` counts them as failed queries, ``error`` refuses to evaluate.
    """
    if missing not in MISSING_POLICIES:
        raise EvaluationError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    if gallery not in GALLERIES:
        raise EvaluationError(f"gallery must be one of {GALLERIES}, got {gallery!r}")
    ks = parse_ks(ks)
    text_vectors = np.asarray(text_vectors, dtype=np.float32)
    if text_vectors.shape != (len(captions), embeddings.dim):
        raise EvaluationError(f"caption vectors {text_vectors.shape} do not match {len(captions)} captions of "
                              f"dim {embeddings.dim}")
    warnings: list[str] = list(captions.notes)
    timings: dict[str, float] = {}

    image_row = np.asarray(mapping.image_row, dtype=np.int64)
    cap_img = np.asarray(captions.caption_image, dtype=np.int64)
    missing_imgs = np.flatnonzero(image_row < 0)
    cap_ok = image_row[cap_img] >= 0
    n_missing_caps = int((~cap_ok).sum())
    missing_report = {
        "images": len(missing_imgs),
        "captions": n_missing_caps,
        "policy": missing,
        "image_names": [captions.names[i] for i in missing_imgs],
    }
    if len(missing_imgs):
        msg = (f"{len(missing_imgs)} of {captions.num_images} images ({n_missing_caps} of {len(captions)} captions) "
               f"are not in the embeddings (mapping {mapping.method}); e.g. "
               f"{', '.join(repr(captions.names[i]) for i in missing_imgs[:5])}")
        if missing == "error":
            raise EvaluationError(msg)
        warnings.append(msg + (": left out of the figures" if missing == "skip" else ": counted as misses"))
    if mapping.ambiguous:
        warnings.append(f"{len(mapping.ambiguous)} caption images match several embedding ids under mapping "
                        f"{mapping.method} and were treated as missing, e.g. {next(iter(mapping.ambiguous.items()))}")
    if len(missing_imgs) == captions.num_images:
        raise EvaluationError(f"none of the {captions.num_images} caption images is in the embeddings under mapping "
                              f"{mapping.method} (tried {mapping.tried or mapping.method}); e.g. caption image "
                              f"{captions.names[0]!r} vs embedding id {embeddings.image_ids[0]!r}: use --map")
    extra_t2i = n_missing_caps if missing == "miss" else 0
    extra_i2t = len(missing_imgs) if missing == "miss" else 0

    # the evaluated captions and images
    caps = np.flatnonzero(cap_ok)
    t = text_vectors[caps]
    rows = image_row[cap_img[caps]]  # embedding row of each evaluated caption's image
    query_rows = np.unique(rows)  # embedding rows of the images that have captions (sorted = image_id order)
    gallery_rows = query_rows if gallery == "split" else np.arange(len(embeddings))
    pos = np.full(len(embeddings), -1, dtype=np.int64)
    pos[gallery_rows] = np.arange(len(gallery_rows))
    g = embeddings.vectors[gallery_rows]

    t0 = time.perf_counter()
    t2i = text_to_image_ranks(t, g, pos[rows], max_bytes=max_bytes)
    timings["exact_text_to_image_s"] = time.perf_counter() - t0
    # image -> text: query images are the captioned ones; caption owner = position among the queries
    qpos = np.full(len(embeddings), -1, dtype=np.int64)
    qpos[query_rows] = np.arange(len(query_rows))
    t0 = time.perf_counter()
    i2t = image_to_text_ranks(embeddings.vectors[query_rows], t, qpos[rows], max_bytes=max_bytes)
    timings["exact_image_to_text_s"] = time.perf_counter() - t0

    exact = {"text_to_image": _direction(t2i, ks, extra_t2i), "image_to_text": _direction(i2t, ks, extra_i2t)}
    exact["mean_recall"] = _mean_recall(exact, ks)
    for d in ("text_to_image", "image_to_text"):
        if exact[d]["ties"]:
            warnings.append(f"exact {d.replace('_', ' ')}: {exact[d]['ties']} queries had their ground truth tie "
                            f"another candidate (broken by gallery order)")

    report: dict[str, Any] = {
        "captions": {
            "source": captions.source, "format": captions.format, "split": captions.split,
            "images": captions.num_images, "captions": len(captions),
            "captions_per_image": _spread(captions.captions_per_image()),
        },
        "embeddings": {
            "files": embeddings.files, "rows": len(embeddings), "dim": embeddings.dim, "models": embeddings.models,
            "duplicate_rows_dropped": embeddings.duplicates, "conflicting_duplicates": embeddings.conflicting,
        },
        "mapping": {"method": mapping.method, "tried": mapping.tried, "matched_images": int((image_row >= 0).sum()),
                    "ambiguous": mapping.ambiguous},
        "missing": missing_report,
        "evaluated": {"images": len(query_rows), "captions": len(caps), "gallery": gallery,
                      "gallery_images": len(gallery_rows)},
        "ks": ks,
        "exact": exact,
    }

    if search is not None:
        k_max = max(ks)
        t0 = time.perf_counter()
        retrieved = search(t, k_max)
        timings["index_text_to_image_s"] = time.perf_counter() - t0
        expected = [embeddings.image_ids[r] for r in rows]
        idx_recall = hits_from_topk(retrieved, expected, range(1, k_max + 1))
        if extra_t2i:
            scale = len(caps) / (len(caps) + extra_t2i)
            idx_recall = {k: v * scale for k, v in idx_recall.items()}
        # compare with exact search over the same set the index holds: the whole embeddings table
        if gallery == "all" or len(gallery_rows) == len(embeddings):
            base, base_label = exact["text_to_image"], f"exact over all {len(embeddings)} embeddings"
        else:
            t0 = time.perf_counter()
            full = text_to_image_ranks(t, embeddings.vectors, rows, max_bytes=max_bytes)
            timings["exact_text_to_image_all_s"] = time.perf_counter() - t0
            base = _direction(full, ks, extra_t2i)
            base_label = f"exact over all {len(embeddings)} embeddings (the gallery the index searches)"
            report["exact_all"] = {"text_to_image": base}
        index = {
            **(index_info or {}),
            "text_to_image": {"recall": {str(k): idx_recall[k] for k in ks}, "queries": len(caps) + extra_t2i},
            "compared_with": base_label,
            "difference": {str(k): idx_recall[k] - base["recall"][str(k)] for k in ks},
            "_curve": [idx_recall[k] for k in range(1, k_max + 1)],
            "_base_ranks": base["_ranks"],
        }
        n_index = (index_info or {}).get("vectors")
        if n_index is not None and n_index != len(embeddings):
            warnings.append(f"the index holds {n_index} vectors but the embeddings table has {len(embeddings)}: "
                            f"the index-vs-exact difference then mixes ANN error with a different gallery")
        report["index"] = index

    if rerank is not None:
        owner = qpos[rows]
        report["rerank"] = rerank_recall(
            [captions.captions[c] for c in caps], t, pos[rows], owner, g,
            [embeddings.image_ids[r] for r in gallery_rows], embeddings.vectors[query_rows],
            [embeddings.image_ids[r] for r in query_rows], ks, rerank, (extra_t2i, extra_i2t), max_bytes)
        timings["rerank_s"] = sum(report["rerank"]["timings"].values())

    if reference:
        report["reference"] = reference_gap(report, reference)
        if report["reference"].get("note"):
            warnings.append(report["reference"]["note"])
    report["warnings"] = warnings
    report["timings"] = timings
    return report


def reference_gap(report: dict[str, Any], dataset: str) -> dict[str, Any]:
    if dataset not in REFERENCE:
        raise EvaluationError(f"--reference must be one of {sorted(REFERENCE)}, got {dataset!r}")
    ref = REFERENCE[dataset]
    out: dict[str, Any] = {"dataset": dataset, "label": ref["label"],
                           "source": "LightningDOT (NAACL 2021), no re-ranking"}
    for d in ("text_to_image", "image_to_text"):
        published = {str(k): v / 100 for k, v in ref[d].items()}
        ours = report["exact"][d]["recall"]
        out[d] = {"published": published, "gap": {k: ours[k] - v for k, v in published.items() if k in ours}}
    ev = report["evaluated"]
    if (ev["gallery_images"], ev["captions"]) != (ref["images"], ref["captions"]):
        out["note"] = (f"the published {ref['label']} figures rank {ref['images']} images / {ref['captions']} "
                       f"captions; this run ranks {ev['gallery_images']} images / {ev['captions']} captions, so "
                       f"the gap is not like for like")
    return out


def _mean_recall(block: dict[str, Any], ks: Sequence[int]) -> float:
    vals = [block[d]["recall"][str(k)] for d in ("text_to_image", "image_to_text") for k in ks]
    return float(np.mean(vals))


def _spread(counts: list[int]) -> dict[str, float]:
    if not counts:
        return {"min": 0, "max": 0, "mean": 0.0}
    return {"min": min(counts), "max": max(counts), "mean": float(np.mean(counts))}


def strip_private(obj: Any) -> Any:
    """The report without the arrays kept for plotting (keys starting with ``_``)."""
    if isinstance(obj, dict):
        return {k: strip_private(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [strip_private(v) for v in obj]
    return obj
