"""``ldot build-index`` / ``ldot search`` / ``ldot index-info`` end to end with a tiny text tower."""

from __future__ import annotations

import json
from pathlib import Path

from encoders.config import TINY_CONFIG
from index import layout
from tests.jobs.conftest import CAPTIONS


def test_build_index_cli_prints_reasoning_and_publishes(setup, ldot):
    assert "factory: IDMap,Flat" in setup.build_output and "exact search (Flat)" in setup.build_output
    assert "published" in setup.build_output
    result = ldot("index-info", setup.index)
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["version"] == layout.read_current(setup.index) and manifest["count"] == len(CAPTIONS)
    assert manifest["model"] == setup.model.fingerprint and manifest["beam_args"] == ["--direct_num_workers", "1"]
    assert ldot("index-info", setup.index, "--verify").exit_code == 0
    assert ldot("index-info", str(setup.root / "nothing")).exit_code == 1


def test_search_cli_finds_the_captioned_image_and_writes_html(setup, tmp_path, ldot):
    html = tmp_path / "results.html"
    args = ["search", setup.index, CAPTIONS[0], CAPTIONS[7], "-k", "3", "--checkpoint", setup.checkpoint,
            "--vocab", setup.vocab, "--json", "--html", str(html)]
    result = ldot(*args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    first, last = out["queries"]
    assert first["results"][0]["image_id"] == "photo-0" and last["results"][0]["image_id"] == "photo-7"
    assert len(first["results"]) == 3 and first["results"][0]["score"] >= first["results"][1]["score"]
    page = html.read_text()
    assert page.count("data:image/jpeg;base64,") >= 4 and "https://example.org/photo-7.jpg" in page
    plain = ldot("search", setup.index, CAPTIONS[2], "--checkpoint", setup.checkpoint,
                 "--vocab", setup.vocab)
    assert plain.exit_code == 0 and "photo-2" in plain.stdout.splitlines()[1]


def test_search_refuses_another_model_unless_forced(setup, ldot):
    base = ["search", setup.index, "a dog", "--random-weights", "--encoder-config", str(TINY_CONFIG),
            "--vocab", setup.vocab]
    refused = ldot(*base)
    assert refused.exit_code != 0 and "--force" in refused.output and setup.model.fingerprint in refused.output
    forced = ldot(*base, "--force", "-k", "2")
    assert forced.exit_code == 0, forced.output
    assert "warning" in forced.stderr and len(forced.stdout.splitlines()) == 3


def test_build_index_cli_errors_are_clear(setup, tmp_path, ldot):
    result = ldot("build-index", str(tmp_path / "missing.parquet"), "--output",
                  str(tmp_path / "ix"))
    assert result.exit_code != 0 and "not found" in result.output
    assert not Path(tmp_path / "ix" / "CURRENT").exists()
