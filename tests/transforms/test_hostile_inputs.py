"""Hostile and odd inputs: no hang, no unbounded read, no crashed run, nothing lost without a row.

Every hostile file is built here. One pipeline run takes a folder of special files and odd names, globs,
an empty folder and broken manifests together and must end with exactly the expected embeddings and failure
rows; the cases that need their own setting (another user, a 10,000-deep tree, a remote store) run alone.
"""

from __future__ import annotations

import base64
import gzip
import io
import itertools
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import ClassVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image, UnidentifiedImageError

from core.files import ReadError, local_path, local_uri, printable_id
from encoders.config import TINY_CONFIG
from encoders.lightningdot import LightningDOT
from encoders.regions.formats import BadRecord, detect_format, iter_region_records, read_regions
from encoders.regions.formats._msgpack import packb
from encoders.regions.formats.butd_tsv import write_butd_tsv
from encoders.regions.formats.regions_table import RegionsWriter, regions_to_row, rows_to_table
from jobs.cli import main as cli
from pipeline.beam_args import BeamFlagsCommand, split_beam_args
from pipeline.embed_job import EmbedJob, run_embed_job
from tests.helpers_index import write_embeddings, write_vocab
from tests.helpers_pipeline import (
    REPO,
    TINY_DETECTOR,
    TINY_ENCODER,
    encode,
    photo,
    png_with_declared_size,
    read_table,
)
from tests.helpers_regions import make_regions, uniter_record, write_lmdb
from transforms.finite import NON_FINITE_EMBEDDING, non_finite_message
from transforms.image_types import PIL_FORMATS
from transforms.listing import MAX_MANIFEST_LINE, expand_input
from transforms.reading import read_bytes
from transforms.records import ImageRef

TINY = {"random_weights": True, "encoder_config": TINY_ENCODER, "detector_config": TINY_DETECTOR, "device": "cpu"}
TINY_FLAGS = ["--random-weights", "--encoder-config", TINY_ENCODER, "--detector-config", TINY_DETECTOR,
              "--device", "cpu"]


def small_jpeg(path: Path | str, name: str = "coffee.jpg") -> None:
    photo(name, 48).save(path, quality=85)


def split(items) -> tuple[list[ImageRef], list[dict]]:
    items = list(items)
    return [i for i in items if isinstance(i, ImageRef)], [i for i in items if not isinstance(i, ImageRef)]


# ---- one run over every kind of hostile input ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    pics = root / "pics"
    pics.mkdir()
    cup, rocket = pics / "cup.jpg", pics / "rocket.jpg"
    small_jpeg(cup)
    small_jpeg(rocket, "rocket.jpg")
    expected_ok: set[str] = set()
    expected_failed: dict[str, tuple[str, str]] = {}

    special = root / "special"
    special.mkdir()
    for name in ("good.jpg", "a::b.jpg", "x#y.jpg", "file:name.jpg", "new\nline.jpg", os.fsdecode(b"bad\xff.jpg")):
        small_jpeg(special / name)
    expected_ok |= {"good.jpg", "a::b.jpg", "x#y.jpg", "file:name.jpg", "new%0Aline.jpg", "bad%FF.jpg"}
    os.mkfifo(special / "fifo.jpg")                             # would block the first open() forever
    (special / "devzero.jpg").symlink_to("/dev/zero")           # would be read without end
    (special / "devnull.png").symlink_to("/dev/null")
    (special / "self.jpg").symlink_to(special / "self.jpg")     # ELOOP
    (special / "loop").symlink_to(special)                      # a directory loop
    (special / "wide.png").write_bytes(png_with_declared_size(2**31, 1))
    expected_failed |= {"fifo.jpg": ("read", "not_a_regular_file"), "devzero.jpg": ("read", "not_a_regular_file"),
                        "devnull.png": ("read", "not_a_regular_file"), "self.jpg": ("read", "symlink_loop"),
                        "loop/": ("list", "symlink_loop"), "wide.png": ("decode", "too_large")}

    literal = root / "literal"
    literal.mkdir()
    small_jpeg(literal / "img[1].jpg")  # glob syntax in a real name: taken literally, not as a pattern
    expected_ok.add("img[1].jpg")
    nomatch = str(root / "nomatch" / "*.jpg")
    empty = root / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    odd_dir = root / os.fsdecode(b"dir\xfe")  # an INPUT that is not UTF-8 itself (Beam's coder carries it)
    odd_dir.mkdir()
    small_jpeg(odd_dir / "in-odd-dir.jpg")
    expected_ok.add("in-odd-dir.jpg")
    expected_failed |= {nomatch: ("list", "no_match"), str(empty): ("list", "no_images")}

    csv_path = root / "list.csv"  # a BOM before the header, CRLF line ends, one empty uri
    csv_path.write_bytes(b"\xef\xbb\xbfuri,image_id\r\n" + f"{cup},csv-cup\r\n,csv-empty\r\n{rocket},\r\n".encode())
    expected_ok |= {"csv-cup", str(rocket)}
    expected_failed[f"{csv_path}:3"] = ("list", "missing_uri")

    jsonl = root / "list.jsonl"
    lines = [json.dumps({"uri": str(cup), "image_id": "json-cup"}),
             "{bad",
             json.dumps({"uri": None, "image_id": "json-null"}),
             json.dumps({"uri": "x" * (MAX_MANIFEST_LINE + 10)}),
             "[1, 2]",
             f'{{"uri": "{cup}", "image_id": "\\udc80cup"}}',              # a JSON escape of a lone surrogate
             json.dumps({"uri": "/proc/self/mem", "image_id": "procmem"}),
             json.dumps({"uri": "/dev/zero", "image_id": "json-zero"}),
             json.dumps({"uri": str(cup), "image_id": "json-cup-again"}),  # the same file under another id
             json.dumps({"uri": str(special / "fifo.jpg"), "image_id": "json-fifo"}),
             json.dumps({"uri": 5}),
             "[" * 100_000]                                            # nested too deeply for the parser
    jsonl.write_text("\n".join(lines) + "\n")
    expected_ok |= {"json-cup", "%80cup", "json-cup-again"}
    expected_failed |= {f"{jsonl}:2": ("list", "bad_json"), f"{jsonl}:3": ("list", "missing_uri"),
                        f"{jsonl}:4": ("list", "line_too_long"), f"{jsonl}:5": ("list", "bad_row"),
                        "procmem": ("read", "read_error"), "json-zero": ("read", "not_a_regular_file"),
                        "json-fifo": ("read", "not_a_regular_file"), f"{jsonl}:11": ("list", "bad_row"),
                        f"{jsonl}:12": ("list", "bad_json")}

    parquet = root / "list.parquet"
    pq.write_table(pa.table({"uri": [str(cup), None, ""], "image_id": ["pq-cup", "pq-null", "pq-empty"]}), parquet)
    expected_ok.add("pq-cup")
    expected_failed |= {f"{parquet}:2": ("list", "missing_uri"), f"{parquet}:3": ("list", "missing_uri")}

    fifo_manifest = root / "stream.jsonl"
    os.mkfifo(fifo_manifest)
    no_uri = root / "no-uri.csv"
    no_uri.write_text("path,image_id\n/x.jpg,x\n")
    gone = root / "gone.csv"
    expected_failed |= {str(fifo_manifest): ("list", "not_a_regular_file"), str(no_uri): ("list", "no_uri_column"),
                        str(gone): ("list", "not_found")}

    inputs = [str(special), str(literal / "img[1].jpg"), nomatch, str(empty), str(odd_dir), str(csv_path),
              str(jsonl), str(parquet), str(fifo_manifest), str(no_uri), str(gone)]
    out = root / "out"
    report = run_embed_job(EmbedJob(inputs=inputs, output=str(out), **TINY))
    return {"out": out, "report": report, "ok": expected_ok, "failed": expected_failed, "root": root,
            "jsonl": jsonl, "special": special}


def test_every_hostile_input_ends_in_exactly_one_row(hostile_run):
    embedded = read_table(hostile_run["out"] / "embeddings")
    failed = read_table(hostile_run["out"] / "failures")
    assert sorted(r["image_id"] for r in embedded) == sorted(hostile_run["ok"])
    got = {r["image_id"]: (r["stage"], r["error"]) for r in failed}
    assert len(got) == len(failed)
    assert got == hostile_run["failed"]
    counts = hostile_run["report"]["counts"]
    assert counts["embedded"] + counts["failed"] == len(hostile_run["ok"]) + len(hostile_run["failed"])


def test_odd_names_keep_their_file(hostile_run):
    rows = {r["image_id"]: r for r in read_table(hostile_run["out"] / "embeddings")}
    special = hostile_run["special"]
    assert rows["a::b.jpg"]["uri"] == str(special / "a::b.jpg")  # a local name, not fsspec URL chaining
    assert rows["new%0Aline.jpg"]["uri"] == str(special / "new\nline.jpg")
    odd = rows["bad%FF.jpg"]["uri"]
    assert odd == f"file://{special}/bad%FF.jpg" and local_path(odd) == str(special / os.fsdecode(b"bad\xff.jpg"))
    same = {rows[i]["content_sha256"] for i in ("good.jpg", "bad%FF.jpg", "x#y.jpg", "file:name.jpg")}
    assert len(same) == 1  # the same bytes were read through every odd name


def test_bad_manifest_rows_name_their_line(hostile_run):
    failed = {r["image_id"]: r for r in read_table(hostile_run["out"] / "failures")}
    jsonl = hostile_run["jsonl"]
    assert failed[f"{jsonl}:2"]["message"].startswith(f"{jsonl} line 2: not JSON")
    assert f"longer than {MAX_MANIFEST_LINE} bytes" in failed[f"{jsonl}:4"]["message"]
    assert "not a regular file" in failed["json-zero"]["message"]
    assert "no 'uri' column (columns: ['path', 'image_id'])" in failed[str(hostile_run["root"] / "no-uri.csv")][
        "message"]


def test_printable_id_and_local_uri_round_trip():
    name = os.fsdecode(b"caf\xe9 \x1b[31mred\xe2\x80\xae.jpg")  # latin-1 byte, an ANSI escape, a bidi override
    assert printable_id(name) == "caf%E9 %1B[31mred%E2%80%AE.jpg"
    assert printable_id("plain 100%.jpg") == "plain 100%.jpg"
    uri = local_uri("/d/" + name)
    assert uri.isascii() and local_path(uri) == "/d/" + name
    assert local_uri("/d/ok.jpg") == "/d/ok.jpg"


# ---- listing cases that need their own tree ------------------------------------------------------------------------


