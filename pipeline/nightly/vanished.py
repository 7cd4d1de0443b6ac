"""The vanished-share guard: how much of the base snapshot is missing from this run's embeddings.

A failed mount, an emptied folder or a manifest that lost its rows does not fail anything: the images are simply
not listed, and an index built from what is left would be published smaller without a word. So the run compares
image_ids: a row of the base snapshot that is not in this run's embeddings vanished, whether it was not listed
any more or failed this time (a failure row of an image that was in the base counts unless it was carried).
Above ``max_vanished_rate`` of the base the run is rejected like the failure-rate guard (exit 4, nothing built).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from core.paths import absolute, is_url
from pipeline.nightly.snapshots import WorkDir, read_columns
from transforms.listing import is_manifest

TOP = 3      # inputs named in the reason
LISTED = 10  # inputs listed in the report


def measure(work: WorkDir, base: str, run: str, inputs: Sequence[str]) -> dict[str, Any]:
    """{base, base_count, vanished, failed (of those, with a failure row), unlisted, rate, by_input: [{input,
    vanished, of}] most lost first}; ``inputs`` (the base run's and this run's) name where the rows came from."""
    before = read_columns(work.embeddings(base), ["image_id", "uri"])
    now = read_columns(work.embeddings(run), ["image_id"]).column("image_id")
    failed_ids = read_columns(work.failures(run), ["image_id"]).column("image_id")
    gone = before.filter(pc.invert(pc.is_in(before.column("image_id"), value_set=now)))
    failed = int(pc.sum(pc.is_in(gone.column("image_id"), value_set=failed_ids)).as_py() or 0)
    n, v = before.num_rows, gone.num_rows
    return {"base": base, "base_count": n, "vanished": v, "failed": failed, "unlisted": v - failed,
            "rate": v / n if n else 0.0, "by_input": _by_input(before.column("uri"), gone.column("uri"), inputs)}


def describe(m: dict[str, Any]) -> str:
    most = ", ".join(f"{x['input']} ({x['vanished']} of {x['of']})" for x in m["by_input"][:TOP])
    text = (f"{m['vanished']} of the {m['base_count']} images of snapshot {m['base']} ({m['rate']:.1%}) are missing "
            f"from this run ({m['unlisted']} no longer listed, {m['failed']} failed)")
    return f"{text}; most from {most}" if most else text


def _input_prefix(spec: str) -> str | None:
    """The uri prefix of the images a folder/glob/file INPUT lists (as the listing writes uris); None for a
    manifest, whose rows may point anywhere."""
    if is_manifest(spec):
        return None  # the listing's rule
    path = spec if is_url(spec) else str(absolute(spec))  # text only: no filesystem is opened to name an input
    cut = min([path.find(c) for c in "*?[" if c in path], default=-1)
    if cut >= 0:
        path = path[:cut].rsplit("/", 1)[0]
    return path.rstrip("/") or "/"


def _by_input(before: pa.ChunkedArray, gone: pa.ChunkedArray, inputs: Sequence[str]) -> list[dict[str, Any]]:
    """Vanished rows per INPUT (longest matching folder prefix; rows under none: the one manifest input, if there is
    exactly one, else their parent folder), with the base snapshot's count of the same input; the ``LISTED`` that
    lost most."""
    specs = list(dict.fromkeys(inputs))
    prefixes = sorted(((p, s) for s in specs if (p := _input_prefix(s)) is not None), key=lambda x: -len(x[0]))
    manifests = [s for s in specs if _input_prefix(s) is None]

    def label(uri: str) -> tuple[str, str]:
        for prefix, spec in prefixes:
            if uri == prefix or uri.startswith(prefix.rstrip("/") + "/"):
                return spec, prefix
        if len(manifests) == 1:
            return manifests[0], ""
        parent = uri.rsplit("/", 1)[0]
        return f"uris under {parent}", parent

    lost = Counter(label(u) for u in gone.to_pylist())
    out = []
    for (name, prefix), count in lost.most_common(LISTED):
        if prefix:
            of = int(pc.sum(pc.or_(pc.equal(before, prefix), pc.starts_with(before, prefix.rstrip("/") + "/")))
                     .as_py() or 0)
        else:
            of = sum(1 for u in before.to_pylist() if label(u)[0] == name)
        out.append({"input": name, "vanished": count, "of": of})
    return out
