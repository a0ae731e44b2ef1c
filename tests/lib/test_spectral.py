"""gradlab.spectral against torch.linalg / numpy / scipy references on random inputs."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradlab import spectral as sp

DTYPES = [torch.float32, torch.float64]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def with_spectrum(m, n, s, seed=0, dtype=torch.float64):
    """A matrix m x n with the given singular values (len(s) = min(m, n))."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(m, len(s), generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64)).Q
    return ((U * torch.as_tensor(s, dtype=torch.float64)) @ V.T).to(dtype)


# --------------------------------------------------------------------------- power iteration

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(40, 25), (25, 40), (30, 30)])
def test_power_iteration_converges_to_top_triplet(dtype, shape):
    m, n = shape
    s = torch.linspace(3.0, 0.1, min(m, n))  # sigma_2 / sigma_1 = 0.97: a small gap
    s[0] = 5.0
    A = with_spectrum(m, n, s, seed=1, dtype=dtype)
    sigma, u, v = sp.power_iteration(A, num_iters=60, generator=torch.Generator().manual_seed(0))
    U, S, Vh = torch.linalg.svd(A)
    ref = float(np.linalg.svd(A.double().numpy(), compute_uv=False)[0])
    assert sigma.dtype == dtype and u.shape == (m,) and v.shape == (n,)
    assert math.isclose(sigma.item(), ref, rel_tol=1e-5 if dtype == torch.float32 else 1e-12)
    # singular vectors agree up to sign
    assert abs(abs(torch.dot(u, U[:, 0]).item()) - 1) < 1e-5
    assert abs(abs(torch.dot(v, Vh[0]).item()) - 1) < 1e-5
    torch.testing.assert_close(A @ v, sigma * u, **TOL[dtype])


def test_power_iteration_warm_start_and_lower_bound():
    A = randn(60, 50, seed=2)
    exact = torch.linalg.matrix_norm(A, 2).item()
    g = torch.Generator().manual_seed(0)
    est_cold, _, v = sp.power_iteration(A, num_iters=5, generator=g)
    # five more iterations from the returned vector = ten from the start
    est_warm, _, _ = sp.power_iteration(A, v, num_iters=5)
    est_ten, _, _ = sp.power_iteration(A, num_iters=10, generator=torch.Generator().manual_seed(0))
    assert math.isclose(est_warm.item(), est_ten.item(), rel_tol=1e-12)
    assert est_cold.item() <= est_warm.item() <= exact * (1 + 1e-12)
    assert exact - est_warm.item() < exact - est_cold.item()


class _CountProducts(torch.overrides.TorchFunctionMode):
    """Counts matrix products (``@``, ``torch.matmul``, ``mv``, ``mm``) while active."""

    NAMES = {"__matmul__", "__rmatmul__", "matmul", "mv", "mm", "bmm"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.NAMES:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("num_iters", [1, 3])
def test_power_iteration_costs_two_products_per_iteration(num_iters):
    """sigma is ||A^T u|| from the products already made, not a third product u^T A v."""
    A = randn(30, 20, seed=2)
    v0 = randn(20, seed=3)
    with _CountProducts() as counter:
        sigma, u, v = sp.power_iteration(A, v0, num_iters=num_iters)
    assert counter.count == 2 * num_iters
    # and the cheap estimate is the Rayleigh-type quotient u^T A v of the returned pair
    assert math.isclose(sigma.item(), (u @ A @ v).item(), rel_tol=1e-12)


def test_power_iteration_matches_torch_spectral_norm_step():
    """One iteration from the same u, v as torch's _SpectralNorm gives the same vectors."""
    torch.manual_seed(0)
    lin = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(12, 7))
    par = lin.parametrizations.weight[0]
    W = lin.parametrizations.weight.original.detach()
    v0 = par._v.clone()
    lin.weight  # noqa: B018  (a training-mode access runs one power iteration)
    sigma, u, v = sp.power_iteration(W, v0, num_iters=1)
    torch.testing.assert_close(u, par._u, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(v, par._v, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(W / sigma, lin.weight.detach(), rtol=1e-5, atol=1e-7)


def test_power_iteration_batched():
    A = randn(4, 3, 20, 15, seed=3)
    sigma, u, v = sp.power_iteration(A, num_iters=300, generator=torch.Generator().manual_seed(1))
    assert sigma.shape == (4, 3) and u.shape == (4, 3, 20) and v.shape == (4, 3, 15)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(A, 2), rtol=1e-8, atol=0)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 12), seed=st.integers(0, 2**16), iters=st.integers(1, 5))
