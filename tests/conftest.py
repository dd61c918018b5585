"""Shared test settings: one torch thread (the suite runs on 2 shared cores; tiny matmuls are slower with more
threads there, and results must not depend on thread count). Commands run with ``--threads`` change the process's
setting, so it is put back after every test."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
