"""Seeded synthetic image corpora for the benchmarks: random crops of the bundled demo photos, saved as JPEGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DEMO_IMAGES = Path(__file__).resolve().parent.parent / "jobs" / "demo_data" / "images"


def make_corpus(directory: Path, n: int, seed: int = 0, long_side: tuple[int, int] = (240, 480),
                crop: tuple[float, float] = (0.6, 1.0)) -> list[Path]:
    """``n`` distinct JPEGs: crops of ``crop`` (fraction of each side) of the demo photos, resized so the long
    side is drawn from ``long_side`` (inclusive), named ``img_NNNNN.jpg`` in ``directory``."""
    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(DEMO_IMAGES.glob("*.jpg"))]
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        cw, ch = int(w * rng.uniform(*crop)), int(h * rng.uniform(*crop))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = src.crop((x, y, x + cw, y + ch))
        side = int(rng.integers(long_side[0], long_side[1] + 1))
        img = img.resize((side, max(1, round(side * ch / cw))) if cw >= ch else (max(1, round(side * cw / ch)), side))
        path = directory / f"img_{i:05d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths
