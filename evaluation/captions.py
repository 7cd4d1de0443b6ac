"""Caption sets for retrieval evaluation (their image names are tied to embedding ids by ``evaluation.image_mapping``).

Readers (picked from the file's content, not only its extension):

- Karpathy split JSON (``dataset_flickr30k.json``, ``dataset_coco.json``): ``{"images": [{"filename", "imgid",
  "split", "sentences": [{"raw", "tokens", ...}], ...}]}``;
- COCO captions annotations (``captions_val2014.json``): ``{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}``;
- CSV / TSV / pipe-separated with a header naming an image column and a caption column, and JSON Lines (or a
  JSON list) of objects with those keys; an optional ``split`` column is honoured by ``--split``.

Every caption keeps the record of its image (``filename``, ``imgid``, ``cocoid`` ...) so a ``template:`` mapping
can build an ``image_id`` from any of those fields.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import fsspec

from core.errors import UsageError

IMAGE_KEYS = ("image_id", "image", "filename", "file_name", "image_name", "img", "imgid", "id")
CAPTION_KEYS = ("caption", "text", "sentence", "raw", "comment", "description")


class CaptionError(UsageError):
    """A captions file that cannot be read, or a mapping that cannot tie it to the embeddings."""


@dataclass
class CaptionSet:
    """Captions grouped by image, in file order.

    ``names[i]`` is the name the captions file gives image ``i`` (Karpathy: ``filename``; CSV: its image column),
    ``records[i]`` every scalar field the file has for it; ``caption_image[c]`` is the image of caption ``c``.
    """

    names: list[str]
    records: list[dict[str, Any]]
    captions: list[str]
    caption_image: list[int]
    source: str = ""
    format: str = ""
    split: list[str] | None = None  # the splits kept; None when the file has no split field (all rows kept)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def num_images(self) -> int:
        return len(self.names)

    def captions_per_image(self) -> list[int]:
        counts = [0] * len(self.names)
        for i in self.caption_image:
            counts[i] += 1
        return counts


class _Builder:
    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.captions: list[str] = []
        self.caption_image: list[int] = []

    def add(self, name: str, caption: str, record: dict[str, Any]) -> None:
        i = self.index.get(name)
        if i is None:
            i = self.index[name] = len(self.names)
            self.names.append(name)
            self.records.append(record)
        self.captions.append(caption)
        self.caption_image.append(i)

    def build(self, **kw: Any) -> CaptionSet:
        return CaptionSet(self.names, self.records, self.captions, self.caption_image, **kw)


def _splits(split: str | Iterable[str] | None) -> set[str] | None:
    if split is None:
        return None
    if isinstance(split, str):
        split = split.split(",")
    wanted = {s.strip() for s in split if s.strip()}
    return None if not wanted or wanted == {"all"} else wanted


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, str | int | float | bool) or v is None}


def load_captions(path: str, split: str | Iterable[str] | None = "test", text_field: str = "raw") -> CaptionSet:
    """Read any supported captions file; keep the images of ``split`` (comma-separated; ``all`` keeps every row).

    ``text_field`` (Karpathy only): ``raw`` (the caption as written, what LightningDOT encodes) or ``tokens``
    (the pre-tokenized words joined with spaces).
    """
    with fsspec.open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CaptionError(f"{path}: not UTF-8 text ({e})") from e
    stripped = text.lstrip()
    if not stripped:
        raise CaptionError(f"{path}: empty captions file")
    wanted = _splits(split)
    if stripped[0] in "[{":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None  # maybe JSON Lines
        if isinstance(obj, dict) and isinstance(obj.get("images"), list) and "annotations" in obj:
            return _read_coco(obj, path, wanted)
        if isinstance(obj, dict) and isinstance(obj.get("images"), list):
            return _read_karpathy(obj, path, wanted, text_field)
        if isinstance(obj, list):
            return _read_rows(obj, path, wanted, "json")
        if obj is None and stripped[0] == "{":
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise CaptionError(f"{path}:{n}: not JSON Lines ({e})") from e
            return _read_rows(rows, path, wanted, "jsonl")
        raise CaptionError(f"{path}: JSON that is neither a Karpathy split file, COCO captions, nor a list of rows")
    return _read_rows(_csv_rows(text, path), path, wanted, "csv")


def _read_karpathy(obj: dict, path: str, wanted: set[str] | None, text_field: str) -> CaptionSet:
    if text_field not in ("raw", "tokens"):
        raise CaptionError(f"text_field must be 'raw' or 'tokens', got {text_field!r}")
    b = _Builder()
    seen_splits: set[str] = set()
    no_sentences = []
    for n, img in enumerate(obj["images"]):
        if not isinstance(img, dict) or "sentences" not in img:
            raise CaptionError(f"{path}: images[{n}] has no 'sentences': not a Karpathy split file")
        img_split = img.get("split")
        seen_splits.add(str(img_split))
        if wanted is not None and img_split not in wanted:
            continue
        name = img.get("filename")
        if name is None:
            raise CaptionError(f"{path}: images[{n}] has no 'filename'")
        if not img["sentences"]:
            no_sentences.append(str(name))
            continue
        record = _scalars(img)
        if img.get("filepath"):
            record["path"] = posixpath.join(img["filepath"], name)
        for s in img["sentences"]:
            if text_field == "raw":
                caption = s.get("raw")
            else:
                caption = " ".join(s["tokens"]) if s.get("tokens") is not None else None
            if not isinstance(caption, str):
                raise CaptionError(f"{path}: a sentence of {name} has no {text_field!r}")
            b.add(str(name), caption.strip(), record)
    if wanted is not None and not b.names:
        raise CaptionError(f"{path}: no image in split {sorted(wanted)}; the file has splits {sorted(seen_splits)}")
    notes = [f"{len(no_sentences)} images have no sentences and cannot be queried: {no_sentences[:5]}"] \
        if no_sentences else []
    return b.build(source=path, format="karpathy", split=sorted(wanted) if wanted else None, notes=notes)


def _read_coco(obj: dict, path: str, wanted: set[str] | None) -> CaptionSet:
    images = {img["id"]: img for img in obj["images"]}
    b = _Builder()
    notes = []
    if wanted is not None:
        notes.append(f"COCO captions files carry no split: --split {','.join(sorted(wanted))} not applied")
    for ann in obj["annotations"]:
        img = images.get(ann.get("image_id"))
        if img is None:
            raise CaptionError(f"{path}: annotation {ann.get('id')} names image {ann.get('image_id')} not in 'images'")
        b.add(str(img.get("file_name", img["id"])), str(ann["caption"]).strip(), _scalars(img))
    return b.build(source=path, format="coco", notes=notes)


def _csv_rows(text: str, path: str) -> list[dict[str, Any]]:
    first = text.lstrip().splitlines()[0]
    delimiter = max(",\t|;", key=first.count)
    if first.count(delimiter) == 0:
        raise CaptionError(f"{path}: CSV needs a header with an image column and a caption column")
    reader = csv.DictReader(io.StringIO(text.lstrip()), delimiter=delimiter)
    rows = []
    for row in reader:
        rows.append({(k or "").strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()})
    return rows


def _pick(keys: Iterable[str], candidates: tuple[str, ...], what: str, path: str) -> str:
    lower = {k.lower(): k for k in keys}
    for c in candidates:
        if c in lower:
            return lower[c]
    raise CaptionError(f"{path}: no {what} column; expected one of {list(candidates)}, found {sorted(lower)}")


def _read_rows(rows: list[Any], path: str, wanted: set[str] | None, fmt: str) -> CaptionSet:
    if not rows:
        raise CaptionError(f"{path}: no caption rows")
    if not all(isinstance(r, dict) for r in rows):
        raise CaptionError(f"{path}: every row must be an object with an image and a caption")
    keys = rows[0].keys()
    cap_key = _pick(keys, CAPTION_KEYS, "caption", path)
    img_key = _pick([k for k in keys if k != cap_key], IMAGE_KEYS, "image", path)
    split_key = next((k for k in keys if k.lower() == "split"), None)
    notes = []
    if wanted is not None and split_key is None:
        notes.append(f"{path} has no split column: --split {','.join(sorted(wanted))} not applied, all rows kept")
    b = _Builder()
    for n, row in enumerate(rows):
        name, caption = row.get(img_key), row.get(cap_key)
        if name is None or name == "" or not isinstance(caption, str):
            raise CaptionError(f"{path}: row {n + 1} lacks an image ({img_key}) or a caption ({cap_key})")
        if wanted is not None and split_key is not None and row.get(split_key) not in wanted:
            continue
        b.add(str(name), caption.strip(), _scalars(row))
    if not b.names:
        raise CaptionError(f"{path}: no rows in split {sorted(wanted or [])}")
    return b.build(source=path, format=fmt, split=sorted(wanted) if wanted and split_key else None, notes=notes)