def _deep_chain(root: Path, names: list[str], image_at: int) -> None:
    """Nested directories ``names[0]/names[1]/...`` made through directory fds (no long path is ever used)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level, name in enumerate([*names, None]):
            if level == image_at:
                with os.fdopen(os.open("pic.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
                    f.write(encode(photo("coffee.jpg", 32), "JPEG"))
            if name is None:
                break
            os.mkdir(name, dir_fd=fd)
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
    finally:
        os.close(fd)


def _remove_chain(root: Path) -> None:
    """Down to the deepest level and back up through "..", one level at a time: no path ever gets long (rmtree
    would recurse once per level)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    names = []
    while subdirs := [n for n in os.listdir(fd) if n != "pic.jpg"]:
        below = os.open(subdirs[0], os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
        names.append(subdirs[0])
    for name in reversed(names):
        for child in os.listdir(fd):
            os.unlink(child, dir_fd=fd)
        parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        os.rmdir(name, dir_fd=parent)
        fd = parent
    os.close(fd)


def test_a_directory_chain_deeper_than_the_recursion_limit(tmp_path):
    """1,200 levels (Python stops recursing at 1,000) are listed down to the image at the bottom. (10,000 levels
    list in about a second too; removing them from this disk takes a minute, so the test stays at 1,200.)"""
    root = tmp_path / "deep"
    root.mkdir()
    _deep_chain(root, ["d"] * 1200, image_at=1200)
    try:
        refs, failed = split(expand_input(str(root), 0))
    finally:
        _remove_chain(root)
    assert [r.image_id for r in refs] == ["d/" * 1200 + "pic.jpg"] and failed == []


def test_a_directory_chain_longer_than_the_path_limit(tmp_path):
    """30 levels of 200-character names pass PATH_MAX (4096): listed as deep as the OS allows, then one row."""
    root = tmp_path / "long"
    root.mkdir()
    _deep_chain(root, [f"{i:03d}" + "x" * 197 for i in range(30)], image_at=2)
    try:
        refs, failed = split(expand_input(str(root), 0))
    finally:
        _remove_chain(root)
    assert len(refs) == 1 and refs[0].image_id.count("/") == 2
    assert [(f["stage"], f["error"]) for f in failed] == [("list", "name_too_long")]
    assert failed[0]["image_id"].startswith("000" + "x" * 197 + "/001")


def test_a_symlink_diamond_is_listed_once_per_directory(tmp_path):
    """20 levels, each with two links to the next: 2**20 paths to the last level without the seen-set."""
    levels = [tmp_path / f"level{i}" for i in range(21)]
    for i, level in enumerate(levels):
        level.mkdir()
        small_jpeg(level / f"pic{i}.jpg")
    for here, below in itertools.pairwise(levels):
        (here / "a").symlink_to(below)
        (here / "b").symlink_to(below)
    started = time.monotonic()
    refs, failed = split(expand_input(str(levels[0]), 0))
    assert time.monotonic() - started < 10
    assert len(refs) == 21 and len(failed) == 20 and {f["error"] for f in failed} == {"symlink_loop"}
    assert refs[1].image_id == "a/pic1.jpg" and failed[0]["image_id"] == "b/"


def test_a_literal_glob_name_is_tried_first_and_a_pattern_still_globs(tmp_path):
    small_jpeg(tmp_path / "img[1].jpg")
    small_jpeg(tmp_path / "img1.jpg")
    assert [r.image_id for r in expand_input(str(tmp_path / "img[1].jpg"), 0)] == ["img[1].jpg"]
    assert [r.image_id for r in expand_input(str(tmp_path / "img[0-9].jpg"), 0)] == ["img1.jpg"]


def test_a_manifest_bomb_streams_in_bounded_memory(tmp_path):
    """A Parquet manifest of 100,000 rows (one row group) that compresses to kilobytes is read in batches of
    ``PARQUET_BATCH_ROWS``: its rows as Python objects would take some 40 MB."""
    rows = 100_000
    uri = str(tmp_path / "same.jpg")
    table = pa.table({"uri": pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([uri])),
                      "image_id": pa.array([f"id{i}" for i in range(rows)])})
    path = tmp_path / "bomb.parquet"
    pq.write_table(table, path, row_group_size=rows)
    del table
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()
    try:
        count = sum(1 for item in expand_input(str(path), 0) if isinstance(item, ImageRef))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows
    assert peak < 15e6, f"peak {peak / 1e6:.0f} MB: the manifest was materialised"


