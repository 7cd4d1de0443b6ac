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
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from core.files import BoundedLines, LineTooLong, align_to_line, is_local, local_path, open_regular, printable_id
from encoders.regions.formats.bad_records import BAD_RECORD, BadRecord, RegionItem, strict
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
    if w <= 0 or h <= 0:
        raise ValueError(f"{image_id}: image size {w}x{h}")
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


MAX_LINE_BYTES = 64 << 20  # 1000 boxes of 2048 fp32 features are ~11 MB of base64: a longer line is a bad record


def _open_binary(path: str) -> BinaryIO:
    """A local path with the OS (only a regular file: a FIFO would block), a URL through fsspec; ``.gz`` unpacked
    as a stream."""
    if is_local(path):
        f: BinaryIO = open_regular(local_path(path))
    else:
        import fsspec

        f = fsspec.open(path, "rb").open()
    return gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f


SPLIT_BYTES = 64 << 20  # a TSV is read in byte ranges of this size by workers (~150 images of 36 boxes)


def butd_tsv_ranges(path: str | Path, split_bytes: int | None = None) -> list[tuple[int, int | None]]:
    """The byte ranges ``[start, end)`` (of ``SPLIT_BYTES`` by default) a TSV is read in, each by a worker; a ``.gz``
    file is one (it cannot seek)."""
    path, split_bytes = str(path), split_bytes or SPLIT_BYTES
    if path.endswith(".gz"):
        return [(0, None)]
    with _open_binary(path) as f:
        size = f.seek(0, 2)
    return [(start, min(size, start + split_bytes)) for start in range(0, size, max(1, split_bytes))]


def iter_butd_tsv(path: str | Path, start: int = 0, end: int | None = None) -> Iterator[RegionItem]:
    """``(image_id, Regions)`` per line of a BUTD TSV file (local path or fsspec URL, ``.gz`` ok) that starts in
    bytes ``[start, end)``; a line that cannot be parsed (or is over ``MAX_LINE_BYTES``) is a ``BadRecord`` naming
    its line (``FILE:LINE``; in a range after the first, where line numbers are not known, the byte offset the line
    starts at: ``FILE:byte-OFFSET``), and reading goes on."""
    csv.field_size_limit(sys.maxsize)  # lines are bounded by BoundedLines instead
    with _open_binary(str(path)) as f:
        lines = BoundedLines(f, MAX_LINE_BYTES, align_to_line(f, start, MAX_LINE_BYTES), end)

        def where() -> str:
            return f"{path}:{lines.number}" if start == 0 else f"{path}:byte-{lines.offset}"

        while True:
            try:  # one record per line, parsed alone: a stray quote cannot pull the next lines into its field
                fields = next(csv.reader([next(lines)], delimiter="\t"), [])
            except StopIteration:
                return
            except (LineTooLong, csv.Error) as exc:
                yield BadRecord(where(), BAD_RECORD, f"{where()}: {exc}")
                continue
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if start == 0 and lines.number == 1 and fields[0] in ("image_id", "img_id"):
                continue  # a header line
            try:
                image_id, regions = parse_row(fields)
            except Exception as exc:  # ValueError, binascii.Error, OverflowError, MemoryError of a bad count...
                name = printable_id(fields[0]) if fields[0].strip() else where()
                yield BadRecord(name, BAD_RECORD, f"{where()}: {type(exc).__name__}: {exc}")
                continue
            yield printable_id(image_id), regions


def read_butd_tsv(path: str | Path) -> Iterator[tuple[str, Regions]]:
    """Like :func:`iter_butd_tsv`, raising ``ValueError`` (naming the line) at the first bad line."""
    yield from strict(iter_butd_tsv(path))


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
