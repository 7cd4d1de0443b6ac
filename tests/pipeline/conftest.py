"""Fixtures of the nightly tests: a work dir and index root after one clean, published nightly run over demo photos,
and a copy of it for each test to change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.errors import EXIT_OK
from pipeline.nightly import NightlyConfig, run_nightly
from tests.helpers_nightly import copy_demo_photos, settings


@pytest.fixture(scope="module")
def nightly_inputs() -> dict[str, tuple[str, ...]]:
    """Input folder (under the run's root) -> the demo photos in it, in input order, for ``nightly_seeded``. A test
    module overrides this fixture to seed other inputs."""
    return {"corpus": ("astronaut.jpg", "coffee.jpg", "rocket.jpg")}


@pytest.fixture(scope="module")
def nightly_seeded(tmp_path_factory, nightly_inputs) -> Path:
    """A work dir and index root after one clean nightly run over ``nightly_inputs`` (published), with the
    ``tests.helpers_nightly.settings`` of that root."""
    root = tmp_path_factory.mktemp("seeded")
    for folder, names in nightly_inputs.items():
        copy_demo_photos(root / folder, *names)
    code, report = run_nightly(NightlyConfig(**settings(root, inputs=[str(root / f) for f in nightly_inputs])))
    assert code == EXIT_OK and report["status"] == "published", report
    return root


@pytest.fixture
def nightly_state(nightly_seeded, tmp_path) -> Path:
    """A copy of ``nightly_seeded`` of this test's own."""
    root = tmp_path / "s"
    shutil.copytree(nightly_seeded, root)
    return root
