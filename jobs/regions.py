"""``ldot regions``: extract bottom-up-attention region features from images into a regions Parquet table.

    ldot regions INPUT... --output DIR [--detector-config PATH] [--detector-weights PATH | --random-weights]
                 [--batch-size N] [--device auto|cpu|cuda] [--soft-labels/--no-soft-labels]

INPUT: image files, directories (recursive, image extensions only) and globs. ``image_id`` is the path relative
to its input root (the directory, the glob's fixed prefix, or the file's own directory). Writes
``DIR/regions-00000.parquet``... (schema: ``encoders.regions.formats.regions_table.REGIONS_SCHEMA``) and, for
inputs that could not be read, decoded or extracted, ``DIR/failures.jsonl`` (``image_id, uri, stage, error, message``);
each failure is also printed to stderr. Exit status 0 when the run completed (even with failures).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from encoders.regions.config_files import DEFAULT_CONFIG as DEFAULT_DETECTOR_CONFIG

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit


@dataclass(frozen=True)
class ImageRef:
    image_id: str
    path: str


def list_inputs(inputs: list[str]) -> list[ImageRef]:
    """Expand files, directories and globs; ids relative to each input's root; first id wins on duplicates."""
    refs: list[ImageRef] = []
    for item in inputs:
        p = Path(item)
        if glob.has_magic(item):
            parts = Path(item).parts
            fixed = [part for part in parts[: next(i for i, s in enumerate(parts) if glob.has_magic(s))]]
            root = Path(*fixed) if fixed else Path(".")
            matches = sorted(glob.glob(item, recursive=True))
            refs += [ImageRef(Path(m).relative_to(root).as_posix(), m) for m in matches if not Path(m).is_dir()]
        elif p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                for name in sorted(filenames):
                    f = Path(dirpath) / name
                    if f.suffix.lower() in IMAGE_EXTENSIONS:
                        refs.append(ImageRef(f.relative_to(p).as_posix(), str(f)))
        else:
            refs.append(ImageRef(p.name, str(p)))  # missing files become failures
    return refs


def decode_image(path: str) -> np.ndarray:
    """File -> HxWx3 uint8 RGB (EXIF orientation applied; any mode converted)."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64)
            arr = (arr / max(arr.max(), 1.0) * 255.0).astype(np.uint8)
            return np.repeat(arr[:, :, None], 3, axis=2)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


class FailureLog:
    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self._f = None

    def add(self, image_id: str, uri: str, stage: str, exc: BaseException) -> None:
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        row = {"image_id": image_id, "uri": uri, "stage": stage, "error": type(exc).__name__, "message": str(exc)}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        self.count += 1
        click.echo(f"failed: {image_id} ({stage}): {type(exc).__name__}: {exc}", err=True)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def run_regions(
    inputs: list[str],
    output: str,
    detector_config: str,
    detector_weights: str | None,
    batch_size: int = 4,
    device: str = "cpu",
    soft_labels: bool = True,
    rows_per_file: int = 1000,
) -> dict:
    from encoders.regions import RegionExtractor
    from encoders.regions.formats.regions_table import RegionsWriter

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("regions-*.parquet"), out / "failures.jsonl"]:
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    extractor = RegionExtractor.from_config(detector_config, weights=detector_weights, device=device,
                                            batch_size=batch_size)
    refs = list_inputs(inputs)
    seen: set[str] = set()
    failures = FailureLog(out / "failures.jsonl")
    writer = RegionsWriter(out, "regions", rows_per_file, with_soft_labels=soft_labels)
    pending: list[tuple[ImageRef, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        try:
            results = extractor.extract([im for _, im in pending])
        except Exception:  # isolate the image that broke the batch
            results = []
            for ref, im in pending:
                try:
                    results.append(extractor.extract([im])[0])
                except Exception as exc:
                    failures.add(ref.image_id, ref.path, "extract", exc)
                    results.append(None)
        for (ref, _), regions in zip(pending, results, strict=True):
            if regions is not None:
                writer.write(ref.image_id, ref.path, regions)
        pending.clear()

    for ref in refs:
        if ref.image_id in seen:
            failures.add(ref.image_id, ref.path, "list", ValueError(f"duplicate image_id {ref.image_id!r}"))
            continue
        seen.add(ref.image_id)
        if not Path(ref.path).is_file():
            failures.add(ref.image_id, ref.path, "read", FileNotFoundError(f"no such file: {ref.path}"))
            continue
        try:
            image = decode_image(ref.path)
        except Exception as exc:
            failures.add(ref.image_id, ref.path, "decode", exc)
            continue
        pending.append((ref, image))
        if len(pending) >= extractor.batch_size:
            flush()
    flush()
    writer.close()
    failures.close()
    seconds = time.perf_counter() - started
    return {
        "images": writer.count,
        "failures": failures.count,
        "files": [str(f) for f in writer.files],
        "fingerprint": extractor.fingerprint,
        "seconds": round(seconds, 3),
    }


@click.command("regions")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--detector-config", default=str(DEFAULT_DETECTOR_CONFIG), show_default=True,
              help="detectron2 YAML of the bottom-up-attention model (a file, or a shipped name: butd_r101_c4, tiny).")
@click.option("--detector-weights", default=None,
              help="Detector weights: a .pkl converted from Caffe or a .pth state dict (local path or fsspec URL).")
@click.option("--random-weights", is_flag=True, help="Use damped random weights (smoke runs and demos only).")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1), help="Images per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--soft-labels/--no-soft-labels", default=True, show_default=True,
              help="Store the 1601-way class distribution of each region.")
@click.option("--rows-per-file", default=1000, show_default=True, type=click.IntRange(min=1))
def regions_cmd(inputs, output, detector_config, detector_weights, random_weights, batch_size, device, soft_labels,
                rows_per_file):
    """Extract bottom-up-attention region features of images into Parquet."""
    if detector_weights and random_weights:
        raise click.UsageError("give either --detector-weights or --random-weights, not both")
    if not detector_weights and not random_weights:
        raise click.UsageError(
            "no detector weights: give --detector-weights PATH (a detectron2 .pkl converted from Caffe, e.g. "
            "faster_rcnn_from_caffe_attr_original.pkl, or a .pth), or --random-weights for a smoke run"
        )
    if random_weights:
        click.echo("warning: --random-weights: the region features are meaningless (smoke run only)", err=True)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    from core.paths import absolute
    from pipeline.launch_checks import absolute_model_paths

    paths = absolute_model_paths({"detector_config": detector_config, "detector_weights": detector_weights})
    try:
        summary = run_regions([absolute(p) for p in inputs], absolute(output), paths["detector_config"],
                              paths["detector_weights"], batch_size, device, soft_labels, rows_per_file)
    except ImportError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(summary))
