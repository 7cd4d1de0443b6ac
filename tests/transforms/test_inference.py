"""The model stages on Beam's RunInference: handlers with the real tiny models (batching, the one-at-a-time
fallback, bad regions), the detector rebuilt from config text, GPU turns, and a small pipeline's metrics."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
import yaml
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to

pytest.importorskip("detectron2")

from encoders.regions import RegionExtractor, Regions
from pipeline.beam_args import pipeline_options
from pipeline.embed_job import EmbedJob, prepare_models
from tests.helpers_pipeline import TINY_DETECTOR, TINY_ENCODER
from tests.helpers_regions import photo
from transforms.embedding_handler import BOX_COUNT_BUCKETS, EmbeddingModelHandler, box_count
from transforms.inference import InferenceFailure, claim_gpu
from transforms.records import FAILED, DecodedImage, RegionRecord
from transforms.region_handler import RegionModelHandler
from transforms.regions import ExtractRegions


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    job = EmbedJob(inputs=["unused"], output=str(tmp_path_factory.mktemp("o")), random_weights=True,
                   encoder_config=TINY_ENCODER, detector_config=TINY_DETECTOR, device="cpu", detector_batch_size=3)
    return prepare_models(job)


def image(image_id: str, pixels: np.ndarray) -> DecodedImage:
    return DecodedImage(image_id, f"mem://{image_id}", "sha", pixels, pixels.shape[1], pixels.shape[0])


def batch_of_images() -> list[DecodedImage]:
    """Two photos and, between them, one the detector rejects (too narrow at its test scale)."""
    return [image("astronaut", photo("astronaut", 120, 160)), image("sliver", np.zeros((2, 300, 3), np.uint8)),
            image("coffee", photo("coffee", 120, 160))]


def test_detector_from_config_text_is_the_launchers_model(models):
    """Workers build the detector from the merged config's text: same model, same fingerprint."""
    extractor = models.detector.load()
    assert extractor.fingerprint == models.detector_fingerprint
    launcher = RegionExtractor.from_config(TINY_DETECTOR, weights=None, device="cpu")
    im = photo("chelsea", 100, 140)
    a, b = extractor.extract([im])[0], launcher.extract([im])[0]
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.boxes, b.boxes)


def test_config_text_cannot_run_code(tmp_path):
    marker = tmp_path / "ran"
    text = f"MODEL:\n  DEVICE: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(yaml.YAMLError):
        RegionExtractor.from_config_text(text)
    assert not marker.exists()


def test_region_handler_isolates_the_image_that_breaks_its_batch(models):
    handler = RegionModelHandler(models.detector)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 3}
    extractor = handler.load_model()
    batch = batch_of_images()
    results = handler.run_inference(batch, extractor)
    assert [r.example.image_id for r in results] == ["astronaut", "sliver", "coffee"]
    failed = results[1].inference
    assert isinstance(failed, InferenceFailure) and failed.error == "ValueError" and "too narrow" in failed.message
    for result in (results[0], results[2]):
        want = extractor.extract([result.example.pixels])[0]
        assert isinstance(result.inference, Regions)
        np.testing.assert_array_equal(result.inference.features, want.features)
        np.testing.assert_array_equal(result.inference.conf, want.conf)


def test_embedding_handler_batches_by_box_count_and_rejects_bad_regions(models):
    handler = EmbeddingModelHandler(models.encoder, max_batch_size=8)
    kwargs = handler.batch_elements_kwargs()
    assert kwargs["length_fn"] is box_count and kwargs["bucket_boundaries"] == BOX_COUNT_BUCKETS
    assert (kwargs["min_batch_size"], kwargs["max_batch_size"]) == (1, 8)
    rng = np.random.default_rng(0)

    def record(image_id: str, n: int, dim: int = 2048, bad_value: float | None = None) -> RegionRecord:
        feats = rng.random((n, dim), dtype=np.float32)
        if bad_value is not None:
            feats[0, 0] = bad_value
        boxes = np.tile(np.array([[0.1, 0.1, 0.5, 0.6]], np.float32), (n, 1))
        return RegionRecord(image_id, image_id, "sha", Regions.from_boxes(feats, boxes * 100, np.ones(n), None,
                                                                          100, 100))

    batch = [record("a", 12), record("empty", 0), record("narrow", 10, dim=1024), record("nan", 10, bad_value=np.nan),
             record("b", 30)]
    encoder = handler.load_model()
    results = handler.run_inference(batch, encoder)
    kinds = {r.example.image_id: r.inference.error for r in results if isinstance(r.inference, InferenceFailure)}
    assert kinds == {"empty": "bad_regions", "narrow": "bad_regions", "nan": "bad_regions"}
    for r in results:
        if r.example.image_id in ("a", "b"):
            want = encoder.encode_regions([r.example.regions.features], [r.example.regions.norm_bb])[0]
            np.testing.assert_allclose(r.inference, want, atol=1e-5, rtol=1e-4)


def test_a_non_finite_embedding_is_a_failure_not_a_row(models):
    """A weight gone bad (or fp16 overflow) gives NaN vectors: each record fails, named, instead of embedding."""
    import torch

    handler = EmbeddingModelHandler(models.encoder)
    encoder = handler.load_model()
    with torch.no_grad():
        encoder.model.img_model.bert.img_embeddings.img_linear.weight[0, 0] = float("nan")
    feats = np.random.default_rng(1).random((12, 2048), dtype=np.float32)
    boxes = np.tile(np.array([[10, 10, 50, 60]], np.float32), (12, 1))
    record = RegionRecord("x", "x", "sha", Regions.from_boxes(feats, boxes, np.ones(12), None, 100, 100))
    (result,) = handler.run_inference([record], encoder)
    assert result.inference.error == "non_finite_embedding" and "NaN" in result.inference.message


def test_models_are_shared_across_processes_on_cuda_only_by_default(models):
    cpu = RegionModelHandler(models.detector)
    assert not cpu.share_model_across_processes() and cpu.model_copies() == 1
    assert RegionModelHandler(models.detector, share_across_processes=True).share_model_across_processes()
    cuda = EmbeddingModelHandler(type(models.encoder)(config=models.encoder.config, device="cuda"))
    assert cuda.share_model_across_processes()


def test_gpu_turns_go_round_robin_per_model(tmp_path):
    assert [claim_gpu("detector", 2, str(tmp_path)) for _ in range(5)] == [0, 1, 0, 1, 0]
    assert [claim_gpu("encoder", 3, str(tmp_path)) for _ in range(4)] == [0, 1, 2, 0]


def test_extract_stage_outputs_failures_and_beams_inference_metrics(models):
    """Through a real pipeline: the bad image is one failure row, the others regions; RunInference counts."""
    p = beam.Pipeline(options=pipeline_options([]))
    out = p | beam.Create(batch_of_images()) | ExtractRegions(models.detector)
    ok = out.ok | "Ids" >> beam.Map(lambda r: r.image_id)
    failed = out[FAILED] | "Kinds" >> beam.Map(lambda f: (f["image_id"], f["stage"], f["error"]))
    assert_that(ok, equal_to(["astronaut", "coffee"]), label="CheckOk")
    assert_that(failed, equal_to([("sliver", "extract", "ValueError")]), label="CheckFailed")
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace("ldot_extract"))["counters"]}
    assert counters["num_inferences"] == 3
    ours = {c.key.metric.name: c.committed
            for c in result.metrics().query(MetricsFilter().with_namespace("ldot"))["counters"]}
    assert (ours["extracted"], ours["failed_extract"]) == (2, 1)
