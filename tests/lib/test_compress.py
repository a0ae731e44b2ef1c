"""gradlab.compress against references: top-k/random-k and error feedback (invariants, torch.topk,
exact expectations), DGC, and PowerSGD's subspace iteration against numpy's SVD (Eckart-Young)
and torch's should_compress rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _should_compress

from gradlab import compress
from gradlab.compress import (
    PowerSGD,
    best_rank_r,
    payload_bytes,
    should_compress,
    subspace_iteration_step,
)

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = cuda


def randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def low_rank_plus_noise(n, m, rank, noise, seed=0, dtype=torch.float64):
    """A matrix with ``rank`` dominant directions (singular values 10, 9, ...)."""
    U, _ = torch.linalg.qr(randn(n, rank, seed=seed))
    V, _ = torch.linalg.qr(randn(m, rank, seed=seed + 1))
    S = torch.arange(10.0, 10.0 - rank, -1, dtype=torch.float64)
    return ((U * S) @ V.T + noise * randn(n, m, seed=seed + 2)).to(dtype)


# --- sparsification ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_matches_torch_topk(dtype):
    x = torch.randn(7, 9, generator=torch.Generator().manual_seed(0), dtype=dtype)
    msg = compress.topk(x, 10)
    dense = msg.to_dense()
    assert dense.shape == x.shape and int((dense != 0).sum()) == 10
    expected = torch.topk(x.abs().flatten(), 10).values
    torch.testing.assert_close(torch.sort(dense.abs().flatten(), descending=True).values[:10], expected)
    assert msg.nbytes == 10 * x.element_size() + 40


def test_randk_is_unbiased_when_scaled():
    """E[randk(x, k, scale=True)] = x. A scaled message is (n/k) x_j on the chosen
    indices, so the expectation is x exactly iff each index is chosen with
    probability k/n; the values are checked exactly, the probabilities by counting."""
    n, k, draws = 20, 5, 20_000
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(n, dtype=torch.float64)
    for _ in range(draws):
        msg = compress.randk(x, k, generator=g, scale=True)
        assert msg.indices.unique().numel() == k  # without replacement
        assert torch.equal(msg.values, x[msg.indices] * (n / k))
        counts[msg.indices] += 1
    # each count is Binomial(draws, k/n): mean 5000, standard deviation 61; allow 4 sd
    p = k / n
    sd = math.sqrt(draws * p * (1 - p))
    assert torch.all((counts - draws * p).abs() < 4 * sd), counts
    # hence the sample mean of the messages is x up to 4 standard errors per coordinate
    mean = counts * (n / k) * x / draws
    se = x.abs() * math.sqrt((n / k - 1) / draws)
    assert torch.all((mean - x).abs() <= 4 * se)
    # unscaled messages are biased by k/n: the test above would catch a missing scale
    assert not torch.all((counts * x / draws - x).abs() <= 4 * se)
    plain = compress.randk(x, k, generator=g)
    assert torch.equal(plain.values, x[plain.indices])


def test_compressor_bad_k():
    with pytest.raises(ValueError, match=r"k must be an int in \[0, 3\], got 4"):
        compress.topk(torch.zeros(3), 4)
    with pytest.raises(TypeError, match="k must be an int"):
        compress.randk(torch.zeros(3), 1.5)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(0, 40), st.integers(1, 6), st.integers(0, 10_000))
def test_error_feedback_invariant(n, k, steps, seed):
    """sent + new residual == gradient + old residual, exactly, at every step."""
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    ef = compress.ErrorFeedback(lambda a: compress.topk(a, k))
    sent_total, grad_total = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for _ in range(steps):
        grad = torch.randn(n, generator=g, dtype=torch.float64)
        old = torch.zeros(n, dtype=torch.float64) if ef.residual is None else ef.residual.clone()
        sent = ef(grad).to_dense()
        assert torch.equal(sent + ef.residual, grad + old)
        sent_total += sent
        grad_total += grad
    torch.testing.assert_close(sent_total + ef.residual, grad_total)


def test_error_feedback_with_randk_and_shape_check():
    g = torch.Generator().manual_seed(0)
    ef = compress.ErrorFeedback(lambda a: compress.randk(a, 3, generator=g))
    x = torch.randn(4, 5)
    sent = ef(x).to_dense()
    assert torch.equal(sent + ef.residual, x)
    with pytest.raises(ValueError, match="one ErrorFeedback per tensor"):
        ef(torch.zeros(3))
    with pytest.raises(TypeError, match="callable"):
        compress.ErrorFeedback(3)


def test_error_feedback_duplicate_indices_and_bad_messages():
    """A message that repeats an index means the sum of its values there (to_dense adds
    them); the residual must subtract that sum, or the invariant breaks."""
    def halves(a):  # sends the largest entry as two halves under the same index
        i = int(a.abs().argmax())
        idx = torch.tensor([i, i, (i + 1) % a.numel()])
        return compress.Compressed(idx, torch.stack([a[i] / 2, a[i] / 2, a[idx[2]]]), a.shape)

    g = torch.Generator().manual_seed(0)
    ef = compress.ErrorFeedback(halves)
    total_sent, total_grad = torch.zeros(9, dtype=torch.float64), torch.zeros(9, dtype=torch.float64)
    for _ in range(5):
        grad = torch.randn(9, generator=g, dtype=torch.float64)
        old = torch.zeros(9, dtype=torch.float64) if ef.residual is None else ef.residual.clone()
        sent = ef(grad).to_dense()
        torch.testing.assert_close(sent + ef.residual, grad + old, rtol=0, atol=1e-15)
        total_sent += sent
        total_grad += grad
    torch.testing.assert_close(total_sent + ef.residual, total_grad)
    with pytest.raises(TypeError, match="Compressed"):
        compress.ErrorFeedback(lambda a: a)(torch.zeros(3))
    bad = compress.ErrorFeedback(lambda a: compress.Compressed(torch.tensor([0, 1]), a[:1], a.shape))
    with pytest.raises(ValueError, match="same length"):
        bad(torch.zeros(3))


def test_dgc_invariant_and_clipping():
    g = torch.Generator().manual_seed(0)
    dgc = compress.DGC(k=3, momentum=0.9, clip_norm=1.0)
    for _ in range(5):
        grad = 100 * torch.randn(30, generator=g, dtype=torch.float64)
        v_old, u_old = dgc.v, dgc.u
        msg = dgc(grad)
        clipped = grad * min(1.0, 1.0 / (grad.norm().item() + 1e-6))
        u_new = clipped if u_old is None else 0.9 * u_old + clipped
        v_before = u_new if v_old is None else v_old + u_new
        torch.testing.assert_close(msg.to_dense() + dgc.v, v_before)
        assert torch.all(dgc.u.view(-1)[msg.indices] == 0)  # momentum factor masking
    with pytest.raises(ValueError, match="clip_norm"):
        compress.DGC(3, clip_norm=0.0)
    with pytest.raises(ValueError, match="momentum"):
        compress.DGC(3, momentum=1.0)


def test_dgc_without_masking_or_momentum_is_error_feedback_topk():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(12, generator=g) for _ in range(6)]
    dgc, ef = compress.DGC(k=2, momentum=0.0), compress.ErrorFeedback(lambda a: compress.topk(a, 2))
    for grad in grads:
        torch.testing.assert_close(dgc(grad).to_dense(), ef(grad).to_dense())


# --- PowerSGD ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_subspace_iteration_step_matches_numpy_projection(dtype):
    M, Q0 = randn(12, 9, dtype=dtype), randn(9, 3, dtype=dtype, seed=1)
    P, Q = subspace_iteration_step(M, Q0)
    Pn, _ = np.linalg.qr(M.double().numpy() @ Q0.double().numpy())
    expected = Pn @ Pn.T @ M.double().numpy()  # projection of M on span(M Q0)
    assert P.dtype == dtype and Q.shape == (9, 3)
    np.testing.assert_allclose((P @ Q.T).double().numpy(), expected, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose((P.T @ P).double().numpy(), np.eye(3), atol=TOL[dtype])


def test_subspace_iteration_step_with_allreduce_averages():
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
    P, Q = subspace_iteration_step(M1, Q0, allreduce_pair, world_size=2)
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
    (lambda: PowerSGD(0), ValueError, "rank must be an int >= 1"),
    (lambda: PowerSGD(1.5), TypeError, "rank must be an int"),
    (lambda: PowerSGD(2).compress("b", torch.zeros(5)), ValueError, "needs a matrix"),
    (lambda: PowerSGD(2).compress("i", torch.zeros(3, 3, dtype=torch.int64)), TypeError,
     r"float32 or float64 tensor, got torch.int64; .* cast with \.float\(\)"),
    (lambda: PowerSGD(2).compress("h", torch.zeros(3, 3, dtype=torch.float16)), TypeError, r"cast with \.float\(\)"),
    (lambda: PowerSGD(2).compress("x", [[1.0]]), TypeError, "torch.Tensor"),
    (lambda: best_rank_r(torch.zeros(3, 4), 5), ValueError, "rank 5 is impossible"),
    (lambda: subspace_iteration_step(torch.zeros(3, 4), torch.zeros(3, 1)), ValueError, r"Q must have shape \(4, r\)"),
    (lambda: PowerSGD(1).compress("w", torch.ones(3, 3), world_size=2), ValueError, "without allreduce"),
    (lambda: PowerSGD(1).compress("w", torch.ones(3, 3), lambda t: t, world_size=0), ValueError,
     "world_size must be an int >= 1"),
    (lambda: subspace_iteration_step(torch.ones(3, 3), torch.ones(3, 1), world_size=2), ValueError,
     "without allreduce"),
    (lambda: should_compress((8, 8), 0), ValueError, "rank must be an int >= 1"),
    (lambda: should_compress((8, 8), -3), ValueError, "rank must be an int >= 1"),
    (lambda: should_compress((8, 8), 1, -1.0), ValueError, "min_compression_rate"),
    (lambda: payload_bytes([(3, 3)], "powersgd", min_compression_rate=-2), ValueError, "min_compression_rate"),
    (lambda: payload_bytes([(3, 3)], "allreduce", element_size=0), ValueError, "element_size must be"),
    (lambda: payload_bytes([(3, 3)], "gzip"), ValueError, "scheme must be"),
    (lambda: payload_bytes([(3, 3)], "topk", ratio=0), ValueError, "ratio must be in"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_float_gradients_are_not_blamed_on_half_precision(dtype):
    """Only float16/bfloat16 lack the QR kernels; an int64 gradient is not a half-precision problem."""
    with pytest.raises(TypeError, match=f"got {dtype}; PowerSGD compresses real floating-point") as info:
        PowerSGD(2).compress("g", torch.zeros(3, 3, dtype=dtype))
    assert "half-precision" not in str(info.value)
    for half in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match="no half-precision kernels"):
            PowerSGD(2).compress("g", torch.zeros(3, 3, dtype=half))


def test_payload_bytes_default_rate_is_torchs():
    """The default min_compression_rate is 2, as in PowerSGDState and torch: a 3 x 3 matrix at
    rank 4 is sent dense (36 bytes), not as factors larger than itself."""
    assert payload_bytes([(3, 3)], "powersgd", rank=4) == 36 == payload_bytes([(3, 3)], "allreduce")
    n, m, r = 10, 256, 8
    assert not _should_compress(n, m, r, 2)[0] and payload_bytes([(n, m)], "powersgd", rank=r) == 4 * n * m


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


def test_key_reused_with_another_shape():
    comp = PowerSGD(1)
    comp.compress("w", randn(4, 4))
    with pytest.raises(ValueError, match="one key per tensor"):
        comp.compress("w", randn(5, 4))


@cuda
def test_compressor_on_cuda():
    M = low_rank_plus_noise(30, 20, 2, noise=0.05).cuda()
    comp = PowerSGD(2, error_feedback=False)
    for _ in range(20):
        approx = comp.compress("w", M)
    assert approx.is_cuda
    best = torch.linalg.matrix_norm(M - best_rank_r(M, 2)).item()
    assert torch.linalg.matrix_norm(M - approx).item() == pytest.approx(best, rel=1e-3)


@CUDA
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparsifiers_on_cuda(dtype):
    x = torch.randn(1000, device="cuda", dtype=dtype)
    ef = compress.ErrorFeedback(lambda a: compress.topk(a, 10))
    sent = ef(x).to_dense()
    assert torch.equal(sent + ef.residual, x)
    gg = torch.Generator(device="cuda").manual_seed(0)
    assert compress.randk(x, 5, generator=gg).values.device.type == "cuda"
