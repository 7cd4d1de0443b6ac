"""The Beam indexing pipeline end to end: nothing lost, embeddings equal to a bare in-process run,
pre-extracted regions, manifests and duplicates, guards, and portability (worker processes, pickling, sdist)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from apache_beam.internal import pickler
from click.testing import CliRunner

from jobs.cli import main as cli
from pipeline.embed_job import EmbedJob, JobError, prepare_models, run_embed_job
from tests.helpers_pipeline import DEMO_IMAGES, REPO, TINY_DETECTOR, TINY_ENCODER, read_table
from transforms.progress import progress_line

TINY = {"random_weights": True, "encoder_config": TINY_ENCODER, "detector_config": TINY_DETECTOR, "device": "cpu"}


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory, odd_corpus):
    root = tmp_path_factory.mktemp("corpus")
    other = root / "other"
    other.mkdir()
    (other / "coffee.jpg").write_bytes((odd_corpus.root / "coffee.jpg").read_bytes())  # same id, 2nd input
    out = root / "out"
    report = run_embed_job(EmbedJob(inputs=[str(odd_corpus.root), str(other)], output=str(out), keep_regions=True,
                                    **TINY))
    return {"expected": odd_corpus.expected, "out": out, "report": report, "root": root}


def test_every_input_lands_exactly_once(odd_run):
    embedded = read_table(odd_run["out"] / "embeddings")
    failed = read_table(odd_run["out"] / "failures")
    emb_ids = [r["image_id"] for r in embedded]
    assert len(emb_ids) == len(set(emb_ids))
    fail_keys = [(r["image_id"], r["uri"]) for r in failed]
    assert len(fail_keys) == len(set(fail_keys))
    expected = odd_run["expected"]
    # 16 listed under photos/ + the duplicate coffee.jpg from other/
    assert len(embedded) + len(failed) == len(expected) + 1
    kinds = {r["image_id"]: r["error"] for r in failed if "other" not in r["uri"]}
    for image_id, kind in expected.items():
        if kind is None:
            assert image_id in emb_ids, f"{image_id} should be embedded, failed with {kinds.get(image_id)}"
        else:
            assert kinds.get(image_id) == kind, f"{image_id}: expected failure {kind}, got {kinds.get(image_id)}"
    dup = [r for r in failed if r["error"] == "duplicate_id"]
    assert len(dup) == 1 and "other" in dup[0]["uri"] and dup[0]["stage"] == "list"
    assert {r["stage"] for r in failed} == {"list", "read", "decode"}
    assert all(r["message"] for r in failed)


def test_run_report_and_schema(odd_run):
    report = odd_run["report"]
    rows = read_table(odd_run["out"] / "embeddings")
    assert report["counts"]["embedded"] == len(rows)
    assert report["counts"]["failed_by_stage"]["decode"] == 3
    assert json.loads((odd_run["out"] / "run.json").read_text())["model"] == report["model"]
    row = next(r for r in rows if r["image_id"] == "rotated.jpg")
    assert len(row["embedding"]) == 768 and row["model"].startswith("ldot-random-")
    assert 10 <= row["num_boxes"] <= 100
    assert (row["width"], row["height"]) == (64, 96)  # EXIF rotation applied before extraction
    assert len(row["content_sha256"]) == 64
    regions = read_table(odd_run["out"] / "regions")
    assert sorted(r["image_id"] for r in regions) == sorted(r["image_id"] for r in rows)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    job = EmbedJob(inputs=[str(DEMO_IMAGES)], output=str(out), keep_regions=True, **TINY)
    return job, run_embed_job(job), out


def test_pipeline_equals_bare_in_process_run(demo_run):
    """Beam changes nothing numerically: same decode -> extract -> encode, one image at a time."""
    job, _, out = demo_run
    models = prepare_models(job)
    extractor, encoder = models.detector.load(), models.encoder.load()
    from transforms.decoding import decode_image

    rows = {r["image_id"]: r for r in read_table(out / "embeddings")}
    assert len(rows) == 7
    for image_id, row in rows.items():
        regions = extractor.extract([decode_image((DEMO_IMAGES / image_id).read_bytes())])[0]
        want = encoder.encode_regions([regions.features], [regions.norm_bb])[0]
        np.testing.assert_allclose(np.asarray(row["embedding"]), want, atol=1e-5, rtol=1e-4)
        assert row["num_boxes"] == regions.num_boxes


def test_precomputed_regions_skip_detection(demo_run, tmp_path):
    _, _, out = demo_run
    second = run_embed_job(EmbedJob(inputs=[], regions=str(out / "regions"), output=str(tmp_path / "again"),
                                    random_weights=True, encoder_config=TINY_ENCODER, device="cpu"))
    assert second["detector"] == "precomputed" and second["counts"]["embedded"] == 7
    a = {r["image_id"]: np.asarray(r["embedding"]) for r in read_table(out / "embeddings")}
    b = {r["image_id"]: np.asarray(r["embedding"]) for r in read_table(tmp_path / "again" / "embeddings")}
    assert a.keys() == b.keys()
    for key in a:  # regions were stored as fp16: close, not identical
        np.testing.assert_allclose(a[key], b[key], atol=5e-3)


def test_manifest_inputs_with_missing_files(tmp_path, capfd):
    manifest = tmp_path / "list.jsonl"
    lines = [{"uri": str(DEMO_IMAGES / "coffee.jpg"), "image_id": "cup"},
             {"uri": str(tmp_path / "gone.jpg"), "image_id": "gone"},
             {"uri": str(DEMO_IMAGES / "rocket.jpg")}]
    manifest.write_text("\n".join(json.dumps(x) for x in lines))
    report = run_embed_job(EmbedJob(inputs=[str(manifest)], output=str(tmp_path / "out"), **TINY))
    rows = read_table(tmp_path / "out" / "embeddings")
    assert sorted(r["image_id"] for r in rows) == sorted(["cup", str(DEMO_IMAGES / "rocket.jpg")])
    assert report["counts"]["failed_by_error"] == {"not_found": 1}
    # the progress display knows the listed total and reports the last input
    assert "3/3 100%  embedded 2, failed 1" in capfd.readouterr().err


def test_progress_line():
    assert progress_line(30, 10, 10.0, 200, width=10) == ("[##........] 40/200  20%  embedded 30, failed 10  "
                                                          "4.0 images/s  ETA 0m40s")
    assert progress_line(5, 0, 1.0, None) == "embedded 5, failed 0  5.0 images/s"


def test_failure_rate_guard_and_missing_weights(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (DEMO_IMAGES / "coffee.jpg").read_bytes()
    (bad / "b.jpg").write_bytes((DEMO_IMAGES / "coffee.jpg").read_bytes())
    with pytest.raises(JobError, match="exceeds --max-failure-rate"):
        run_embed_job(EmbedJob(inputs=[str(bad)], output=str(tmp_path / "o"), max_failure_rate=0.2, **TINY))
    assert (tmp_path / "o" / "run.json").exists()  # the report is written even when the guard trips
    result = CliRunner().invoke(cli, ["index", str(bad), "--output", str(tmp_path / "p")])
    assert result.exit_code == 2 and "--checkpoint" in result.output
    with pytest.raises(JobError, match="--overwrite"):
        run_embed_job(EmbedJob(inputs=[str(bad)], output=str(tmp_path / "o"), **TINY))


def test_cli_passes_unknown_flags_to_beam(tmp_path):
    result = CliRunner().invoke(cli, [
        "index", str(DEMO_IMAGES / "coffee.jpg"), "--output", str(tmp_path / "o"), "--random-weights",
        "--encoder-config", TINY_ENCODER, "--detector-config", TINY_DETECTOR, "--device", "cpu",
        "--job_name", "ldot-test", "--direct_num_workers", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{"):])["embedded"] == 1
    flags = json.loads((tmp_path / "o" / "run.json").read_text())["flags"]["beam_args"]
    assert flags == ["--job_name", "ldot-test", "--direct_num_workers", "1"]


def test_alpha_option_reaches_the_decoder(tmp_path):
    """--alpha composite: the pipeline's pixels are the composited ones, and the detector fingerprint says so
    (an incremental run must not carry rows decoded the other way)."""
    from PIL import Image

    from transforms.decoding import decode_image

    rgba = np.asarray(Image.open(DEMO_IMAGES / "coffee.jpg").convert("RGBA").resize((96, 64))).copy()
    rgba[:, :40, 3] = 0
    rgba[:, :40, :3] = [0, 255, 0]  # hidden under full transparency
    Image.fromarray(rgba, "RGBA").save(tmp_path / "hidden.png")
    with pytest.raises(JobError, match="--alpha must be one of drop, composite"):
        EmbedJob(inputs=[str(tmp_path)], output=str(tmp_path / "x"), alpha="white", **TINY).validate()
    result = CliRunner().invoke(cli, [
        "index", str(tmp_path / "hidden.png"), "--output", str(tmp_path / "o"), "--random-weights", "--alpha",
        "composite", "--encoder-config", TINY_ENCODER, "--detector-config", TINY_DETECTOR, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "run.json").read_text())
    assert report["flags"]["alpha"] == "composite" and report["detector"].endswith("+alpha-composite")
    job = EmbedJob(inputs=[str(tmp_path / "hidden.png")], output=str(tmp_path / "y"), **TINY)
    models = prepare_models(job)
    extractor, encoder = models.detector.load(), models.encoder.load()
    data = (tmp_path / "hidden.png").read_bytes()
    (row,) = read_table(tmp_path / "o" / "embeddings")
    for alpha, same in (("composite", True), ("drop", False)):
        regions = extractor.extract([decode_image(data, alpha=alpha)])[0]
        want = encoder.encode_regions([regions.features], [regions.norm_bb])[0]
        assert np.allclose(np.asarray(row["embedding"]), want, atol=1e-5, rtol=1e-4) is same, alpha


def test_every_dofn_pickles_with_beams_pickler(demo_run):
    job, _, _ = demo_run
    from transforms.decoding import DecodeImages
    from transforms.duplicates import KeepFirstPerId
    from transforms.embedding import EmbeddingRows, EmbedRegions
    from transforms.embedding_handler import EmbeddingModelHandler
    from transforms.listing import ExpandInputs
    from transforms.progress import EMBEDDED, CountProgress
    from transforms.reading import ReadImageBytes
    from transforms.region_handler import RegionModelHandler
    from transforms.regions import ExtractRegions, RegionRecords

    models = prepare_models(job)
    for dofn in (ExpandInputs(), KeepFirstPerId(), ReadImageBytes(), DecodeImages(), ExtractRegions(models.detector),
                 EmbedRegions(models.encoder, "m", "d"), CountProgress("run", EMBEDDED),
                 RegionModelHandler(models.detector), EmbeddingModelHandler(models.encoder), RegionRecords(),
                 EmbeddingRows("m", "d")):
        clone = pickler.loads(pickler.dumps(dofn))
        assert type(clone) is type(dofn)


@pytest.mark.slow
def test_two_worker_processes(tmp_path, demo_run, capfd):
    """multi_processing: every DoFn and model spec crosses a process boundary, as on Dataflow workers. Each worker's
    progress lines are its share, labelled partial; only the launcher's display speaks for the whole run."""
    _, _, out = demo_run
    capfd.readouterr()
    report = run_embed_job(EmbedJob(inputs=[str(DEMO_IMAGES)], output=str(tmp_path / "mp"), **TINY), workers=2)
    assert report["counts"]["embedded"] == 7 and report["workers"] == 2
    lines = [line for line in capfd.readouterr().err.splitlines() if "[ldot]" in line]
    workers = {int(m.group(1)) for line in lines if (m := re.search(r"\[ldot\] worker (\d+), partial: ", line))}
    assert workers and os.getpid() not in workers, lines
    assert all("%" not in line for line in lines if "partial: " in line), lines
    assert [line for line in lines if "100%" in line] == [lines[-1]], lines  # the launcher's final line, alone
    assert lines[-1].endswith("(final, from the runner's counters)"), lines
    a = {r["image_id"]: np.asarray(r["embedding"]) for r in read_table(out / "embeddings")}
    b = {r["image_id"]: np.asarray(r["embedding"]) for r in read_table(tmp_path / "mp" / "embeddings")}
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)


