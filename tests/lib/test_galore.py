"""gradlab.galore.GaLoreAdamW against torch.optim.AdamW / Adam in the projected space."""

from __future__ import annotations

import copy

import pytest
import torch

from gradlab.galore import GaLoreAdamW, optimizer_state_bytes

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("call, match", [
    (lambda: GaLoreAdamW([{"params": [torch.zeros(8, 8, requires_grad=True)], "rank": 2, "scale": 0}]),
     "scale must be a finite number > 0"),
    (lambda: GaLoreAdamW([{"params": [torch.zeros(4, 3, requires_grad=True)], "rank": 4}]),
     "rank 4 is impossible for a 4 x 3"),
    (lambda: GaLoreAdamW([{"params": [torch.zeros(4, requires_grad=True)], "rank": 1}]), "projects matrices"),
    (lambda: GaLoreAdamW([torch.zeros(2, requires_grad=True)], lr=-1), "lr must be >= 0"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("betas", [(0.9,), (0.9, 0.99, 0.999), 0.9])
def test_betas_that_are_not_a_pair_are_named(betas):
    """Not "IndexError: tuple index out of range"."""
    with pytest.raises(ValueError, match=r"betas must be a pair \(beta1, beta2\), got"):
        GaLoreAdamW([torch.zeros(2, requires_grad=True)], betas=betas)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\), got 1.0"):
        GaLoreAdamW([torch.zeros(2, requires_grad=True)], betas=(0.9, 1.0))


@pytest.mark.parametrize("rank", [None, 1])
def test_integer_parameters_are_refused_with_a_message(rank):
    p = torch.zeros(3, 3, dtype=torch.int64)
    opt = GaLoreAdamW([{"params": [p], "rank": rank}])
    p.grad = torch.ones(3, 3, dtype=torch.int64)
    with pytest.raises(TypeError, match="GaLoreAdamW updates floating-point parameters.*model.float"):
        opt.step()


def test_galore_add_param_group_is_checked():
    W = torch.zeros(8, 8, requires_grad=True)
    opt = GaLoreAdamW([W])
    with pytest.raises(ValueError, match="rank 10 is impossible for a 4 x 3"):
        opt.add_param_group({"params": [torch.zeros(4, 3, requires_grad=True)], "rank": 10})
    with pytest.raises(ValueError, match="update_proj_gap must be an int >= 1"):
        opt.add_param_group({"params": [torch.zeros(4, 3, requires_grad=True)], "rank": 2, "update_proj_gap": 0})
    assert len(opt.param_groups) == 1  # the rejected groups were not kept
    opt.add_param_group({"params": [torch.zeros(4, 3, requires_grad=True)], "rank": 2})
    assert opt.param_groups[-1]["rank"] == 2 and opt.param_groups[-1]["update_proj_gap"] == 200


def _train(opt_factory, params, steps=5, seed=0):
    opt = opt_factory(params)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
        opt.step()
    return opt


@pytest.mark.parametrize("dtype", DTYPES)
def test_galore_without_rank_is_adamw(dtype):
    params = [randn(5, 4, dtype=dtype).requires_grad_(), randn(3, dtype=dtype).requires_grad_()]
    ref = copy.deepcopy(params)
    kw = {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}
    _train(lambda ps: GaLoreAdamW(ps, **kw), params)
    _train(lambda ps: torch.optim.AdamW(ps, **kw), ref)
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 5), (5, 8)])
def test_galore_matches_adam_in_the_projected_space(dtype, shape):
    """Reference: torch.optim.Adam on R = projected gradient, mapped back with P."""
    rank, scale, lr, gap = 2, 0.5, 0.05, 3
    W = randn(*shape, dtype=dtype).requires_grad_()
    W_ref = W.detach().clone()
    opt = GaLoreAdamW([{"params": [W], "rank": rank, "update_proj_gap": gap, "scale": scale}], lr=lr,
                      weight_decay=0.0)
    right = shape[0] >= shape[1]
    R = torch.zeros((shape[0], rank) if right else (rank, shape[1]), dtype=dtype, requires_grad=True)
    adam = torch.optim.Adam([R], lr=1.0)
    g = torch.Generator().manual_seed(1)
    for t in range(7):
        G = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        if t % gap == 0:
            U, _, Vh = torch.linalg.svd(G, full_matrices=False)
            P = Vh[:rank].T if right else U[:, :rank]
        W.grad = G
        opt.step()
        before = R.detach().clone()
        R.grad = G @ P if right else P.T @ G
        adam.step()
        step = before - R.detach()  # Adam's normalized step at lr = 1
        W_ref -= lr * scale * (step @ P.T if right else P @ step)
    torch.testing.assert_close(W.detach(), W_ref, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)


def test_galore_state_is_smaller_by_the_formula():
    m, n, r = 64, 32, 4
    W, b = randn(m, n).float().requires_grad_(), torch.zeros(m, requires_grad=True)
    galore = _train(lambda ps: GaLoreAdamW([{"params": [ps[0]], "rank": r}, {"params": [ps[1]]}]), [W, b], 1)
    adamw = _train(lambda ps: torch.optim.AdamW(ps), copy.deepcopy([W, b]), 1)
    assert optimizer_state_bytes(galore) == 4 * (2 * r * max(m, n) + r * min(m, n) + 2 * m)
    # torch's AdamW stores the step counter as a 1-element float32 tensor per parameter
    assert optimizer_state_bytes(adamw) == 4 * (2 * m * n + 2 * m) + 2 * 4


@cuda
def test_galore_on_cuda():
    W = randn(30, 20).cuda().requires_grad_()
    W.grad = randn(30, 20, seed=1).cuda()
    GaLoreAdamW([{"params": [W], "rank": 2}]).step()
    assert W.is_cuda
