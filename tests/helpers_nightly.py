"""Nightly settings on the tiny models, demo photos copied into inputs, the live index as vectors, and a subprocess
environment for kill tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from pipeline.nightly import CRASH_ENV
from tests.helpers_pipeline import DEMO_IMAGES, REPO, TINY_DETECTOR, TINY_ENCODER


def settings(root: Path, **over) -> dict:
    values = dict(inputs=[str(root / "corpus")], work_dir=str(root / "work"), index_root=str(root / "index"),
                  encoder_config=TINY_ENCODER, detector_config=TINY_DETECTOR, random_weights=True, device="cpu",
                  keep=3)
    values.update(over)
    return values


def copy_demo_photos(folder: Path, *names: str, **renamed: str) -> None:
    """Copy demo photos into ``folder`` (made if missing); ``renamed``: the photo to copy under another name, e.g.
    ``{"coffee.jpg": "chelsea.jpg"}`` (new bytes under an old id)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(DEMO_IMAGES / renamed.get(name, name), folder / name)


def live(root: Path) -> str | None:
    """The live version of the nightly index under ``root``."""
    from index import layout

    return layout.read_current(str(root / "index"))


def live_vectors(root: Path) -> dict[str, np.ndarray]:
    """image_id -> vector of the live version, opened the way a server does (checksums verified)."""
    import faiss

    from index.search import SearchIndex

    s = SearchIndex.open(str(root / "index"))
    idx = faiss.downcast_index(s.index)
    ids = faiss.vector_to_array(idx.id_map)
    vectors = idx.index.reconstruct_n(0, idx.ntotal)
    names = s.lookup(ids[None, :])[0][0]
    return dict(zip(names, vectors, strict=True))


def assert_same_index(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5)


def cli_env(crash: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["PYTHONPATH"] = str(REPO)
    if crash:
        env[CRASH_ENV] = crash
    return env