@pytest.mark.slow
def test_an_unreadable_subdirectory_is_a_failure_row():
    """Root reads through chmod 000, so the run is made as another user (nobody) where this test runs as root."""
    cmd = [sys.executable, "-m", "jobs.cli", "index"]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, which ignores permissions, and setpriv is not there to drop them")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    base = Path(tempfile.mkdtemp(prefix="ldot-perm-"))  # pytest's own tmp dirs are 0700: another user cannot enter
    try:
        base.chmod(0o755)
        photos = base / "photos"
        (photos / "locked").mkdir(parents=True)
        small_jpeg(photos / "good.jpg")
        small_jpeg(photos / "locked" / "hidden.jpg")
        out = base / "out"
        out.mkdir(mode=0o777)
        out.chmod(0o777)
        (photos / "locked").chmod(0)
        env = {**os.environ, "HOME": str(out), "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run([*cmd, str(photos), "--output", str(out / "run"), *TINY_FLAGS], env=env, cwd=str(out),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        failed = read_table(out / "run" / "failures")
        assert [(r["image_id"], r["stage"], r["error"]) for r in failed] == [
            ("locked/", "list", "permission_denied")]
        assert [r["image_id"] for r in read_table(out / "run" / "embeddings")] == ["good.jpg"]
    finally:
        if (base / "photos" / "locked").exists():
            (base / "photos" / "locked").chmod(0o755)
        shutil.rmtree(base)


# ---- reads are bounded ---------------------------------------------------------------------------------------------


class TrickleFileSystem(MemoryFileSystem):
    """A remote store that reports one byte for every file, delivers 4 KB every 50 ms under ``slow/`` and refuses
    to list any ``locked`` folder."""

    protocol = "trickle"
    store: ClassVar[dict] = {}
    pseudo_dirs: ClassVar[list] = [""]
    find = fsspec.AbstractFileSystem.find  # listed by walking, as sftp, hdfs or smb are

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("trickle://"))

    def info(self, path, **kwargs):
        return {**super().info(path, **kwargs), "size": 1}

    def ls(self, path, detail=True, **kwargs):
        if self._strip_protocol(path).endswith("/locked"):
            raise PermissionError(13, "Permission denied", path)
        return super().ls(path, detail=detail, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        if "slow/" not in path:
            return f
        inner = f.read

        def read(n=-1):
            time.sleep(0.05)
            return inner(min(4096, n if n >= 0 else 4096))

        f.read = read
        return f


@pytest.fixture
def trickle():
    fsspec.register_implementation("trickle", TrickleFileSystem, clobber=True)
    fs = fsspec.filesystem("trickle")
    yield fs
    TrickleFileSystem.store.clear()


def test_a_remote_directory_that_cannot_be_listed_is_a_failure_row(trickle):
    for name in ("a.jpg", "locked/b.jpg", "open/c.jpg", "open/locked/d.jpg"):
        trickle.pipe(f"/photos/{name}", b"x")
    refs, failed = split(expand_input("trickle://photos", 0))
    assert [(r.image_id, r.uri) for r in refs] == [("a.jpg", "trickle:///photos/a.jpg"),
                                                   ("open/c.jpg", "trickle:///photos/open/c.jpg")]
    assert [(f["image_id"], f["stage"], f["error"]) for f in failed] == [
        ("locked/", "list", "permission_denied"), ("open/locked/", "list", "permission_denied")]


def test_reads_stop_at_the_limit_whatever_size_claims(trickle, tmp_path):
    trickle.pipe("/big.jpg", b"\xff" * (3 << 20))
    with pytest.raises(ReadError) as err:
        read_bytes("trickle://big.jpg", max_bytes=1 << 20)
    assert err.value.kind == "too_large"
    with pytest.raises(ReadError) as err:  # a regular file whose stat says 0 bytes
        read_bytes("/proc/self/maps", max_bytes=16)
    assert err.value.kind == "too_large"
    exact = tmp_path / "exact.bin"
    exact.write_bytes(b"x" * 100)
    assert read_bytes(str(exact), max_bytes=100) == b"x" * 100


def test_a_slow_remote_read_times_out(trickle):
    trickle.pipe("/slow/photo.jpg", b"\xff" * (1 << 20))
    started = time.monotonic()
    with pytest.raises(ReadError) as err:
        read_bytes("trickle://slow/photo.jpg", timeout_s=0.3)
    assert err.value.kind == "timeout" and time.monotonic() - started < 2


def test_special_files_are_never_opened(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero", "/dev/null"):
        with pytest.raises(ReadError) as err:
            read_bytes(str(path))
        assert err.value.kind == "not_a_regular_file"


# ---- command lines -------------------------------------------------------------------------------------------------


def test_split_beam_args_honours_double_dash_and_refuses_unknown_flags():
    assert split_beam_args(["a.jpg", "--runner", "X", "--", "-b.jpg", "--c"]) == (["a.jpg", "-b.jpg", "--c"],
                                                                                  ["--runner", "X"])
    assert split_beam_args(["--save_main_session", "a.jpg"]) == (["a.jpg"], ["--save_main_session"])
    with pytest.raises(Exception, match=r"unknown option --runer \(did you mean --runner\?\)") as err:
        split_beam_args(["a.jpg", "--runer", "DataflowRunner"])
    assert err.value.exit_code == 2


def test_an_input_that_starts_with_a_dash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_jpeg(tmp_path / "-dash.jpg")
    base = ["index", "--output", str(tmp_path / "o"), *TINY_FLAGS]
    refused = CliRunner().invoke(cli, [*base, "-dash.jpg"])
    assert refused.exit_code == 2 and "unknown option -dash.jpg" in refused.output and "'--'" in refused.output
    assert not (tmp_path / "o").exists()
    result = CliRunner().invoke(cli, [*base, "--", "-dash.jpg"])
    assert result.exit_code == 0, result.output
    assert [r["image_id"] for r in read_table(tmp_path / "o" / "embeddings")] == ["-dash.jpg"]
    assert read_table(tmp_path / "o" / "failures") == []


def test_beam_flags_command_keeps_double_dash():
    import click

    @click.command(cls=BeamFlagsCommand)
    @click.option("--output")
    @click.pass_context
    def cmd(ctx, output):
        click.echo(json.dumps([output, ctx.args]))

    result = CliRunner().invoke(cmd, ["a", "--output", "o", "--runner", "X", "--", "-b", "--output"])
    assert json.loads(result.output) == ["o", ["a", "--runner", "X", "--", "-b", "--output"]]
    assert json.loads(CliRunner().invoke(cmd, ["a", "--output", "o"]).output) == ["o", ["a"]]


def test_an_input_click_would_split_into_a_short_option_is_refused(tmp_path):
    """``-output.jpg`` is ``-o utput.jpg`` to click, and a later ``--output`` would replace it without a word."""
    result = CliRunner().invoke(cli, ["index", "a.jpg", "-output.jpg", "--output", str(tmp_path / "o"), *TINY_FLAGS])
    assert result.exit_code == 2 and "'-output.jpg' would be read as -o 'utput.jpg'" in result.output
    assert not (tmp_path / "o").exists()


# ---- search --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seven_vectors(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-index")
    vocab = write_vocab(root / "vocab.txt", ["a", "dog"])
    model = LightningDOT.random(TINY_CONFIG, seed=0)
    vectors = np.random.default_rng(0).normal(size=(7, model.config.project_dim)).astype(np.float32)
    write_embeddings(root / "emb.parquet", vectors, ids=[f"img{i}" for i in range(7)], model=model.fingerprint)
    index = str(root / "index")
    built = CliRunner().invoke(cli, ["build-index", str(root / "emb.parquet"), "--output", index, "--queries", "2",
                                     "--direct_num_workers", "1"])
    assert built.exit_code == 0, built.output
    return ["search", index, "--random-weights", "--encoder-config", str(TINY_CONFIG), "--vocab", str(vocab)]


def test_search_clamps_k_to_the_index(seven_vectors):
    result = CliRunner().invoke(cli, [*seven_vectors, "a dog", "-k", "100000000", "--json"])
    assert result.exit_code == 0, result.output
    assert "-k 100000000 is more than the 7 vectors" in result.stderr
    assert len(json.loads(result.stdout)["queries"][0]["results"]) == 7


def test_search_refuses_a_query_that_is_not_utf8(seven_vectors):
    result = CliRunner().invoke(cli, [*seven_vectors, "a " + os.fsdecode(b"\xff\xfe") + "dog"])
    assert result.exit_code == 2 and "'a %FF%FEdog' is not valid UTF-8" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# ---- weights and configs -------------------------------------------------------------------------------------------


def test_non_finite_weights_are_refused_with_exit_2(tmp_path, tiny_encoder):
    model = tiny_encoder
    with torch.no_grad():
        model.model.img_model.bert.img_embeddings.img_linear.weight[0, 0] = float("nan")
    nan_pt = tmp_path / "nan.pt"
    model.save(nan_pt)
    marker = tmp_path / "PWNED"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(type("Evil", (), {
        "__reduce__": lambda self: (os.system, (f"touch {marker}",))})()))
    (tmp_path / "r.parquet").write_bytes(b"")  # exists, so the launcher's input check passes and the model loads
    for checkpoint, says in ((nan_pt, "non-finite (NaN or Inf) weights in img_model.bert.img_embeddings.img_linear"),
                             (tmp_path / "evil.pt", "not a readable weights-only torch checkpoint"),
                             (tmp_path / "missing.pt", "missing.pt")):
        result = CliRunner().invoke(cli, ["index", "--regions", str(tmp_path / "r.parquet"), "--output",
                                          str(tmp_path / "o"), "--overwrite", "--checkpoint", str(checkpoint),
                                          "--encoder-config", str(TINY_CONFIG)])
        assert result.exit_code == 2 and says in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not marker.exists()


def test_a_non_finite_embedding_is_named(tiny_encoder):
    """fp16 overflow or a weight gone bad makes NaN embeddings: a real model with one NaN weight makes them."""
    model = tiny_encoder
    regions = make_regions(0, 12)
    good = model.encode_regions([regions.features], [regions.norm_bb])[0]
    assert non_finite_message(good) is None
    with torch.no_grad():
        model.model.img_model.bert.img_embeddings.img_linear.weight[0, 0] = float("nan")
    bad = model.encode_regions([regions.features], [regions.norm_bb])[0]
    assert non_finite_message(bad) == f"the embedding holds {bad.size} NaN and 0 infinite values of {bad.size}"
    assert non_finite_message(np.array([1.0, np.inf, -np.inf, np.nan])) == (
        "the embedding holds 1 NaN and 2 infinite values of 4")
    assert NON_FINITE_EMBEDDING == "non_finite_embedding"


def test_a_detector_yaml_cannot_run_code(tmp_path):
    from encoders.regions.modeling import load_config

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'MODEL:\n  WEIGHTS: !!python/object/apply:os.system ["touch {marker}"]\n')
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: {evil.name}\nMODEL:\n  DEVICE: cpu\n")
    for path in (evil, child):
        with pytest.raises(Exception, match=r"python/object/apply:os\.system"):
            load_config(str(path))
    images = tmp_path / "images"
    images.mkdir()
    small_jpeg(images / "a.jpg")
    result = CliRunner().invoke(cli, ["index", str(images), "--output", str(tmp_path / "o"), "--random-weights",
                                      "--encoder-config", TINY_ENCODER, "--detector-config", str(child)])
    assert result.exit_code != 0 and not (tmp_path / "o" / "embeddings").exists()
    assert not marker.exists()


