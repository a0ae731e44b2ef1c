"""gradlab.compress against numpy/torch references, its invariants, and a real 2-process run."""

import copy
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _should_compress

from gradlab.compress import (
    GaLoreAdamW,
    PowerSGD,
    PowerSGDState,
    best_rank_r,
    optimizer_state_bytes,
    payload_bytes,
    power_iteration,
    should_compress,
)

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SCRIPT = Path(__file__).resolve().parents[2] / "chapters" / "scripts" / "ddp_train.py"


def randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def low_rank_plus_noise(n, m, rank, noise, seed=0, dtype=torch.float64):
    """A matrix with ``rank`` dominant directions (singular values 10, 9, ...)."""
    U, _ = torch.linalg.qr(randn(n, rank, seed=seed))
    V, _ = torch.linalg.qr(randn(m, rank, seed=seed + 1))
    S = torch.arange(10.0, 10.0 - rank, -1, dtype=torch.float64)
    return ((U * S) @ V.T + noise * randn(n, m, seed=seed + 2)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_power_iteration_matches_numpy_projection(dtype):
    M, Q0 = randn(12, 9, dtype=dtype), randn(9, 3, dtype=dtype, seed=1)
    P, Q = power_iteration(M, Q0)
    Pn, _ = np.linalg.qr(M.double().numpy() @ Q0.double().numpy())
    expected = Pn @ Pn.T @ M.double().numpy()  # projection of M on span(M Q0)
    assert P.dtype == dtype and Q.shape == (9, 3)
    np.testing.assert_allclose((P @ Q.T).double().numpy(), expected, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose((P.T @ P).double().numpy(), np.eye(3), atol=TOL[dtype])


def test_power_iteration_with_allreduce_averages():
    """Two workers simulated: all-reduce sums, so the result is the projection of the mean."""
    M1, M2, Q0 = randn(8, 6), randn(8, 6, seed=3), randn(6, 2, seed=4)
    other = {}

    def allreduce_pair(t):  # worker 1's view: add worker 2's contribution
        return t + other["next"].pop(0)

    P2 = (M2 @ Q0)
    other["next"] = [P2]
    Pn, Rn = np.linalg.qr(((M1 + M2) @ Q0).numpy())
    Pn = Pn * np.sign(np.diag(Rn))  # the sign convention of gradlab (positive diagonal of R)
    other["next"].append(torch.from_numpy(M2.numpy().T @ Pn))
    P, Q = power_iteration(M1, Q0, allreduce_pair, world_size=2)
    np.testing.assert_allclose((P @ Q.T).numpy(), Pn @ Pn.T @ ((M1 + M2) / 2).numpy(), atol=1e-10)


@pytest.mark.parametrize("rank", [1, 3])
def test_best_rank_r_matches_numpy_svd(rank):
    M = randn(7, 5)
    U, S, Vh = np.linalg.svd(M.numpy(), full_matrices=False)
    np.testing.assert_allclose(best_rank_r(M, rank).numpy(), (U[:, :rank] * S[:rank]) @ Vh[:rank], atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_warm_start_converges_to_best_rank_r(dtype, rank):
    """Without error feedback, repeated compression of one matrix is subspace iteration."""
    M = low_rank_plus_noise(30, 20, rank, noise=0.05, dtype=dtype)
    comp = PowerSGD(rank, error_feedback=False)
    first = comp.compress("w", M)
    for _ in range(30):
        approx = comp.compress("w", M)
    best_err = torch.linalg.matrix_norm(M - best_rank_r(M, rank)).item()
    assert torch.linalg.matrix_norm(M - approx).item() == pytest.approx(best_err, rel=1e-3)
    assert torch.linalg.matrix_norm(M - first).item() > best_err * (1 + 1e-6)


def test_without_warm_start_one_iteration_is_worse():
    M = low_rank_plus_noise(30, 20, 2, noise=0.5)
    cold, warm = PowerSGD(2, warm_start=False, error_feedback=False), PowerSGD(2, error_feedback=False)
    for _ in range(10):
        a_cold, a_warm = cold.compress("w", M), warm.compress("w", M)
    best = torch.linalg.matrix_norm(M - best_rank_r(M, 2)).item()
    assert torch.linalg.matrix_norm(M - a_warm).item() < torch.linalg.matrix_norm(M - a_cold).item()
    assert torch.linalg.matrix_norm(M - a_warm).item() == pytest.approx(best, rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 12), m=st.integers(2, 12), rank=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_property_never_better_than_eckart_young(n, m, rank, seed):
    M = randn(n, m, seed=seed)
    approx = PowerSGD(rank, error_feedback=False, seed=seed).compress("w", M)
    r = min(rank, n, m)
    best = torch.linalg.matrix_norm(M - best_rank_r(M, r)).item()
    assert torch.linalg.matrix_rank(approx).item() <= r
    assert torch.linalg.matrix_norm(M - approx).item() >= best - 1e-9


@settings(max_examples=20, deadline=None)
@given(rank=st.integers(1, 3), steps=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_property_error_feedback_loses_nothing(rank, steps, seed):
    """sum_t approx_t + e_T = sum_t g_t: what is dropped is re-sent later."""
    comp = PowerSGD(rank, seed=seed)
    grads = [randn(6, 5, seed=seed + t) for t in range(steps)]
    sent = sum(comp.compress("w", g) for g in grads)
    torch.testing.assert_close(sent + comp.errors["w"], sum(grads), rtol=0, atol=1e-10)
    assert comp.error_norm() == pytest.approx(torch.linalg.matrix_norm(comp.errors["w"]).item())


def test_full_rank_is_exact_and_shapes_are_kept():
    g = randn(4, 3, 2)  # viewed as 4 x 6
    comp = PowerSGD(4)
    out = comp.compress("conv", g)
    assert out.shape == g.shape
    torch.testing.assert_close(out, g, rtol=0, atol=1e-10)
    assert comp.error_norm() < 1e-10


def test_compress_many_equals_one_by_one():
    grads = [randn(6, 4, seed=1), randn(5, 7, seed=2)]
    a, b = PowerSGD(2, seed=3), PowerSGD(2, seed=3)
    for _ in range(3):
        together = a.compress_many(["x", "y"], grads)
        apart = [b.compress("x", grads[0]), b.compress("y", grads[1])]
    for t, s in zip(together, apart):
        torch.testing.assert_close(t, s)


@pytest.mark.parametrize("shape, rank, rate", [((10, 256), 4, 2), ((64, 64), 16, 2), ((5,), 1, 2),
                                               ((8, 3, 3, 3), 2, 1.5), ((3, 3), 1, 0.5), ((100, 100), 30, 2)])
def test_should_compress_matches_torch(shape, rank, rate):
    n, m = shape[0], math.prod(shape[1:]) if len(shape) > 1 else 1
    assert should_compress(shape, rank, rate) == _should_compress(n, m, min(n, m, rank), rate)[0]


def test_payload_bytes():
    shapes = [(256, 64), (256,), (10, 256), (10,)]
    numel = sum(math.prod(s) for s in shapes)
    assert payload_bytes(shapes, "allreduce") == 4 * numel
    assert payload_bytes(shapes, "allreduce", element_size=2) == 2 * numel
    r = 4
    expected = 4 * ((256 + 64) * r + 256 + (10 + 256) * r + 10)
    assert payload_bytes(shapes, "powersgd", rank=r, min_compression_rate=0) == expected
    # with torch's default min_compression_rate=2 the 10 x 256 layer stays dense at rank 8
    assert payload_bytes(shapes, "powersgd", rank=8, min_compression_rate=2) == 4 * (
        (256 + 64) * 8 + 256 + 10 * 256 + 10)
    k = sum(math.ceil(0.01 * math.prod(s)) for s in shapes)
    assert payload_bytes(shapes, "topk", ratio=0.01) == 8 * k


@pytest.mark.parametrize("call, exc, match", [
    (lambda: PowerSGD(0), ValueError, "rank must be >= 1"),
    (lambda: PowerSGD(1.5), TypeError, "rank must be an int"),
    (lambda: PowerSGD(2).compress("b", torch.zeros(5)), ValueError, "needs a matrix"),
    (lambda: PowerSGD(2).compress("i", torch.zeros(3, 3, dtype=torch.int64)), TypeError, "float32 or float64"),
    (lambda: PowerSGD(2).compress("h", torch.zeros(3, 3, dtype=torch.float16)), TypeError, r"cast with \.float\(\)"),
    (lambda: PowerSGD(2).compress("x", [[1.0]]), TypeError, "torch.Tensor"),
    (lambda: best_rank_r(torch.zeros(3, 4), 5), ValueError, "rank 5 is impossible"),
    (lambda: power_iteration(torch.zeros(3, 4), torch.zeros(3, 1)), ValueError, r"Q must have shape \(4, r\)"),
    (lambda: PowerSGDState(start_powerSGD_iter=-1), ValueError, "start_powerSGD_iter"),
    (lambda: PowerSGDState(min_compression_rate=-1), ValueError, "min_compression_rate must be a number >= 0"),
    (lambda: PowerSGDState(nonfinite="ignore"), ValueError, "nonfinite must be 'skip'"),
    (lambda: PowerSGD(1).compress("w", torch.ones(3, 3), world_size=2), ValueError, "without allreduce"),
    (lambda: PowerSGD(1).compress("w", torch.ones(3, 3), lambda t: t, world_size=0), ValueError,
     "world_size must be an int >= 1"),
    (lambda: power_iteration(torch.ones(3, 3), torch.ones(3, 1), world_size=2), ValueError, "without allreduce"),
    (lambda: should_compress((8, 8), 0), ValueError, "rank must be >= 1"),
    (lambda: should_compress((8, 8), -3), ValueError, "rank must be >= 1"),
    (lambda: should_compress((8, 8), 1, -1.0), ValueError, "min_compression_rate"),
    (lambda: payload_bytes([(3, 3)], "powersgd", min_compression_rate=-2), ValueError, "min_compression_rate"),
    (lambda: payload_bytes([(3, 3)], "allreduce", element_size=0), ValueError, "element_size must be"),
    (lambda: GaLoreAdamW([{"params": [torch.zeros(8, 8, requires_grad=True)], "rank": 2, "scale": 0}]),
     ValueError, "scale must be a finite number > 0"),
    (lambda: PowerSGDState(max_norm=-1.0), ValueError, "max_norm must be"),
    (lambda: PowerSGDState(matrix_approximation_rank=0), ValueError, "rank must be >= 1"),
    (lambda: payload_bytes([(3, 3)], "gzip"), ValueError, "scheme must be"),
    (lambda: payload_bytes([(3, 3)], "topk", ratio=0), ValueError, "ratio must be in"),
    (lambda: GaLoreAdamW([{"params": [torch.zeros(4, 3, requires_grad=True)], "rank": 4}]), ValueError,
     "rank 4 is impossible for a 4 x 3"),
    (lambda: GaLoreAdamW([{"params": [torch.zeros(4, requires_grad=True)], "rank": 1}]), ValueError,
     "projects matrices"),
    (lambda: GaLoreAdamW([torch.zeros(2, requires_grad=True)], lr=-1), ValueError, "lr must be >= 0"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_payload_bytes_default_rate_is_torchs():
    """The default min_compression_rate is 2, as in PowerSGDState and torch: a 3 x 3 matrix at
    rank 4 is sent dense (36 bytes), not as factors larger than itself."""
    assert payload_bytes([(3, 3)], "powersgd", rank=4) == 36 == payload_bytes([(3, 3)], "allreduce")
    n, m, r = 10, 256, 8
    assert not _should_compress(n, m, r, 2)[0] and payload_bytes([(n, m)], "powersgd", rank=r) == 4 * n * m
    assert PowerSGDState().min_compression_rate == 2 == torch_state_default("min_compression_rate")


def torch_state_default(name):
    import inspect

    from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState as TorchState

    return inspect.signature(TorchState.__init__).parameters[name].default


def test_state_defaults_are_torchs():
    ours = PowerSGDState()
    assert ours.matrix_approximation_rank == torch_state_default("matrix_approximation_rank") == 1
    assert ours.start_powerSGD_iter == torch_state_default("start_powerSGD_iter")


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


# --- non-finite gradients ---------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_nonfinite_gradient_passes_through_and_leaves_the_state_alone(bad):
    """One inf/NaN step must not poison the later steps: the output is the gradient itself (so
    GradScaler or a norm check sees it), errors and Q are untouched, and the run continues exactly
    as if that step had been skipped."""
    g1, g2, g3 = randn(6, 5, seed=1), randn(6, 5, seed=2), randn(6, 5, seed=3)
    spiked = g2.clone()
    spiked[2, 3] = bad
    a, b = PowerSGD(2, seed=4), PowerSGD(2, seed=4)
    a.compress("w", g1)
    b.compress("w", g1)
    errors, qs = a.errors["w"].clone(), a.qs["w"].clone()
    out = a.compress("w", spiked)
    torch.testing.assert_close(out, spiked, equal_nan=True)  # passed through, inf still inf
    assert a.skipped == 1 and torch.equal(a.errors["w"], errors) and torch.equal(a.qs["w"], qs)
    torch.testing.assert_close(a.compress("w", g3), b.compress("w", g3), rtol=0, atol=0)
    assert math.isfinite(a.error_norm()) and a.error_norm() == b.error_norm()


def test_nonfinite_on_one_worker_makes_every_worker_pass_through():
    """Two workers simulated with a summing all-reduce: worker 2's inf reaches worker 1 through the
    summed P, so worker 1 (finite itself) also returns the uncompressed average, and keeps its state."""
    g1, g2, Q0 = randn(8, 6), randn(8, 6, seed=3), randn(6, 2, seed=4)
    g2[0, 0] = math.inf
    comp = PowerSGD(2)
    comp.qs["w"] = Q0.clone()
    others = [g2 @ Q0, g2.reshape(-1)]  # what worker 2 contributes to the two collectives, in order

    def allreduce_pair(t):
        return t + others.pop(0).reshape(t.shape)

    out = comp.compress("w", g1, allreduce_pair, world_size=2)
    assert not others  # both collectives were issued: the P sum and the dense fallback
    torch.testing.assert_close(out, (g1 + g2) / 2)
    assert comp.skipped == 1 and "w" not in comp.errors and torch.equal(comp.qs["w"], Q0)


def test_nonfinite_raise_mode_explains_and_keeps_the_state():
    comp = PowerSGD(1, nonfinite="raise")
    comp.compress("w", randn(4, 4))
    before = comp.errors["w"].clone()
    with pytest.raises(FloatingPointError, match="not finite.*GradScaler"):
        comp.compress("w", torch.full((4, 4), math.nan, dtype=torch.float64))
    assert torch.equal(comp.errors["w"], before)
    with pytest.raises(ValueError, match="nonfinite must be"):
        PowerSGD(1, nonfinite="zero")


class _Bucket:
    """The part of torch's GradBucket that the hooks use; the gradients are views of the buffer."""

    def __init__(self, params, grads):
        self._buf = torch.cat([g.reshape(-1) for g in grads])
        self._params, self._grads, offset = params, [], 0
        for g in grads:
            self._grads.append(self._buf[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def buffer(self):
        return self._buf

    def gradients(self):
        return self._grads

    def parameters(self):
        return self._params

    def is_last(self):
        return True


@pytest.fixture
def one_process_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_hook_clips_and_passes_a_nonfinite_bucket_through(one_process_group):
    """gradlab's hook in a real (1-process) gloo group: clipping bounds the local norm, an inf bucket
    comes out as inf (not NaN, as scaling by max_norm / inf = 0 would give), the error buffers are
    untouched by it, and the next steps are finite."""
    from gradlab.compress import powerSGD_hook

    params = [torch.zeros(16, 12), torch.zeros(12), torch.zeros(10, 16)]
    grads = [10 * randn(*p.shape, dtype=torch.float32, seed=i) for i, p in enumerate(params)]
    state = PowerSGDState(matrix_approximation_rank=1, start_powerSGD_iter=0, max_norm=1.0)
    for _ in range(3):
        powerSGD_hook(state, _Bucket(params, grads)).wait()
        assert state.grad_norm <= 1.0 * (1 + 1e-6)
    errors = {k: e.clone() for k, e in state.compressor.errors.items()}
    spiked = [g.clone() for g in grads]
    spiked[0][3, 4] = math.inf
    out = powerSGD_hook(state, _Bucket(params, spiked)).wait()
    assert torch.isinf(out).any() and not torch.isnan(out).any()
    assert state.skipped_steps == 1 and state.compressed_steps == 3 and state.grad_norm == math.inf
    assert all(torch.equal(state.compressor.errors[k], e) for k, e in errors.items())
    out = powerSGD_hook(state, _Bucket(params, grads)).wait()
    assert torch.isfinite(out).all() and math.isfinite(state.error_norm()) and state.compressed_steps == 4


def test_hook_output_is_the_compressors_approximation(one_process_group):
    """In a 1-process group the hook must return exactly what PowerSGD.compress_many computes for the
    matrices (with the same state: warm start and error feedback over several steps) and the
    vectors unchanged (the mean over one worker)."""
    from gradlab.compress import powerSGD_hook

    params = [torch.zeros(16, 12), torch.zeros(12), torch.zeros(10, 16)]
    state = PowerSGDState(matrix_approximation_rank=2, start_powerSGD_iter=0, random_seed=3)
    twin = copy.deepcopy(state.compressor)
    for step in range(3):
        grads = [randn(*p.shape, dtype=torch.float32, seed=10 * step + i) for i, p in enumerate(params)]
        out = powerSGD_hook(state, _Bucket(params, [g.clone() for g in grads])).wait()
        mats = [(id(p), g) for p, g in zip(params, grads) if g.ndim == 2]
        expected = twin.compress_many([k for k, _ in mats], [g for _, g in mats])
        sizes = [g.numel() for g in grads]
        parts = out.split(sizes)
        torch.testing.assert_close(parts[0].view(16, 12), expected[0])
        torch.testing.assert_close(parts[1], grads[1])
        torch.testing.assert_close(parts[2].view(10, 16), expected[1])
        assert not torch.allclose(parts[0].view(16, 12), grads[0])  # rank 2 of a random 16 x 12: not exact
    assert state.compressed_steps == 3 and state.skipped_steps == 0


@pytest.mark.parametrize("nonfinite", ["skip", "raise"])
def test_hook_treats_a_nonfinite_bias_like_a_nonfinite_matrix(one_process_group, nonfinite):
    """An overflow only in an uncompressed vector (a bias, as under AMP) must also leave the
    compressor's state alone (or raise): the step will be skipped, so nothing may be absorbed."""
    from gradlab.compress import powerSGD_hook

    params = [torch.zeros(16, 12), torch.zeros(12)]
    grads = [randn(*p.shape, dtype=torch.float32, seed=i) for i, p in enumerate(params)]
    state = PowerSGDState(matrix_approximation_rank=1, start_powerSGD_iter=0, nonfinite=nonfinite)
    powerSGD_hook(state, _Bucket(params, grads)).wait()
    errors = {k: e.clone() for k, e in state.compressor.errors.items()}
    qs = {k: q.clone() for k, q in state.compressor.qs.items()}
    spiked = [g.clone() for g in grads]
    spiked[1][5] = math.inf  # the bias only; the matrix is finite
    if nonfinite == "raise":
        with pytest.raises(FloatingPointError, match="not finite"):
            powerSGD_hook(state, _Bucket(params, spiked)).wait()
    else:
        out = powerSGD_hook(state, _Bucket(params, spiked)).wait()
        assert torch.isinf(out).any()
        torch.testing.assert_close(out[:16 * 12].view(16, 12), spiked[0])  # the matrix went through as is
        assert state.skipped_steps == 1 and state.compressed_steps == 1
    assert all(torch.equal(state.compressor.errors[k], e) for k, e in errors.items())
    assert all(torch.equal(state.compressor.qs[k], q) for k, q in qs.items())


def test_hook_without_clipping_reports_the_unclipped_norm(one_process_group):
    from gradlab.compress import powerSGD_hook

    params = [torch.zeros(16, 12)]
    grads = [10 * randn(16, 12, dtype=torch.float32)]
    state = PowerSGDState(start_powerSGD_iter=0)
    powerSGD_hook(state, _Bucket(params, grads)).wait()
    assert state.grad_norm == pytest.approx(torch.linalg.vector_norm(grads[0]).item(), rel=1e-6)


def test_key_reused_with_another_shape():
    comp = PowerSGD(1)
    comp.compress("w", randn(4, 4))
    with pytest.raises(ValueError, match="one key per tensor"):
        comp.compress("w", randn(5, 4))


# --- GaLore -----------------------------------------------------------------------------------

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
def test_compressor_on_cuda():
    M = low_rank_plus_noise(30, 20, 2, noise=0.05).cuda()
    comp = PowerSGD(2, error_feedback=False)
    for _ in range(20):
        approx = comp.compress("w", M)
    assert approx.is_cuda
    best = torch.linalg.matrix_norm(M - best_rank_r(M, 2)).item()
    assert torch.linalg.matrix_norm(M - approx).item() == pytest.approx(best, rel=1e-3)
    W = M.clone().requires_grad_()
    W.grad = M.clone()
    GaLoreAdamW([{"params": [W], "rank": 2}]).step()
    assert W.is_cuda


# --- two real processes -----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_own_hook_matches_torch_hook(tmp_path):
    """torchrun, 2 gloo workers on 127.0.0.1: gradlab's hook sends exactly the bytes of
    torch's powerSGD_hook and reaches a comparable loss; plain all-reduce sends 4 bytes/param."""
    out = tmp_path / "runs.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{_free_port()}", str(SCRIPT),
           "--steps", "40", "--hidden", "64", "--batch", "128", "--out", str(out),
           "--config", "name=plain,hook=allreduce",
           "--config", "name=torch,hook=torch,rank=2,start=2,min_rate=2",
           "--config", "name=ours,hook=gradlab,rank=2,start=2,min_rate=2",
           "--config", "name=from0,hook=gradlab,rank=2,start=0,min_rate=0",
           "--config", "name=clip,hook=gradlab,rank=2,start=2,min_rate=2,clip=0.25"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    plain, theirs, ours, from0, clip = record["runs"]
    assert record["world_size"] == 2
    assert plain["bytes_per_step"] == [plain["dense_bytes_per_step"]] * 40
    assert ours["bytes_per_step"] == theirs["bytes_per_step"]
    expected = payload_bytes(ours["shapes"], "powersgd", rank=2, min_compression_rate=2)
    assert ours["bytes_per_step"][2:] == [expected] * 38 and expected < plain["dense_bytes_per_step"] / 4
    assert ours["losses"][:2] == theirs["losses"][:2] == plain["losses"][:2]
    assert len(ours["grad_norms"]) == 40 and all(0 < g < math.inf for g in ours["grad_norms"])
    assert ours["losses"][-1] < 0.7 * ours["losses"][0]
    assert abs(math.log(ours["losses"][-1] / theirs["losses"][-1])) < math.log(2)
    # keyed by parameter, gradlab's state survives DDP's bucket rebuild: compression from step 0
    assert from0["bytes_per_step"] == [payload_bytes(ours["shapes"], "powersgd", rank=2, min_compression_rate=0)] * 40
    assert from0["losses"][-1] < 0.8 * from0["losses"][0]
    # max_norm clips each worker's gradient inside the hook (the norm is measured after clipping):
    # bounded by 0.25, clipped at many steps (0.25 is about the median norm), a smaller error buffer
    assert all(g <= 0.25 * (1 + 1e-6) for g in clip["grad_norms"])
    assert sum(g > 0.25 * (1 - 1e-3) for g in clip["grad_norms"]) >= 5
    assert max(clip["error_norms"]) < 0.7 * max(ours["error_norms"])
    assert clip["losses"][-1] < 0.8 * clip["losses"][0] and clip["skipped_steps"] == ours["skipped_steps"] == 0


def test_check_power_iteration_accepts_a_correct_step_and_explains_mistakes():
    from gradlab.checks import check_power_iteration

    def good(M, Q):
        P = torch.linalg.qr(M @ Q).Q
        return P, M.T @ P

    assert check_power_iteration(good).passed
    assert check_power_iteration(lambda M, Q: power_iteration(M, Q)).passed
    not_orth = check_power_iteration(lambda M, Q: (M @ Q, M.T @ (M @ Q)))
    assert not not_orth.passed and "orthonormal" in not_orth.message
    doubled = check_power_iteration(lambda M, Q: (good(M, Q)[0], 2 * good(M, Q)[1]))
    assert not doubled.passed and "nothing to average" in doubled.message


def test_check_payload_bytes_accepts_the_reference_and_explains_mistakes():
    from gradlab.checks import check_payload_bytes

    def good(n, m, scheme, rank, ratio):
        return payload_bytes([(n, m)], scheme, rank=rank, ratio=ratio)

    def by_hand(n, m, scheme, rank, ratio):
        if scheme == "allreduce":
            return 4 * n * m
        if scheme == "topk":
            return 8 * math.ceil(ratio * n * m)
        r = min(n, m, rank)
        return 4 * (n + m) * r if (n + m) * r * 2 < n * m else 4 * n * m

    assert check_payload_bytes(good).passed and check_payload_bytes(by_hand).passed

    def numbers(n, m, scheme, rank, ratio):
        return by_hand(n, m, scheme, rank, ratio) // 4

    def no_index(n, m, scheme, rank, ratio):
        return by_hand(n, m, scheme, rank, ratio) // (2 if scheme == "topk" else 1)

    def floor_k(n, m, scheme, rank, ratio):
        return 8 * math.floor(ratio * n * m) if scheme == "topk" else by_hand(n, m, scheme, rank, ratio)

    def always_factors(n, m, scheme, rank, ratio):
        return 4 * (n + m) * min(n, m, rank) if scheme == "powersgd" else by_hand(n, m, scheme, rank, ratio)

    def stub(n, m, scheme, rank, ratio):
        raise NotImplementedError

    for wrong, says in [(numbers, "4 bytes per float32"), (no_index, "value and its index"),
                        (floor_k, "ceil"), (always_factors, "sends this matrix dense"),
                        (stub, "not written yet"), (lambda *a: [1, 2], "not what was asked")]:
        result = check_payload_bytes(wrong)
        assert not result.passed and says in result.message, (wrong, result.message)
