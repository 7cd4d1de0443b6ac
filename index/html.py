"""A self-contained HTML page of search results with thumbnails.

``http(s)://`` URIs are referenced as ``<img src>``; local files (and other fsspec URLs that can be read) are
embedded as base64 JPEG thumbnails so the page works when moved; anything unreadable shows its URI instead.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from typing import Any

THUMB = 256


def thumbnail_src(uri: str, size: int = THUMB) -> str | None:
    if not uri:
        return None
    if uri.startswith(("http://", "https://", "data:")):
        return uri
    try:
        import fsspec
        from PIL import Image

        with fsspec.open(uri, "rb") as f:
            img = Image.open(io.BytesIO(f.read()))
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    except Exception:  # unreadable or not an image: the page shows the URI instead
        return None


def render_results_html(queries: Sequence[str], results: Sequence[Sequence[dict[str, Any]]],
                        manifest: dict[str, Any] | None = None, title: str = "ldot search", *, header: str = "",
                        thumbnail: Callable[[str], str | None] = thumbnail_src) -> str:
    """``results[q]`` is a list of {rank, score, image_id, uri} dicts for ``queries[q]`` (re-ranked results also
    carry ``rerank_score``, ``dot_score`` and ``dot_rank``: both scores are shown). ``header``: HTML placed under
    the title as is (``ldot serve``'s search form); ``thumbnail``: URI -> ``<img src>`` (a server caches it)."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:1.5em}h2{margin-top:1.5em}",
        ".grid{display:flex;flex-wrap:wrap;gap:12px}.card{width:260px;border:1px solid #ddd;border-radius:6px;"
        "padding:6px;font-size:12px;word-break:break-all}.card img{max-width:256px;max-height:256px;display:block;"
        "margin:auto}.meta{color:#555}.missing{height:120px;background:#f3f3f3;display:flex;align-items:center;"
        "justify-content:center;color:#888}",
        "</style></head><body>",
        f"<h1>{e(title)}</h1>",
        header,
    ]
    if manifest:
        parts.append(f"<p class='meta'>index version {e(str(manifest.get('version')))}, "
                     f"{e(str(manifest.get('factory')))}, {manifest.get('count')} vectors, "
                     f"nprobe {e(str(manifest.get('nprobe')))}, model {e(str(manifest.get('model')))}</p>")
    for query, rows in zip(queries, results, strict=True):
        parts.append(f"<h2>{e(query)}</h2><div class='grid'>")
        for r in rows:
            src = thumbnail(r.get("uri") or "")
            img = (f"<img loading='lazy' src='{e(src, quote=True)}' alt='{e(r['image_id'], quote=True)}'>"
                   if src else "<div class='missing'>no preview</div>")
            scores = f"score {r['score']:.4f}"
            if "dot_score" in r:  # re-ranked: the cross-encoder's score orders, the dot product chose
                scores = f"UNITER {r['rerank_score']:.4f} · dot {r['dot_score']:.4f} (#{r['dot_rank']})"
            parts.append(f"<div class='card'>{img}<div><b>#{r['rank']}</b> {scores}</div>"
                         f"<div>{e(r['image_id'])}</div><div class='meta'>{e(r.get('uri') or '')}</div></div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
