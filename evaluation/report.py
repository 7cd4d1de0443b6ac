"""Present an evaluation report: a terminal table, the JSON file, and a PNG of recall@k against k."""

from __future__ import annotations

import json
from typing import Any

import fsspec
import numpy as np

from evaluation.core import curve, strip_private

DIRECTIONS = (("text_to_image", "text → image"), ("image_to_text", "image → text"))


def _pct(v: float | None) -> str:
    return "   -  " if v is None or v != v else f"{100 * v:6.1f}"


def _signed(v: float | None) -> str:
    return "   -  " if v is None or v != v else f"{100 * v:+6.1f}"


def format_table(report: dict[str, Any]) -> str:
    ks = report["ks"]
    cap, ev = report["captions"], report["evaluated"]
    split = ",".join(cap["split"]) if cap["split"] else "all rows"
    lines = [
        f"captions: {cap['source']} ({cap['format']}, split {split}): {cap['images']} images, {cap['captions']} "
        f"captions; mapping {report['mapping']['method']}",
        f"evaluated: {ev['captions']} captions, {ev['images']} images; gallery {ev['gallery']} = "
        f"{ev['gallery_images']} images of {report['embeddings']['rows']} embeddings",
    ]
    miss = report["missing"]
    if miss["images"]:
        lines.append(f"MISSING: {miss['images']} image(s) / {miss['captions']} caption(s) not in the embeddings "
                     f"({'left out' if miss['policy'] == 'skip' else 'counted as misses'})")
    header = f"{'':14}{'':10}" + "".join(f"{'R@' + str(k):>7}" for k in ks) + f"{'MedR':>7}"
    lines += ["", header, "-" * len(header)]
    ref = report.get("reference")
    index = report.get("index")
    rerank = report.get("rerank")
    for key, label in DIRECTIONS:
        exact = report["exact"][key]
        medr = exact.get("median_rank")
        rows = [("exact", "".join(f" {_pct(exact['recall'][str(k)])}" for k in ks)
                 + (f"{medr:7.0f}" if medr is not None else ""))]
        if index is not None and key == "text_to_image":
            if "exact_all" in report:
                base = report["exact_all"]["text_to_image"]
                rows.append(("exact-all", "".join(f" {_pct(base['recall'][str(k)])}" for k in ks)))
            rows.append(("index", "".join(f" {_pct(index['text_to_image']['recall'][str(k)])}" for k in ks)))
            rows.append(("Δ index", "".join(f" {_signed(index['difference'][str(k)])}" for k in ks)))
        if rerank is not None:
            block = rerank[key]
            after = "".join(f" {_pct(block['after']['recall'][str(k)])}" for k in ks)
            rows.append((f"rerank@{rerank['top_m']}", after))
            rows.append(("Δ rerank", "".join(f" {_signed(block['difference'][str(k)])}" for k in ks)))
        if ref is not None:
            pub, gap = ref[key]["published"], ref[key]["gap"]
            rows.append(("paper", "".join(f" {_pct(pub.get(str(k)))}" for k in ks)))
            rows.append(("gap", "".join(f" {_signed(gap.get(str(k)))}" for k in ks)))
        for n, (name, cells) in enumerate(rows):
            lines.append(f"{label if n == 0 else '':14}{name:<10}{cells}")
    lines.append(f"\nmean recall (both directions, k in {ks}): {100 * report['exact']['mean_recall']:.1f}")
    if index is not None:
        desc = ", ".join(f"{k}={index[k]}" for k in ("root", "version", "factory", "nprobe") if index.get(k))
        lines.append(f"index: {desc}; Δ index = index - {index['compared_with']}")
    if rerank is not None:
        lines.append(f"rerank@{rerank['top_m']}: the exact top {rerank['top_m']} re-ordered by UNITER "
                     f"({rerank.get('scores_with', 'cross-encoder')}, {rerank.get('source', '')}); "
                     f"Δ rerank = rerank - exact; {rerank['pairs_scored']} pairs scored")
    if ref is not None:
        lines.append(f"paper: {ref['label']}, {ref['source']}; gap = exact - paper")
    for w in report.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    with fsspec.open(path, "w") as f:
        json.dump(_jsonable(strip_private(report)), f, indent=2, ensure_ascii=False)
        f.write("\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def plot(report: dict[str, Any], path: str, title: str | None = None) -> None:
    """Recall@k (percent) against k: one panel per direction; exact solid, index dashed, re-ranked dash-dot,
    paper as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = report["ks"]
    k_max = max(ks)
    x = np.arange(1, k_max + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True, constrained_layout=True)
    ref = report.get("reference")
    index = report.get("index")
    rerank = report.get("rerank")
    lowest = 100.0
    ev = report["evaluated"]
    for ax, (key, label) in zip(axes, DIRECTIONS, strict=True):
        ranks = report["exact"][key]["_ranks"]
        y = 100 * np.asarray(curve(ranks, k_max))
        lowest = min(lowest, float(y.min()))
        gallery = f"{ev['gallery_images']} images" if key == "text_to_image" else f"{ev['captions']} captions"
        ax.plot(x, y, "-", color="tab:blue", lw=2.2, label=f"exact (over {gallery})")
        for k in ks:
            ax.plot([k], [y[k - 1]], "o", color="tab:blue")
            ax.annotate(f"{y[k - 1]:.1f}", (k, y[k - 1]), textcoords="offset points", xytext=(0, 7),
                        ha="center", color="tab:blue", fontsize=9, fontweight="bold")
        if index is not None and key == "text_to_image":
            if "exact_all" in report:
                ya = 100 * np.asarray(curve(index["_base_ranks"], k_max))
                ax.plot(x, ya, ":", color="tab:gray", lw=1.8,
                        label=f"exact (over all {report['embeddings']['rows']} embeddings)")
            yi = 100 * np.asarray(index["_curve"])
            lowest = min(lowest, float(yi.min()))
            ax.plot(x, yi, "--", color="tab:orange", lw=2.2, label="index (ANN)")
            for k in ks:
                delta = 100 * index["difference"][str(k)]
                ax.plot([k], [yi[k - 1]], "s", color="tab:orange")
                ax.annotate(f"{yi[k - 1]:.1f} (Δ{delta:+.1f})", (k, yi[k - 1]), textcoords="offset points",
                            xytext=(0, -15), ha="center", color="tab:orange", fontsize=9,
                            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
        if rerank is not None:
            yr = 100 * np.asarray(curve(rerank[key]["_ranks"], k_max))
            lowest = min(lowest, float(yr.min()))
            ax.plot(x, yr, "-.", color="tab:green", lw=2.2, label=f"re-ranked (top {rerank['top_m']} by UNITER)")
            for k in ks:
                delta = 100 * rerank[key]["difference"][str(k)]
                ax.plot([k], [yr[k - 1]], "D", color="tab:green")
                ax.annotate(f"{yr[k - 1]:.1f} (Δ{delta:+.1f})", (k, yr[k - 1]), textcoords="offset points",
                            xytext=(0, 20), ha="center", color="tab:green", fontsize=9,
                            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
        if ref is not None:
            pub = {int(k): 100 * v for k, v in ref[key]["published"].items() if int(k) <= k_max}
            if pub:
                lowest = min(lowest, min(pub.values()))
                ax.plot(list(pub), list(pub.values()), "*", color="black", ms=12, label=f"paper ({ref['dataset']})")
                for k, v in pub.items():
                    ax.annotate(f"{v:.1f}", (k, v), textcoords="offset points", xytext=(-9, 0), ha="right",
                                va="center", fontsize=8)
        n = report["exact"][key]["queries"]
        ax.set_title(f"{label}  ({n} queries)")
        ax.set_xlabel("k")
        ax.set_xticks(sorted(set(ks) | {1, k_max}))
        if k_max > 30:
            ax.set_xscale("log")
            ax.set_xticks(sorted(set(ks) | {1, k_max}), [str(k) for k in sorted(set(ks) | {1, k_max})])
            ax.set_xlim(0.8, k_max * 1.25)
        else:
            pad = 0.1 * (k_max - 1) + 0.4  # room for the labels at both ends
            ax.set_xlim(1 - pad, k_max + pad)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=9)
    axes[0].set_ylabel("recall@k (%)")
    axes[0].set_ylim(max(0.0, np.floor(lowest / 10) * 10 - 5), 107)
    axes[0].set_yticks(np.arange(0, 101, 10))
    fig.suptitle(title or f"Recall@k: {ev['images']} images, {ev['captions']} captions, "
                 f"gallery {ev['gallery_images']} images")
    with fsspec.open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
