"""One call that makes a chapter reproducible.

Neighbours: :mod:`gradlab.device` is the other call at the top of every
chapter; the data generators of :mod:`gradlab.data` take their own seeds.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from gradlab import _validate

__all__ = ["seed_everything"]


def seed_everything(seed: int, *, deterministic: bool = True) -> np.random.Generator:
    """Seed python's ``random``, NumPy's legacy global RNG and torch (CPU and CUDA).

    With ``deterministic=True`` it also asks torch for deterministic algorithms
    (``warn_only=True``, so an op without a deterministic kernel warns instead of
    failing) and turns off cuDNN autotuning. On the CPU this makes repeated runs
    bit-identical for a fixed number of threads; across thread counts, sums may
    differ in the last bits, which is why the book prints rounded numbers.

    Returns a fresh :class:`numpy.random.Generator` seeded with ``seed``, the
    recommended way to draw NumPy randomness in new code.
    """
    seed = _validate.integer("seed", seed, 0, 2**32 - 1, hint="numpy's legacy generator takes 32-bit seeds")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs this for deterministic matmuls on CUDA >= 10.2.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return np.random.default_rng(seed)
