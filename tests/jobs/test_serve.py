"""``ldot serve`` as a user runs it: a real server process on 127.0.0.1 (ephemeral port), real HTTP requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from index import layout
from index.settings import BuildSettings
from pipeline.build_index_job import build_index
from tests.helpers_index import BEAM, write_embeddings
from tests.jobs.conftest import CAPTIONS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(setup):
    cmd = [sys.executable, "-m", "jobs.cli", "serve", setup.index, "--port", "0", "--checkpoint", setup.checkpoint,
           "--vocab", setup.vocab, "--poll-seconds", "0.2", "--max-k", "5", "--threads", "2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        url, seen, deadline = None, [], time.monotonic() + 180
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith("ldot serve: http://127.0.0.1:"):
                url = line.split()[2].rstrip("/")
        assert url, "server did not start:\n" + "".join(seen)
        yield type("Server", (), dict(url=url, proc=proc, setup=setup))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0  # SIGTERM is a clean stop


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def _search(server, query: str) -> tuple[int, dict]:
    status, kind, body = _get(f"{server.url}/search?{query}")
    assert kind.startswith("application/json")
    return status, json.loads(body)


def test_search_answers_json_from_the_live_version(server):
    q = urllib.parse.urlencode({"q": CAPTIONS[0], "k": 3})
    status, body = _search(server, q)
    assert status == 200 and body["version"] == layout.read_current(server.setup.index) and body["k"] == 3
    assert [set(r) for r in body["results"]] == [{"rank", "score", "image_id", "uri"}] * 3
    assert body["results"][0]["image_id"] == "photo-0" and [r["rank"] for r in body["results"]] == [1, 2, 3]
    assert body["results"][0]["score"] >= body["results"][1]["score"]
    # k is clamped to --max-k (5) and to the index size (8)
    assert _search(server, urllib.parse.urlencode({"q": CAPTIONS[1], "k": 50}))[1]["k"] == 5
    assert _search(server, urllib.parse.urlencode({"q": CAPTIONS[1]}))[1]["k"] == 5  # default 10, clamped


def test_bad_requests_are_clear_400s(server):
    for query, words in [("k=3", "q is required"), ("q=", "empty"), ("q=%20%20", "empty"),
                         ("q=dog&k=abc", "whole number"), ("q=dog&k=0", ">= 1"), ("q=%FF%FEdog", "not valid UTF-8"),
                         ("q=" + "a" * 1200, "at most 1000")]:
        status, body = _search(server, query)
        assert status == 400 and words in body["error"], (query, body)
    assert _search(server, "q=caf%C3%A9")[0] == 200  # UTF-8 is fine
    assert _get(f"{server.url}/nothing")[0] == 404
    req = urllib.request.Request(f"{server.url}/search?q=dog", data=b"x", method="POST")
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("POST was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 405
    assert _get(f"{server.url}/search?q=" + "a" * 20_000)[0] >= 400  # over the header bound: refused by the server


def test_search_page_has_a_form_thumbnails_and_escapes_the_query(server):
    status, kind, body = _get(f"{server.url}/?" + urllib.parse.urlencode({"q": CAPTIONS[0], "k": 2}))
    page = body.decode()
    assert status == 200 and kind.startswith("text/html")
    assert "<form" in page and "photo-0" in page and "data:image/jpeg;base64," in page
    status, _, body = _get(f"{server.url}/?q=%3Cscript%3Ealert(1)%3C/script%3E")
    assert status == 200 and "<script>alert" not in body.decode() and "&lt;script&gt;" in body.decode()
    assert _get(f"{server.url}/")[0] == 200  # the empty form


def test_a_new_published_version_is_served_without_a_restart(server, tmp_path):
    built = server.setup
    before = layout.read_current(built.index)
    vectors = built.model.encode_captions(CAPTIONS)
    ids = [f"v2-photo-{i}" for i in range(len(CAPTIONS))]
    write_embeddings(tmp_path / "emb.parquet", vectors / np.linalg.norm(vectors, axis=1, keepdims=True), ids=ids,
                     model=built.model.fingerprint)
    result = build_index([str(tmp_path / "emb.parquet")], built.index, BuildSettings(selfcheck_queries=4),
                         beam_args=BEAM)
    assert result.published and result.version != before
    deadline, body = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        body = _search(server, urllib.parse.urlencode({"q": CAPTIONS[2], "k": 1}))[1]
        if body["version"] == result.version:
            break
        time.sleep(0.1)
    assert body["version"] == result.version and body["results"][0]["image_id"] == "v2-photo-2"