def test_decoding_formats_are_an_allow_list():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"  # what Pillow would do with it (Ghostscript to load)
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(eps), formats=PIL_FORMATS)


def test_every_listed_kind_of_image_opens_under_the_allow_list(odd_corpus):
    mpo = io.BytesIO()
    photo().save(mpo, "MPO", save_all=True, append_images=[photo()])
    assert Image.open(mpo, formats=PIL_FORMATS).format == "MPO"  # multi-picture JPEGs open through JPEG
    for image_id, kind in odd_corpus.expected.items():
        if kind is None:
            assert Image.open(odd_corpus.root / image_id, formats=PIL_FORMATS).format in PIL_FORMATS


# ---- region-feature files ------------------------------------------------------------------------------------------


def _items(path) -> list:
    return [(i.image_id, i.error) if isinstance(i, BadRecord) else (i[0], "ok") for i in iter_region_records(path)]


def test_a_bad_tsv_line_and_a_repeated_id_cost_only_themselves(tmp_path):
    path = tmp_path / "feats.tsv"
    write_butd_tsv(path, [("A", make_regions(1, 10)), ("B", make_regions(2, 12))])
    good = path.read_text().splitlines()
    broken = "C\t640\t480\t10\tnot-base64!\tAAAA"
    zero = "D\t0\t0\t" + "\t".join(good[1].split("\t")[3:])  # image size 0x0: boxes cannot be normalised
    path.write_text("\n".join([good[0], broken, good[0], zero, good[1]]) + "\n")
    assert _items(path) == [("A", "ok"), ("C", "bad_record"), ("A", "duplicate_id"), ("D", "bad_record"),
                            ("B", "ok")]
    bad = [i for i in iter_region_records(path) if isinstance(i, BadRecord)]
    assert bad[0].message.startswith(f"{path}:2: ") and "record 3 repeats image_id 'A' of record 1" in bad[1].message
    with pytest.raises(ValueError, match=r"feats\.tsv:2"):
        list(read_regions(path))
    path.write_text("\n".join([good[0], good[0], good[1]]) + "\n")
    assert [i for i, _ in read_regions(path)] == ["A", "A", "B"]  # the strict reader gives records as stored


