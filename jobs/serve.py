"""``ldot serve``: text -> images over HTTP from the live version of an index root.

    GET /search?q=TEXT&k=K   -> {"version", "k", "results": [{"rank", "score", "image_id", "uri"}, ...]}
    GET /?q=TEXT&k=K         -> a search page with thumbnails

The server is waitress (a pure-Python threaded WSGI server, pinned in setup.py): its worker threads are where
queries run side by side, one intra-op thread each (see ``encoders.query_encoder``), and it bounds request
headers, bodies and connections itself. The live version is re-read when ``CURRENT`` names another one (polled);
the new version is opened and verified in the background and then swapped in with one reference assignment, so
a request sees one version from start to end and none waits for the switch.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import signal
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import click
import numpy as np

from jobs.options import query_model_options

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 8192  # the request line (the query) and headers
MAX_BODY_BYTES = 1024  # only GET is served


class TextEncoder(Protocol):
    fingerprint: str

    def encode_captions(self, texts: list[str]) -> np.ndarray: ...


class BadRequest(ValueError):
    """A request the server answers with 400 and this message."""


class LiveIndex:
    """The live ``SearchIndex`` of ``root``, replaced when ``CURRENT`` changes (``poll`` / a polling thread).

    A new version whose model is not the query model, or that fails to open (a checksum, a missing shard), is
    logged and not served; the previous one stays live and the next poll tries again."""

    def __init__(self, root: str, fingerprint: str, *, nprobe: int | None = None, force: bool = False) -> None:
        from index.search import SearchIndex

        self.root, self.fingerprint, self.nprobe, self.force = root, fingerprint, nprobe, force
        self.current = SearchIndex.open(root, nprobe=nprobe)
        self._check(self.current.manifest, fatal=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _check(self, manifest: dict[str, Any], fatal: bool = False) -> bool:
        from jobs.search import model_mismatch

        msg = model_mismatch(self.fingerprint, manifest)
        if msg and not self.force:
            if fatal:
                raise click.ClickException(msg + " (use --force to serve anyway)")
            log.error("not switching to version %s: %s", manifest.get("version"), msg)
            return False
        return True

    def poll(self) -> bool:
        """Switch to the live version if it is another one; True when it switched."""
        from index import layout
        from index.errors import IndexError_
        from index.search import SearchIndex

        try:
            name = layout.read_current(self.root)
            if name is None or name == self.current.version:
                return False
            new = SearchIndex.open(self.root, nprobe=self.nprobe, version=name)
        except (IndexError_, OSError) as e:
            log.error("cannot open the new live version of %s (still serving %s): %s", self.root,
                      self.current.version, e)
            return False
        if not self._check(new.manifest):
            return False
        old, self.current = self.current.version, new
        log.warning("switched %s from version %s to %s (%d vectors)", self.root, old, new.version, new.ntotal)
        return True

    def start(self, every: float) -> None:
        def loop() -> None:
            while not self._stop.wait(every):
                self.poll()

        self._thread = threading.Thread(target=loop, name="ldot-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class SearchApp:
    """The WSGI application: query parsing and bounds, JSON and HTML answers."""

    def __init__(self, encoder: TextEncoder, live: LiveIndex, *, max_k: int = 100, max_query_chars: int = 1000,
                 thumbnails: int = 1024) -> None:
        from index.html import thumbnail_src

        self.encoder, self.live, self.max_k, self.max_query_chars = encoder, live, max_k, max_query_chars
        self.thumbnail = functools.lru_cache(maxsize=thumbnails)(thumbnail_src)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
        try:
            if path not in ("/", "/search"):
                return _answer(start_response, "404 Not Found", {"error": f"no such path: {path}"})
            if method not in ("GET", "HEAD"):
                return _answer(start_response, "405 Method Not Allowed", {"error": "only GET is served"},
                               [("Allow", "GET, HEAD")])
            params = self.params(environ.get("QUERY_STRING", ""))
            if path == "/search":
                if "q" not in params:
                    raise BadRequest("the query parameter q is required")
                return _answer(start_response, "200 OK", self.search(params["q"], params.get("k")))
            return _answer_html(start_response, self.page(params.get("q"), params.get("k")))
        except BadRequest as e:
            return _answer(start_response, "400 Bad Request", {"error": str(e)})
        except Exception:
            log.exception("error answering %s %s", method, path)
            return _answer(start_response, "500 Internal Server Error", {"error": "internal error (see the log)"})

    @staticmethod
    def params(query_string: str) -> dict[str, str]:
        """The query string as UTF-8 (percent-encoded or raw); anything else is a 400."""
        raw = query_string.encode("latin-1")  # WSGI hands the raw bytes over as latin-1 text
        try:
            pairs = urllib.parse.parse_qsl(urllib.parse.quote(raw, safe="&=+%;/:,?@!$'()*"), keep_blank_values=True,
                                           encoding="utf-8", errors="strict")
        except UnicodeDecodeError as e:
            raise BadRequest(f"the query string is not valid UTF-8 ({e.reason} at byte {e.start})") from e
        return dict(pairs)

    def search(self, text: str, k_text: str | None) -> dict[str, Any]:
        text = text.strip()
        if not text:
            raise BadRequest("the query q is empty")
        if len(text) > self.max_query_chars:
            raise BadRequest(f"the query is {len(text)} characters; at most {self.max_query_chars} are served")
        try:
            k = int(k_text) if k_text not in (None, "") else 10
        except ValueError as e:
            raise BadRequest(f"k must be a whole number, got {k_text!r}") from e
        if k < 1:
            raise BadRequest(f"k must be >= 1, got {k}")
        idx = self.live.current  # one version for the whole request, whatever a switch does meanwhile
        k = min(k, self.max_k, max(idx.ntotal, 1))
        records = idx.search(self.encoder.encode_captions([text]), k).records(0)
        results = [{key: r[key] for key in ("rank", "score", "image_id", "uri")} for r in records]
        return {"version": idx.version, "k": k, "results": results}

    def page(self, text: str | None, k_text: str | None) -> str:
        from index.html import render_results_html

        e = html.escape
        idx = self.live.current
        form = (f"<form method='get' action='/'><input name='q' size='60' autofocus value='{e(text or '', True)}'> "
                f"<input name='k' size='3' value='{e(k_text or '10', True)}'> <button>search</button></form>")
        if not text or not text.strip():
            return render_results_html([], [], idx.manifest, title="ldot serve", header=form)
        answer = self.search(text, k_text)
        return render_results_html([text], [answer["results"]], idx.manifest, title="ldot serve", header=form,
                                   thumbnail=self.thumbnail)


def _answer(start_response: Callable, status: str, body: dict[str, Any],
            headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    data = json.dumps(body).encode("utf-8")
    start_response(status, [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(data))),
                            *(headers or [])])
    return [data]


def _answer_html(start_response: Callable, page: str) -> list[bytes]:
    data = page.encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]


def build_encoder(checkpoint: str | None, vocab: str | None, encoder_config: str | None, random_weights: bool,
                  device: str, engine: str, int8: bool, workers: int) -> TextEncoder:
    """The query encoder ``ldot serve`` (and bench/query.py) use: ONNX Runtime by default, eager torch on request."""
    from encoders.lightningdot import LightningDOT

    model = LightningDOT.load(checkpoint, encoder_config, random_weights=random_weights, device=device, vocab=vocab)
    if engine == "torch":
        if int8:
            raise click.UsageError("--int8 needs --engine onnx")
        import torch

        torch.set_num_threads(1)  # process-wide, and this process is the server's: one thread per query
        return model
    if device != "cpu":
        raise click.UsageError(f"--engine onnx runs on the CPU; use --engine torch for --device {device}")
    from encoders.query_encoder import QueryEncoder

    return QueryEncoder(model, "int8" if int8 else "fp32", threads=workers)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # waitress's run() ends on it, after its worker threads finish


@click.command("serve")
@click.argument("root")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0: any free port.")
@query_model_options("Serve")
@click.option("--engine", type=click.Choice(["onnx", "torch"]), default="onnx", show_default=True,
              help="Query encoder: ONNX Runtime (CPU, fast) or the eager torch model.")
@click.option("--int8", is_flag=True, help="int8 text tower (faster; cosine to fp32 ~0.99, see README).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Queries served side by side (default: the CPUs this process may use).")
@click.option("--max-k", type=click.IntRange(min=1), default=100, show_default=True, help="Largest k served.")
@click.option("--max-query-chars", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--poll-seconds", type=click.FloatRange(min=0.05), default=5.0, show_default=True,
              help="How often CURRENT is checked for a new version.")
def serve_cmd(root: str, host: str, port: int, checkpoint: str | None, vocab: str | None,
              encoder_config: str | None, random_weights: bool, device: str, nprobe: int | None, force: bool,
              engine: str, int8: bool, threads: int | None, max_k: int, max_query_chars: int,
              poll_seconds: float) -> None:
    """Serve text search over the live version of index ROOT (GET /search?q=TEXT&k=K, GET /)."""
    import os

    import faiss
    from waitress.server import create_server

    from index.errors import IndexError_

    threads = threads or len(os.sched_getaffinity(0))
    # FAISS's OpenMP threads at batch 1 wait on each other when another process holds a core (0.4 ms -> 25+ ms,
    # bench/query.py): one thread per search; queries run side by side on the server's threads instead.
    faiss.omp_set_num_threads(1)
    encoder = build_encoder(checkpoint, vocab, encoder_config, random_weights, device, engine, int8, threads)
    try:
        live = LiveIndex(root, encoder.fingerprint, nprobe=nprobe, force=force)
    except IndexError_ as e:
        raise click.ClickException(str(e)) from e
    app = SearchApp(encoder, live, max_k=max_k, max_query_chars=max_query_chars)
    server = create_server(app, host=host, port=port, threads=threads, max_request_header_size=MAX_HEADER_BYTES,
                           max_request_body_size=MAX_BODY_BYTES, connection_limit=256, channel_timeout=30,
                           ident="ldot-serve", clear_untrusted_proxy_headers=True)
    live.start(poll_seconds)
    signal.signal(signal.SIGTERM, _interrupt)
    click.echo(f"ldot serve: http://{host}:{server.effective_port}/ version {live.current.version}, "
               f"{live.current.ntotal} vectors, {engine} {'int8' if int8 else 'fp32'}, {threads} threads", err=True)
    sys.stderr.flush()
    try:
        server.run()  # returns on SIGINT / SIGTERM
    finally:
        live.stop()
        close = getattr(encoder, "close", None)
        if close:
            close()
        click.echo("ldot serve: stopped", err=True)