def test_power_iteration_never_overestimates(m, n, seed, iters):
    A = randn(m, n, seed=seed)
    sigma, u, v = sp.power_iteration(A, num_iters=iters, generator=torch.Generator().manual_seed(seed))
    assert sigma.item() <= torch.linalg.matrix_norm(A, 2).item() * (1 + 1e-12) + 1e-12
    assert math.isclose(u.norm().item(), 1.0, rel_tol=1e-12) and math.isclose(v.norm().item(), 1.0, rel_tol=1e-12)


def test_power_iteration_bad_inputs():
    A = randn(5, 4)
    with pytest.raises(ValueError, match="must be a matrix"):
        sp.power_iteration(torch.ones(5))
    with pytest.raises(ValueError, match=r"v must be a tensor of shape \[\.\.\., 4\]"):
        sp.power_iteration(A, torch.ones(5))
    with pytest.raises(ValueError, match="num_iters must be an int >= 1"):
        sp.power_iteration(A, num_iters=0)
    with pytest.raises(TypeError, match="float32 or float64"):
        sp.power_iteration(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        sp.power_iteration(np.ones((3, 3)))
    with pytest.raises(ValueError, match="must not be empty"):
        sp.power_iteration(torch.ones(0, 3))


# --------------------------------------------------------------------------- randomized SVD

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(80, 50), (50, 80)])
def test_randomized_svd_exact_on_low_rank(dtype, shape):
    """A rank-r matrix is recovered exactly: values, subspaces, reconstruction."""
    m, n = shape
    g = torch.Generator().manual_seed(4)
    A = torch.randn(m, 6, generator=g, dtype=torch.float64) @ torch.randn(6, n, generator=g, dtype=torch.float64)
    A = A.to(dtype)
    U, S, Vh = sp.randomized_svd(A, 6, oversample=4, power_iters=1, generator=g)
    assert U.shape == (m, 6) and S.shape == (6,) and Vh.shape == (6, n) and S.dtype == dtype
    S_np = np.linalg.svd(A.double().numpy(), compute_uv=False)[:6]
    np.testing.assert_allclose(S.double().numpy(), S_np, rtol=1e-4 if dtype == torch.float32 else 1e-10)
    Ur, _, Vhr = torch.linalg.svd(A.double(), full_matrices=False)
    tol = 1e-3 if dtype == torch.float32 else 1e-8
    assert sp.subspace_angles(U.double(), Ur[:, :6]).max() < tol
    assert sp.subspace_angles(Vh.double().T, Vhr[:6].T).max() < tol
    rec_tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(U @ torch.diag(S) @ Vh, A, **rec_tol)
    torch.testing.assert_close(U.mT @ U, torch.eye(6, dtype=dtype), **TOL[dtype])


