"""Suite-wide settings for the small shared test machines."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_faiss_thread():
    """OpenMP barriers spin under oversubscription on 2 shared cores (10x slower): FAISS gets one thread.
    Opt-in per module (``pytestmark``): the OpenMP setting is process-wide and would change torch's
    reduction order between a module-scoped fixture and its tests."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def job_service():
    """Beam's local job service with its SDK workers as subprocesses in the service's own temporary directory (the
    Flink/Dataflow worker model; see pipeline.job_service). ``job_service.beam_args()`` sends a pipeline there.
    Everything it started is ended at teardown, whatever the tests did."""
    from pipeline.job_service import LocalJobService

    with LocalJobService() as service:
        yield service
