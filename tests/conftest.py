"""Shared test settings: one torch thread (the suite runs on 2 shared cores; tiny matmuls are slower with more
threads there, and results must not depend on thread count)."""

import torch

torch.set_num_threads(1)