def test_randomized_svd_against_eckart_young_and_halko_over_seeds():
    """Slowly decaying spectrum (sigma_i = 1/i), rank 10, p = 5, eight seeds per q.
    No seed beats the Eckart-Young-Mirsky optimum sigma_11, none exceeds the
    Halko bound; q = 0 is clearly suboptimal here, and each power iteration
    brings the worst seed closer to the optimum."""
    m, n, k, p = 120, 90, 10, 5
    s = 1.0 / torch.arange(1, n + 1, dtype=torch.float64)
    A = with_spectrum(m, n, s, seed=5)
    optimum = s[k].item()  # the best rank-k spectral error is sigma_{k+1}
    ratios = {}
    for q in (0, 1, 2, 3):
        errors = []
        for seed in range(8):
            U, S, Vh = sp.randomized_svd(A, k, oversample=p, power_iters=q,
                                         generator=torch.Generator().manual_seed(seed))
            errors.append(torch.linalg.matrix_norm(A - U @ torch.diag(S) @ Vh, 2).item())
        assert min(errors) >= optimum * (1 - 1e-9)  # nobody beats Eckart-Young-Mirsky
        assert max(errors) <= sp.halko_bound(s, k, p, q)
        ratios[q] = np.array(errors) / optimum
    assert ratios[0].min() > 1.2  # without power iterations this spectrum is hard
    assert ratios[1].max() < 1.3 and ratios[2].max() < 1.05 and ratios[3].max() < 1.01
    means = [ratios[q].mean() for q in range(4)]
    assert all(a > b for a, b in zip(means, means[1:]))


def test_power_iterations_help_and_match_svd_lowrank():
    A = with_spectrum(150, 100, 1.0 / torch.arange(1, 101, dtype=torch.float64) ** 0.5, seed=6)
    k, opt = 8, (1.0 / 9**0.5)

    def err(U, S, Vh):
        return torch.linalg.matrix_norm(A - U @ torch.diag(S) @ Vh, 2).item() / opt

    ours = [np.mean([err(*sp.randomized_svd(A, k, oversample=6, power_iters=q,
                                            generator=torch.Generator().manual_seed(s))) for s in range(5)])
            for q in (0, 2)]
    assert ours[1] < ours[0]
    torch.manual_seed(0)
    errs_torch = []
    for _ in range(5):
        U, S, V = torch.svd_lowrank(A, q=k + 6, niter=2)  # returns V, not Vh
        errs_torch.append(err(U[:, :k], S[:k], V[:, :k].T))
    assert ours[1] < 1.5 * np.mean(errs_torch) and np.mean(errs_torch) < 1.5 * ours[1]


def test_randomized_svd_batched_and_reproducible():
    A = with_spectrum(30, 20, torch.logspace(0, -4, 20), seed=7).expand(3, 30, 20).clone()
    A[1] *= 2
    U, S, Vh = sp.randomized_svd(A, 4, generator=torch.Generator().manual_seed(0))
    assert U.shape == (3, 30, 4) and S.shape == (3, 4) and Vh.shape == (3, 4, 20)
    torch.testing.assert_close(S, torch.linalg.svdvals(A)[:, :4], rtol=1e-8, atol=0)
    again = sp.randomized_svd(A, 4, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((U, S, Vh), again))