@pytest.mark.slow
def test_models_shared_across_worker_processes(tmp_path, demo_run, monkeypatch):
    """--share-models: one copy of each model serves both worker processes (Beam's multi-process sharing, the
    GPU default); the embeddings are those of a per-process run."""
    _, _, out = demo_run
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the workers' rendezvous files (address, lock) stay in here
    report = run_embed_job(EmbedJob(inputs=[str(DEMO_IMAGES)], output=str(tmp_path / "shared"), share_models=True,
                                    **TINY), workers=2)
    assert report["counts"]["embedded"] == 7
    a = {r["image_id"]: np.asarray(r["embedding"]) for r in read_table(out / "embeddings")}
    b = {r["image_id"]: np.asarray(r["embedding"]) for r in read_table(tmp_path / "shared" / "embeddings")}
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)


@pytest.mark.slow
def test_regions_command_gives_the_regions_of_index_keep_regions(tmp_path, odd_corpus):
    """``ldot regions`` is the same pipeline as ``ldot index --keep-regions``: the same regions, bit for bit (a
    16-bit PNG among them), and the same failures. One image per detector pass in both runs: batch-mates move
    features by float rounding (within tolerance, see test_regions_model), and Beam sizes batches by timing."""
    corpus = tmp_path / "corpus"
    odd = odd_corpus.expected
    corpus.mkdir()
    for name in ("gray16.png", "rgba.png", "cmyk.jpg", "rotated.jpg", "truncated.jpg", "astronaut.jpg"):
        (corpus / name).write_bytes((odd_corpus.root / name).read_bytes())
    assert odd["gray16.png"] is None and odd["truncated.jpg"] == "truncated"
    models = ["--detector-config", TINY_DETECTOR, "--random-weights", "--device", "cpu"]
    index = CliRunner().invoke(cli, ["index", str(corpus), "--output", str(tmp_path / "index"), "--keep-regions",
                                     "--encoder-config", TINY_ENCODER, "--detector-batch-size", "1", *models])
    assert index.exit_code == 0, index.output
    regions = CliRunner().invoke(cli, ["regions", str(corpus), "--output", str(tmp_path / "regions"),
                                       "--batch-size", "1", *models])
    assert regions.exit_code == 0, regions.output
    want = {r["image_id"]: r for r in read_table(tmp_path / "index" / "regions")}
    got = {r["image_id"]: r for r in read_table(tmp_path / "regions" / "regions")}
    assert sorted(got) == ["astronaut.jpg", "cmyk.jpg", "gray16.png", "rgba.png", "rotated.jpg"]
    assert got.keys() == want.keys()
    for image_id, row in got.items():
        for column in ("uri", "width", "height", "num_boxes", "features", "norm_bb", "boxes", "conf", "soft_labels"):
            assert row[column] == want[image_id][column], f"{image_id}: {column} differs"

    def failures(directory):
        return sorted((r["image_id"], r["uri"], r["stage"], r["error"]) for r in read_table(directory / "failures"))

    assert failures(tmp_path / "regions") == failures(tmp_path / "index") == [
        ("truncated.jpg", str(corpus / "truncated.jpg"), "decode", "truncated")]


