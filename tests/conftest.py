"""Shared test settings: the torch thread count, ``DIFFUSION_ES_TEST_THREADS`` (default 1: the suite runs on 2
shared cores, where tiny matmuls are slower with more threads). Results must not depend on it beyond rounding:
CI runs the suite with 1 and with 2 threads, which sum reductions in different orders, so a tolerance fitted to
one setting fails at once (see tests/_tol.py). Commands run with ``--threads`` change the process's setting, so
it is put back after every test."""

import os

import pytest
import torch


def _threads() -> int:
    raw = os.environ.get("DIFFUSION_ES_TEST_THREADS", "1")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise pytest.UsageError(f"DIFFUSION_ES_TEST_THREADS must be a whole number >= 1, got {raw!r}")
    return n


THREADS = _threads()
torch.set_num_threads(THREADS)


def pytest_report_header(config):
    return f"torch threads: {THREADS} (DIFFUSION_ES_TEST_THREADS)"


@pytest.fixture(autouse=True)
def _torch_threads():
    yield
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)


@pytest.fixture(scope="module")
def one_blas_thread():
    """One BLAS thread for a module of many tiny float64 eigendecompositions / matrix products: a second thread only
    adds contention on a 2-core machine (use with ``pytestmark = pytest.mark.usefixtures("one_blas_thread")``)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1):
        yield