def test_randomized_svd_full_rank_request():
    A = randn(12, 7, seed=8)
    U, S, Vh = sp.randomized_svd(A, 7, oversample=10, power_iters=0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(U @ torch.diag(S) @ Vh, A)


def test_randomized_svd_bad_inputs():
    A = randn(10, 6)
    with pytest.raises(ValueError, match=r"rank must be <= min\(m, n\) = 6"):
        sp.randomized_svd(A, 7)
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        sp.randomized_svd(A, 0)
    with pytest.raises(TypeError, match="rank must be an int"):
        sp.randomized_svd(A, 2.0)
    with pytest.raises(ValueError, match="oversample must be an int >= 0"):
        sp.randomized_svd(A, 2, oversample=-1)
    with pytest.raises(ValueError, match="power_iters must be an int >= 0"):
        sp.randomized_svd(A, 2, power_iters=-2)
    with pytest.raises(ValueError, match="must be a matrix"):
        sp.randomized_svd(torch.ones(6), 1)
    with pytest.raises(TypeError, match=r"A\.float\(\)"):
        sp.randomized_svd(torch.ones(4, 4, dtype=torch.float16), 1)


def test_halko_bound_properties():
    """Properties of the bound, not its formula re-typed: it never undercuts the
    optimum sigma_{k+1}, shrinks with power iterations towards the optimum
    (untruncated) or twice it (truncated), grows with k + p and the matrix
    size, scales with A, and depends on the spectrum only through sigma_{k+1}."""
    s = 1.0 / torch.arange(1, 51, dtype=torch.float64)
    k, opt = 5, s[5].item()
    untrunc = [sp.halko_bound(s, k, 6, q, truncated=False) for q in range(6)]
    trunc = [sp.halko_bound(s, k, 6, q) for q in range(6)]
    assert all(a > b for a, b in zip(untrunc, untrunc[1:])) and all(b >= opt for b in untrunc)
    assert all(math.isclose(t - u, opt, rel_tol=1e-12) for t, u in zip(trunc, untrunc))
    assert sp.halko_bound(s, k, 6, 200, truncated=False) < 1.03 * opt
    assert sp.halko_bound(s, k, 6, 200) < 2.03 * opt
    assert sp.halko_bound(s, k, 4) < sp.halko_bound(s, k, 8)  # more columns, larger factor
    rescale = s[k].item() / s[k + 4].item()  # same p, larger k: compare the factors
    assert sp.halko_bound(s, k, 8) < sp.halko_bound(s, k + 4, 8) * rescale
    assert sp.halko_bound(s[:20], k, 6) / s[k].item() < sp.halko_bound(s, k, 6) / s[k].item()
    assert math.isclose(sp.halko_bound(3.0 * s, k, 6, 1), 3.0 * sp.halko_bound(s, k, 6, 1), rel_tol=1e-12)
    s2 = s.clone()
    s2[:k] *= 10.0  # the top k values do not enter
    assert sp.halko_bound(s2, k, 6, 1) == sp.halko_bound(s, k, 6, 1)


def test_halko_probability_and_small_oversampling():
    probs = [sp.halko_probability(p) for p in range(0, 12)]
    assert probs[0] == -math.inf and probs[1] < 0 and probs[2] < 0  # no guarantee at all
    assert 0.7 < probs[3] < 0.8 and probs[4] > 0.97 and probs[5] > 0.998
    assert all(a < b < 1 for a, b in zip(probs[1:], probs[2:]))
    s = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25, 0.125])
    for p in (0, 2, 3):
        with pytest.raises(ValueError, match="oversample must be >= 4 .* probability"):
            sp.halko_bound(s, 1, p)
    with pytest.raises(ValueError, match="oversample must be an int >= 0"):
        sp.halko_probability(-1)
    with pytest.raises(ValueError, match="rank must be < the number of singular values"):
        sp.halko_bound(s, 6, 4)


# --------------------------------------------------------------------------- spectral normalisation

def _pair(make, seed=0, **kw):
    torch.manual_seed(seed)
    base = make()
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(seed + 1)
    torch.nn.utils.parametrizations.spectral_norm(a, **kw)
    torch.manual_seed(seed + 1)
    sp.spectral_norm(b, **kw)
    return a, b


@pytest.mark.parametrize("make, x_shape", [
    (lambda: torch.nn.Linear(20, 10), (4, 20)),
    (lambda: torch.nn.Conv2d(3, 5, 3), (2, 3, 8, 8)),
    (lambda: torch.nn.ConvTranspose2d(4, 3, 3), (2, 4, 5, 5)),
])
def test_spectral_norm_matches_torch(make, x_shape):
    ref, ours = _pair(make, n_power_iterations=2)
    x = torch.randn(x_shape)
    for _step in range(3):  # training mode: the persistent vectors move each step
        y_ref, y = ref(x), ours(x)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
        y_ref.square().sum().backward()
        y.square().sum().backward()
        g_ref = ref.parametrizations.weight.original.grad
        g = ours.parametrizations.weight.original.grad
        torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-5)
    ref.eval()
    ours.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    assert set(ours.state_dict()) == set(ref.state_dict())