def test_sdist_ships_every_package_and_config(tmp_path):
    """What ``--setup_file ./setup.py`` gives Dataflow workers: every package, config and demo image."""
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)], cwd=REPO, check=True,
                   capture_output=True)
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = [p.relative_to(REPO).as_posix() for pkg in ("pipeline", "transforms", "encoders", "jobs", "index",
                                                          "evaluation", "core") for p in (REPO / pkg).rglob("*.py")]
    wanted += [p.relative_to(REPO).as_posix() for folder in ("encoders/configs", "encoders/regions/configs",
                                                                              "jobs/demo_data")
               for p in (REPO / folder).rglob("*") if p.is_file()]
    missing = [w for w in wanted if w not in names]
    assert not missing, f"not in the sdist: {missing}"


def test_incremental_run_carries_unchanged_images(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("astronaut.jpg", "coffee.jpg", "rocket.jpg"):
        (corpus / name).write_bytes((DEMO_IMAGES / name).read_bytes())
    first = run_embed_job(EmbedJob(inputs=[str(corpus)], output=str(tmp_path / "v1"), **TINY))
    assert first["counters"]["encoded"] == 3
    (corpus / "rocket.jpg").unlink()                                                        # dropped
    (corpus / "coffee.jpg").write_bytes((DEMO_IMAGES / "chelsea.jpg").read_bytes())         # changed
    (corpus / "retina.jpg").write_bytes((DEMO_IMAGES / "retina.jpg").read_bytes())          # new
    second = run_embed_job(EmbedJob(inputs=[str(corpus)], output=str(tmp_path / "v2"),
                                    previous=str(tmp_path / "v1" / "embeddings"), **TINY))
    c = second["counters"]
    assert (c["carried"], c["changed"], c["new"], c["dropped"]) == (1, 1, 1, 1)
    assert c["decoded"] == 2 and c["encoded"] == 2  # the carried image was not decoded nor encoded again
    old = {r["image_id"]: r for r in read_table(tmp_path / "v1" / "embeddings")}
    new = {r["image_id"]: r for r in read_table(tmp_path / "v2" / "embeddings")}
    assert sorted(new) == ["astronaut.jpg", "coffee.jpg", "retina.jpg"]
    assert new["astronaut.jpg"]["embedding"] == old["astronaut.jpg"]["embedding"]
    assert new["coffee.jpg"]["content_sha256"] != old["coffee.jpg"]["content_sha256"]