def test_a_gzip_bomb_tsv_line_is_one_bad_record(tmp_path):
    """One 80 MB line of zeros compresses to 80 KB: it is skipped in bounded reads, the next line is read."""
    path = tmp_path / "bomb.tsv.gz"
    write_butd_tsv(tmp_path / "one.tsv", [("after", make_regions(3, 10))])
    with gzip.open(path, "wb") as f:
        for _ in range(80):
            f.write(b"0" * (1 << 20))
        f.write(b"\n" + (tmp_path / "one.tsv").read_bytes())
    assert path.stat().st_size < 500_000
    items = list(iter_region_records(path))
    assert isinstance(items[0], BadRecord) and items[0].image_id == f"{path}:1" and "longer than" in items[0].message
    assert items[1][0] == "after"


def test_a_corrupt_lmdb_record_costs_only_itself(tmp_path):
    db = tmp_path / "img_db"
    db.mkdir()
    record = packb(uniter_record(make_regions(4, 12)))
    deep = b"\x91" * 100_000 + b"\xc0"  # a msgpack array nested 100,000 deep: a recursion bomb
    write_lmdb(db / "all", {"a.npz": record, "b.npz": record[: len(record) // 2], "c.npz": deep,
                             "d.npz": b"PK\x03\x04 not a zip", "e.npz": record})
    assert _items(db) == [("a.npz", "ok"), ("b.npz", "bad_record"), ("c.npz", "bad_record"), ("d.npz", "bad_record"),
                          ("e.npz", "ok")]


def test_a_bad_regions_table_row_and_a_repeated_id(tmp_path):
    with RegionsWriter(tmp_path / "t", rows_per_file=10) as w:
        w.write("a", None, make_regions(5, 10))
    bad = regions_to_row("b", None, make_regions(6, 10))
    bad["num_boxes"] = 3  # 10 boxes of features do not split into 3
    rows = [bad, regions_to_row("a", None, make_regions(7, 10)), regions_to_row("c", None, make_regions(8, 11))]
    pq.write_table(rows_to_table(rows), tmp_path / "t" / "regions-00001.parquet")
    assert _items(tmp_path / "t") == [("a", "ok"), ("b", "bad_record"), ("a", "duplicate_id"), ("c", "ok")]


def test_a_fifo_as_the_regions_path_is_refused_not_read(tmp_path):
    fifo = tmp_path / "features.tsv"
    os.mkfifo(fifo)
    with pytest.raises(ReadError, match="named pipe"):
        detect_format(fifo)


def test_base64_helper_is_not_fooled_by_a_huge_box_count(tmp_path):
    path = tmp_path / "huge.tsv"
    arr = base64.b64encode(np.zeros(8, np.float32).tobytes()).decode()
    path.write_text(f"X\t10\t10\t{10**15}\t{arr}\t{arr}\n")
    (item,) = iter_region_records(path)
    assert isinstance(item, BadRecord) and item.image_id == "X" and "expected" in item.message