def test_spectral_norm_bounds_sigma_and_eval_freezes_vectors():
    torch.manual_seed(0)
    lin = sp.spectral_norm(torch.nn.Linear(30, 30), n_power_iterations=1)
    for _ in range(30):
        W = lin.weight
    assert abs(torch.linalg.matrix_norm(W.detach(), 2).item() - 1) < 1e-3
    lin.eval()
    v = lin.parametrizations.weight[0]._v.clone()
    lin.weight  # noqa: B018
    assert torch.equal(v, lin.parametrizations.weight[0]._v)


def test_spectral_norm_bad_inputs():
    with pytest.raises(ValueError, match="no parameter or buffer named 'kernel'"):
        sp.spectral_norm(torch.nn.Linear(3, 3), name="kernel")
    with pytest.raises(ValueError, match="n_power_iterations must be an int >= 1"):
        sp.spectral_norm(torch.nn.Linear(3, 3), n_power_iterations=0)
    with pytest.raises(IndexError, match="dim must be in"):
        sp.spectral_norm(torch.nn.Linear(3, 3), dim=2)


# --------------------------------------------------------------------------- Jacobians, radius

@pytest.mark.parametrize("dtype", DTYPES)
def test_jacobian_of_tanh_net_matches_layer_product(dtype):
    g = torch.Generator().manual_seed(9)
    Ws = [torch.randn(b, a, generator=g, dtype=dtype) / a**0.5 for a, b in [(6, 8), (8, 5)]]
    x = torch.randn(6, generator=g, dtype=dtype)

    def net(v):
        for W in Ws:
            v = torch.tanh(W @ v)
        return v

    h, J = x, torch.eye(6, dtype=dtype)
    for W in Ws:
        h = torch.tanh(W @ h)
        J = torch.diag(1 - h**2) @ W @ J
    torch.testing.assert_close(sp.jacobian(net, x), J, **TOL[dtype])
    np.testing.assert_allclose(sp.jacobian_singular_values(net, x).double().numpy(),
                               np.linalg.svd(J.double().numpy(), compute_uv=False),
                               rtol=1e-4 if dtype == torch.float32 else 1e-10)


def test_jacobian_singular_values_batched_module():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 4)).double()
    xs = torch.randn(3, 5, dtype=torch.float64)
    batched = sp.jacobian_singular_values(model, xs, batched=True)
    assert batched.shape == (3, 4)
    for i in range(3):
        torch.testing.assert_close(batched[i], sp.jacobian_singular_values(model, xs[i]))
    with pytest.raises(ValueError, match="batched=True"):
        sp.jacobian_singular_values(model, xs[0], batched=True)
    with pytest.raises(TypeError, match="floating-point"):
        sp.jacobian(model, torch.ones(5, dtype=torch.long))


def test_spectral_radius_against_numpy():
    A = randn(5, 12, 12, seed=10)
    ref = np.abs(np.linalg.eigvals(A.numpy())).max(-1)
    np.testing.assert_allclose(sp.spectral_radius(A).numpy(), ref, rtol=1e-10)
    assert (sp.spectral_radius(A) <= torch.linalg.matrix_norm(A, 2) * (1 + 1e-12)).all()
    with pytest.raises(ValueError, match="square"):
        sp.spectral_radius(randn(3, 4))


# --------------------------------------------------------------------------- orthogonal init

@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (9, 4), (5, 2, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_orthogonal_matches_torch(shape, dtype):
    ours, ref = torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype)
    sp.orthogonal_(ours, gain=1.5, generator=torch.Generator().manual_seed(11))
    torch.nn.init.orthogonal_(ref, gain=1.5, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, ref, **TOL[dtype])
    S = torch.linalg.svdvals(ours.reshape(shape[0], -1))
    torch.testing.assert_close(S, torch.full_like(S, 1.5), **TOL[dtype])


