"""Tying caption image names to embedding ``image_id``s: by id, basename, stem, a format template over the
image's record, or ``auto`` (the rule that matches the most images). Ambiguous keys match nothing."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

from evaluation.captions import CaptionError, CaptionSet

MAPPINGS = ("auto", "id", "filename", "basename", "stem")


def _basename(s: str) -> str:
    return posixpath.basename(s.rstrip("/").replace("\\", "/"))


def _stem(s: str) -> str:
    base = _basename(s)
    return base.rsplit(".", 1)[0] if "." in base[1:] else base


_NORMALISE = {"id": lambda s: s, "filename": lambda s: s, "basename": _basename, "stem": _stem}


@dataclass
class Mapping:
    """Result of tying a CaptionSet to the embedding ids: ``image_row[i]`` = row of image ``i`` or -1 if missing."""

    method: str
    image_row: list[int]
    tried: dict[str, int] = field(default_factory=dict)  # for auto: method -> images matched
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # key -> the several ids that give it

    @property
    def missing(self) -> list[int]:
        return [i for i, r in enumerate(self.image_row) if r < 0]


def _template_names(captions: CaptionSet, template: str) -> list[str]:
    out = []
    for name, record in zip(captions.names, captions.records, strict=True):
        values = dict(record)
        values.setdefault("name", name)
        values.setdefault("basename", _basename(name))
        values.setdefault("stem", _stem(name))
        try:
            out.append(template.format(**values))
        except (KeyError, IndexError) as e:
            raise CaptionError(f"template {template!r} needs field {e}; image {name!r} has {sorted(values)}") from e
        except ValueError as e:  # e.g. {imgid:012d} on a string
            raise CaptionError(f"template {template!r} cannot format image {name!r}: {e}") from e
    return out


def _lookup(ids: list[str], normalise: Callable[[str], str]) -> tuple[dict[str, int], dict[str, list[str]]]:
    table: dict[str, int] = {}
    clashes: dict[str, list[str]] = {}
    for row, image_id in enumerate(ids):
        key = normalise(image_id)
        if key in table:
            clashes.setdefault(key, [ids[table[key]]]).append(image_id)
        else:
            table[key] = row
    for key in clashes:
        table.pop(key)
    return table, clashes


def _map(names: list[str], ids: list[str], method: str, normalise: Callable[[str], str]) -> Mapping:
    table, clashes = _lookup(ids, normalise)
    keys = [normalise(n) for n in names]
    used = {k: clashes[k] for k in keys if k in clashes}
    return Mapping(method, [table.get(k, -1) for k in keys], ambiguous=used)


def map_images(captions: CaptionSet, ids: list[str], method: str = "auto") -> Mapping:
    """Tie each caption image to a row of ``ids`` (the embeddings' ``image_id`` or ``uri`` column).

    ``id``/``filename``: the names as they are; ``basename``: directories dropped on both sides; ``stem``:
    directories and extension dropped on both sides; ``template:FMT``: a Python format string over the image's
    record (``{filename}``, ``{imgid}``, ``{cocoid:012d}``, ``{stem}``, ``{name}``...) giving the exact ``image_id``;
    ``auto``: the first of id, basename, stem that matches the most images. Two ids that normalise to the same key
    are ambiguous and match nothing (reported as missing and as ambiguous), never an arbitrary one.
    """
    if method.startswith("template:"):
        return _map(_template_names(captions, method.split(":", 1)[1]), ids, method, _NORMALISE["id"])
    if method == "auto":
        best: Mapping | None = None
        tried: dict[str, int] = {}
        for m in ("id", "basename", "stem"):
            cand = _map(captions.names, ids, m, _NORMALISE[m])
            tried[m] = captions.num_images - len(cand.missing)
            if best is None or tried[m] > tried[best.method]:
                best = cand
            if not cand.missing:
                break
        assert best is not None
        best.tried = tried
        best.method = f"auto:{best.method}"
        return best
    if method not in _NORMALISE:
        raise CaptionError(f"unknown mapping {method!r}: use one of {list(MAPPINGS)} or template:FORMAT")
    return _map(captions.names, ids, method, _NORMALISE[method])
