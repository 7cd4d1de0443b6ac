"""Reader for BUTD TSV files (``generate_tsv.py`` of peteanderson80/bottom-up-attention).

One image per line, tab-separated, no header: ``image_id, image_w, image_h, num_boxes, boxes, features``,
where ``boxes`` ([N,4] xyxy pixels) and ``features`` ([N,2048]) are base64 float32 arrays. The LXMERT
variant (``img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes,
features``) is recognised by its 10 columns; a first line naming the columns is skipped.

Confidences: the original format has none. Its rows are already the selected regions, so every row gets
``conf = 1.0`` (it passes any threshold, and the descending order holds) and keeps its file order;
``soft_labels`` is ``None``. Files with ``objects_conf`` (LXMERT) use it as ``conf`` and are sorted by it.
``norm_bb`` is computed from the boxes and ``image_w``/``image_h``.
"""

from __future__ import annotations

import base64
import csv
import gzip
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from encoders.regions.types import Regions

BUTD_FIELDS = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
LXMERT_FIELDS = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
                 "num_boxes", "boxes", "features"]


def _b64_array(text: str, dtype, shape) -> np.ndarray:
    raw = base64.b64decode(text)
    arr = np.frombuffer(raw, dtype=dtype)
    n_expected = int(np.prod(shape))
    if arr.size != n_expected:
        raise ValueError(f"base64 array has {arr.size} values, expected {n_expected} for shape {shape}")
    return arr.reshape(shape)


def parse_row(fields: list[str]) -> tuple[str, Regions]:
    if len(fields) == len(BUTD_FIELDS):
        rec = dict(zip(BUTD_FIELDS, fields, strict=True))
        image_id, w, h = rec["image_id"], int(rec["image_w"]), int(rec["image_h"])
        conf = None
    elif len(fields) == len(LXMERT_FIELDS):
        rec = dict(zip(LXMERT_FIELDS, fields, strict=True))
        image_id, w, h = rec["img_id"], int(rec["img_w"]), int(rec["img_h"])
        conf = rec["objects_conf"]
    else:
        raise ValueError(f"BUTD TSV row has {len(fields)} columns, expected 6 (BUTD) or 10 (LXMERT)")
    n = int(rec["num_boxes"])
    boxes = _b64_array(rec["boxes"], np.float32, (n, 4))
    feats = np.frombuffer(base64.b64decode(rec["features"]), dtype=np.float32)
    if n == 0 or feats.size % n:
        raise ValueError(f"{image_id}: {feats.size} feature values for {n} boxes")
    feats = feats.reshape(n, -1)
    if conf is None:
        conf_arr = np.ones(n, dtype=np.float32)
    else:
        conf_arr = _b64_array(conf, np.float32, (n,))
        order = np.argsort(-conf_arr, kind="stable")
        boxes, feats, conf_arr = boxes[order], feats[order], conf_arr[order]
    return image_id, Regions.from_boxes(feats, boxes, conf_arr, None, w, h)


def _open_text(path: str):
    import fsspec

    f = fsspec.open(str(path), "rb").open()
    if str(path).endswith(".gz"):
        f = gzip.GzipFile(fileobj=f)
    return io.TextIOWrapper(f, encoding="utf-8", newline="")


def read_butd_tsv(path: str | Path) -> Iterator[tuple[str, Regions]]:
    """Yield ``(image_id, Regions)`` per line of a BUTD TSV file (local path or fsspec URL, ``.gz`` ok)."""
    csv.field_size_limit(sys.maxsize)
    with _open_text(str(path)) as f:
        for lineno, fields in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if lineno == 1 and fields[0] in ("image_id", "img_id"):
                continue  # a header line
            try:
                yield parse_row(fields)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from exc


def write_butd_tsv(path: str | Path, items) -> None:
    """Write ``(image_id, Regions)`` pairs in the original 6-column BUTD format (for tests and exports)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        for image_id, r in items:
            writer.writerow([
                image_id, r.width, r.height, r.num_boxes,
                base64.b64encode(r.boxes.astype(np.float32).tobytes()).decode(),
                base64.b64encode(r.features.astype(np.float32).tobytes()).decode(),
            ])