def test_init_orthogonal_model_and_bad_inputs():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    sp.init_orthogonal_(model, gain=2.0, generator=torch.Generator().manual_seed(0))
    for layer in (model[0], model[2]):
        S = torch.linalg.svdvals(layer.weight.detach())
        torch.testing.assert_close(S, torch.full_like(S, 2.0))
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    with pytest.raises(ValueError, match="no nn.Linear"):
        sp.init_orthogonal_(torch.nn.Tanh())
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        sp.orthogonal_(torch.empty(4))
    with pytest.raises(ValueError, match="gain must be a finite number > 0"):
        sp.orthogonal_(torch.empty(3, 3), gain=-1.0)


# --------------------------------------------------------------------------- low-rank structure

def test_energy_fraction_against_numpy_and_eckart_young():
    A = randn(20, 15, seed=12)
    s = np.linalg.svd(A.numpy(), compute_uv=False)
    np.testing.assert_allclose(sp.energy_fraction(A).numpy(), np.cumsum(s**2) / np.sum(s**2), rtol=1e-12)
    k = 4
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    best = (U[:, :k] * S[:k]) @ Vh[:k]
    rel_err_sq = (torch.linalg.matrix_norm(A - best) / torch.linalg.matrix_norm(A)).item() ** 2
    assert math.isclose(1 - sp.energy_fraction(A, k).item(), rel_err_sq, rel_tol=1e-10)
    assert sp.energy_fraction(torch.tensor([3.0, 4.0]), 1).item() == pytest.approx(9 / 25)
    with pytest.raises(ValueError, match="k must be <= 15"):
        sp.energy_fraction(A, 16)
    with pytest.raises(ValueError, match="the matrix is zero"):
        sp.energy_fraction(torch.zeros(3, 3))


@pytest.mark.parametrize("k, l", [(3, 5), (5, 3), (4, 4)])
def test_subspace_angles_against_scipy(k, l):
    A, B = randn(30, k, seed=13), randn(30, l, seed=14)
    np.testing.assert_allclose(sp.subspace_angles(A, B).numpy(), scipy.linalg.subspace_angles(A.numpy(), B.numpy()),
                               rtol=1e-10, atol=1e-12)
    tiny = A + 1e-10 * randn(30, k, seed=15)  # nearly equal subspaces: the sine formula matters
    np.testing.assert_allclose(sp.subspace_angles(A, tiny).numpy(),
                               scipy.linalg.subspace_angles(A.numpy(), tiny.numpy()), rtol=1e-4)
    with pytest.raises(ValueError, match="same number of rows"):
        sp.subspace_angles(A, randn(29, 2))


def _rank_deficient(m, cols, rank, seed):
    return randn(m, rank, seed=seed) @ randn(rank, cols, seed=seed + 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", [((1, 3), (2, 2)), ((2, 4), (3, 3)), ((1, 3), (1, 2)), ((4, 4), (2, 5))])
def test_subspace_angles_rank_deficient_against_scipy(dtype, shapes):
    """A column space counts by its rank, not its number of columns (scipy uses orth)."""
    (ra, ca), (rb, cb) = shapes
    A = _rank_deficient(20, ca, ra, seed=20).to(dtype)
    B = _rank_deficient(20, cb, rb, seed=30).to(dtype)
    ref = scipy.linalg.subspace_angles(A.numpy(), B.numpy())
    ours = sp.subspace_angles(A, B)
    assert ours.shape == (min(ra, rb),) == ref.shape
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.numpy(), ref, **tol)


