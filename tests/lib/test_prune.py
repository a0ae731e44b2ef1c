"""gradlab.prune: the L1 proximal step against the lasso's optimum, global magnitude pruning."""

from __future__ import annotations

import math

import pytest
import torch

from gradlab import prune, sparse

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_threshold_is_the_l1_prox(dtype):
    """prox(x) minimises 0.5 (z - x)^2 + t |z|: compare with a dense grid search."""
    x = torch.linspace(-3, 3, 61, dtype=dtype)
    t = 0.7
    z = torch.linspace(-4, 4, 8001, dtype=dtype)
    objective = 0.5 * (z[None] - x[:, None]) ** 2 + t * z.abs()[None]
    best = z[objective.argmin(1)]
    torch.testing.assert_close(prune.soft_threshold(x, t), best, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="threshold"):
        prune.soft_threshold(x, -1.0)


def test_prox_l1_in_place_and_ista_solves_lasso():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(40, 10, generator=g, dtype=torch.float64)
    b = torch.randn(40, generator=g, dtype=torch.float64)
    lam = 5.0
    x = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    lr = 1.0 / torch.linalg.matrix_norm(A, 2).item() ** 2
    for _ in range(3000):
        x.grad = None
        (0.5 * (A @ x - b).pow(2).sum()).backward()
        with torch.no_grad():
            x -= lr * x.grad
        prune.prox_l1_([x], lr * lam)
    # optimality (subgradient) conditions of the lasso
    grad = (A.T @ (A @ x.detach() - b))
    nz = x.detach() != 0
    torch.testing.assert_close(grad[nz], -lam * torch.sign(x.detach()[nz]), atol=1e-6, rtol=0)
    assert torch.all(grad[~nz].abs() <= lam + 1e-6) and 0 < int(nz.sum()) < 10


def test_magnitude_prune_global():
    a = torch.tensor([0.1, -5.0, 0.3])
    b = torch.tensor([[2.0, -0.05], [0.2, 4.0]])
    masks = prune.magnitude_prune_([a, b], 3 / 7)
    assert torch.equal(a, torch.tensor([0.0, -5.0, 0.3]))
    assert torch.equal(b, torch.tensor([[2.0, 0.0], [0.0, 4.0]]))
    assert [m.dtype for m in masks] == [torch.bool, torch.bool]
    assert math.isclose(sparse.density(torch.cat([a, b.flatten()])), 4 / 7)
    with pytest.raises(ValueError, match="sparsity"):
        prune.magnitude_prune_([a], 1.5)