def test_subspace_angles_repeated_column_and_bad_inputs():
    A = randn(15, 2, seed=40)
    dup = torch.cat([A, A[:, :1], 2 * A[:, 1:]], 1)  # 4 columns, the same plane
    assert sp.subspace_angles(dup, A).shape == (2,)
    assert sp.subspace_angles(dup, A).max() < 1e-7
    with pytest.raises(ValueError, match="rank 0"):
        sp.subspace_angles(torch.zeros(15, 2, dtype=torch.float64), A)
    with pytest.raises(ValueError, match="no batches"):
        sp.subspace_angles(randn(2, 15, 2), A)


# --------------------------------------------------------------------------- subspace classifier

def _numpy_subspace_predict(x_tr, y_tr, x_te, rank):
    residuals = []
    classes = np.unique(y_tr)
    for c in classes:
        _, _, vt = np.linalg.svd(x_tr[y_tr == c], full_matrices=False)
        V = vt[:rank].T
        residuals.append(np.linalg.norm(x_te - x_te @ V @ V.T, axis=1))
    return classes[np.argmin(np.stack(residuals, 1), 1)], np.stack(residuals, 1)


@pytest.mark.parametrize("rank", [1, 3])
def test_subspace_classifier_matches_numpy(rank):
    g = torch.Generator().manual_seed(16)
    centers = 3 * torch.randn(4, 10, generator=g, dtype=torch.float64)
    y = torch.arange(200) % 4
    x = centers[y] + torch.randn(200, 10, generator=g, dtype=torch.float64)
    clf = sp.SubspaceClassifier(rank).fit(x[:150], y[:150])
    pred_np, res_np = _numpy_subspace_predict(x[:150].numpy(), y[:150].numpy(), x[150:].numpy(), rank)
    np.testing.assert_allclose(clf.residuals(x[150:]).numpy(), res_np, rtol=1e-8, atol=1e-10)
    assert np.array_equal(clf.predict(x[150:]).numpy(), pred_np)
    assert clf.score(x[150:], y[150:]) > 0.9


def test_subspace_classifier_bad_inputs():
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        sp.SubspaceClassifier(0)
    with pytest.raises(RuntimeError, match="call fit"):
        sp.SubspaceClassifier(1).predict(torch.ones(2, 3))
    with pytest.raises(ValueError, match="lower the rank"):
        sp.SubspaceClassifier(5).fit(torch.randn(6, 3), torch.tensor([0, 0, 0, 1, 1, 1]))
    clf = sp.SubspaceClassifier(1).fit(randn(6, 3), torch.tensor([0, 0, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"shape \[N, 3\].*reshape\(1, -1\)"):
        clf.predict(randn(4, 5))
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        clf.residuals(randn(3))
    with pytest.raises(TypeError, match=r"float32 .* fitted on torch.float64.*x.to\(dtype=torch.float64"):
        clf.predict(randn(4, 3, dtype=torch.float32))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        clf.residuals(np.ones((4, 3)))


# --------------------------------------------------------------------------- CUDA

@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype):
    A = with_spectrum(64, 48, torch.logspace(0, -3, 48), seed=17, dtype=dtype)
    Ac = A.cuda()
    sigma, u, v = sp.power_iteration(Ac, num_iters=100, generator=torch.Generator("cuda").manual_seed(0))
    assert sigma.device.type == "cuda"
    assert math.isclose(sigma.item(), torch.linalg.matrix_norm(A, 2).item(), rel_tol=1e-4)
    U, S, Vh = sp.randomized_svd(Ac, 5, generator=torch.Generator().manual_seed(0))  # CPU generator, CUDA matrix
    assert U.device.type == "cuda"
    torch.testing.assert_close(S.cpu(), torch.linalg.svdvals(A)[:5], rtol=1e-4, atol=1e-6)
    lin = sp.spectral_norm(torch.nn.Linear(8, 8).to(device="cuda", dtype=dtype))
    assert lin(torch.randn(2, 8, device="cuda", dtype=dtype)).device.type == "cuda"


# --------------------------------------------------------------------------- exercise checker

def test_check_top_singular_accepts_reference_and_diagnoses_slips():
    from gradlab.checks import check_top_singular

    assert check_top_singular(lambda W, v, n: sp.power_iteration(W, v, num_iters=n))

    def eigen_iteration(W, v, n):  # finds rho(W), not sigma_max
        for _ in range(n):
            v = W @ v / (W @ v).norm()
        return (W @ v).norm(), v, v

    result = check_top_singular(eigen_iteration)
    assert not result and "spectral radius" in result.message

    def squared(W, v, n):
        sigma, u, v = sp.power_iteration(W, v, num_iters=n)
        return sigma**2, u, v

    result = check_top_singular(squared)
    assert not result and "sigma_max^2" in result.message
    assert "not written yet" in check_top_singular(lambda W, v, n: (_ for _ in ()).throw(NotImplementedError)).message


# --------------------------------------------------------------------------- Hessian

def _mlp_loss(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(32, 5, generator=g, dtype=dtype)
    y = torch.randn(32, 1, generator=g, dtype=dtype)
    W1 = (torch.randn(5, 8, generator=g, dtype=dtype) * 0.7).requires_grad_()
    W2 = (torch.randn(8, 1, generator=g, dtype=dtype) * 0.7).requires_grad_()

    def loss_fn(a=W1, b=W2):
        return ((torch.tanh(X @ a) @ b - y) ** 2).mean()

    return loss_fn, [W1, W2]


def _dense_hessian(loss_fn, params):
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def flat_loss(theta):
        parts = torch.split(theta, sizes)
        return loss_fn(*[x.reshape(s) for x, s in zip(parts, shapes)])

    theta = torch.cat([p.detach().reshape(-1) for p in params])
    return torch.autograd.functional.hessian(flat_loss, theta)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hessian_eig_matches_dense_eigendecomposition(seed):
    loss_fn, params = _mlp_loss(seed)
    H = _dense_hessian(loss_fn, params)
    evals = torch.linalg.eigvalsh(H)
    top = evals[evals.abs().argmax()].item()
    res = sp.hessian_eig(loss_fn, params, num_iters=2000, tol=1e-12,
                         generator=torch.Generator().manual_seed(seed))
    assert res.converged
    assert res.eigenvalue == pytest.approx(top, rel=1e-6)
    v = torch.cat([x.reshape(-1) for x in res.vectors])
    assert torch.allclose(H @ v, top * v, atol=1e-4 * abs(top))
    assert all(p.grad is None for p in params)


def test_hessian_eig_negative_dominant_and_quadratic():
    # a quadratic 0.5 x^T A x has Hessian A everywhere: the dominant eigenvalue is -5
    A = torch.diag(torch.tensor([1.0, -5.0, 2.0], dtype=torch.float64))
    x = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    res = sp.hessian_eig(lambda: 0.5 * x @ A @ x, [x], num_iters=500, tol=1e-12,
                         generator=torch.Generator().manual_seed(0))
    assert res.eigenvalue == pytest.approx(-5.0, rel=1e-8)
    # a linear loss has a zero Hessian
    assert sp.hessian_eig(lambda: (x * 2).sum(), [x]).eigenvalue == 0.0


def test_hessian_eig_bad_input():
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="params must hold"):
        sp.hessian_eig(lambda: x.sum(), [])
    with pytest.raises(ValueError, match=r"params\[0\].*requires_grad"):
        sp.hessian_eig(lambda: x.sum(), [torch.ones(3)])
    with pytest.raises(ValueError, match="scalar"):
        sp.hessian_eig(lambda: x * 2, [x])
    with pytest.raises(ValueError, match="num_iters must be an int >= 1"):
        sp.hessian_eig(lambda: (x ** 2).sum(), [x], num_iters=0)
    with pytest.raises(ValueError, match="tol must be > 0"):
        sp.hessian_eig(lambda: (x ** 2).sum(), [x], tol=0.0)
