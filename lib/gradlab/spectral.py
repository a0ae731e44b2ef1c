r"""The spectral view: singular values of weights and Jacobians.

The singular value decomposition of an ``m x n`` matrix is

.. math:: A = U \Sigma V^\top, \qquad U^\top U = I,\ V^\top V = I,\
          \Sigma = \operatorname{diag}(\sigma_1 \ge \sigma_2 \ge \dots \ge 0).

``torch.linalg.svd`` and ``numpy.linalg.svd`` return ``(U, S, Vh)`` with
``Vh = V^T``; ``torch.svd_lowrank`` (and the deprecated ``torch.svd``) return
``V`` itself. The functions here follow ``torch.linalg.svd``.

* :func:`orthonormalize`: orthonormal columns spanning a matrix's columns
  (reduced QR with a sign convention), the one orthonormaliser of the package;
* :func:`power_iteration`: the top singular triplet ``(sigma_1, u_1, v_1)``,
  warm-startable, the way spectral normalisation keeps a persistent vector
  (Miyato et al. 2018);
* :func:`randomized_svd`: a truncated SVD from a random sketch with
  oversampling and power (subspace) iterations (Halko, Martinsson & Tropp
  2011), and :func:`halko_bound`, the paper's high-probability error bound
  (:func:`halko_probability`, the probability with which it holds);
* :func:`spectral_norm`: a drop-in for
  ``torch.nn.utils.parametrizations.spectral_norm`` built on
  :func:`power_iteration`;
* :func:`jacobian`, :func:`jacobian_singular_values`: input-output Jacobian
  spectra with ``torch.func``; :func:`spectral_radius`;
* :func:`orthogonal_`, :func:`init_orthogonal_`: orthogonal initialisation
  (Saxe et al. 2014);
* :func:`energy_fraction`, :func:`subspace_angles`: how much of a matrix lies
  in its top singular directions, and how far apart two subspaces are;
* :class:`SubspaceClassifier`: one SVD basis per class, classify by the
  residual of the projection (the subspace method).

Neighbours: low-rank *compression* of gradients with the same orthonormaliser
(PowerSGD) is in :mod:`gradlab.compress`; the models whose weights and
Jacobians this module measures are in :mod:`gradlab.models`; the case study
(:mod:`gradlab.lm`) tracks ``sigma_max`` of its recurrent weight with
:func:`power_iteration`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from gradlab import _validate

__all__ = [
    "orthonormalize",
    "power_iteration",
    "randomized_svd",
    "halko_bound",
    "halko_probability",
    "spectral_norm",
    "SpectralNorm",
    "jacobian",
    "jacobian_singular_values",
    "spectral_radius",
    "HessianEig",
    "hessian_eig",
    "orthogonal_",
    "init_orthogonal_",
    "energy_fraction",
    "subspace_angles",
    "SubspaceClassifier",
]


def _check_matrix(A, name: str = "A") -> torch.Tensor:
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(A).__name__}; "
                        f"convert with torch.as_tensor({name})")
    if A.dim() < 2:
        raise ValueError(f"{name} must be a matrix (or a batch of matrices, shape [..., m, n]), "
                         f"got shape {tuple(A.shape)}; reshape it, e.g. {name}.reshape(len({name}), -1)")
    if A.dtype not in (torch.float32, torch.float64, torch.complex64, torch.complex128):
        raise TypeError(f"{name} must be float32 or float64 (or complex), got {A.dtype}; "
                        f"convert with {name}.float() or {name}.double()")
    if A.shape[-1] == 0 or A.shape[-2] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(A.shape)}")
    return A


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal numbers of ``like``'s dtype on ``like``'s device, drawn
    from ``generator`` (on whatever device the generator lives)."""
    if generator is None:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    out = torch.randn(shape, dtype=like.dtype, device=generator.device, generator=generator)
    return out.to(like.device)


def orthonormalize(P: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning the columns of ``P`` (shape ``[..., n, r]``,
    ``r <= n``): the ``Q`` of the reduced QR factorisation, with signs fixed so
    that ``R`` has a non-negative diagonal (the result then does not depend on
    the QR implementation). Used by :func:`randomized_svd` and by PowerSGD
    (:func:`gradlab.compress.subspace_iteration_step`)."""
    Q, R = torch.linalg.qr(P, mode="reduced")
    signs = torch.sgn(torch.diagonal(R, dim1=-2, dim2=-1))  # sign, or phase when complex
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return Q * signs.unsqueeze(-2)


# --------------------------------------------------------------------------- power iteration

def power_iteration(A: torch.Tensor, v: torch.Tensor | None = None, *, num_iters: int = 1,
                    eps: float = 1e-12, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The top singular triplet of ``A`` (shape ``[..., m, n]``) by power iteration.

    Each iteration does, as ``torch.nn.utils.parametrizations.spectral_norm`` does,

    .. math:: u \leftarrow \frac{A v}{\|A v\|}, \qquad
              v \leftarrow \frac{A^\top u}{\|A^\top u\|}, \qquad
              \hat\sigma = u^\top A v = \|A^\top u\| \le \sigma_{\max}(A).

    The estimate is read off as :math:`\|A^\top u\|` (the norm taken for the
    normalisation anyway; equal to :math:`u^\top A v` for the new ``v``), so
    an iteration costs two matrix-vector products, not three.

    The estimate approaches :math:`\sigma_1` from below; the angle between
    ``v`` and :math:`v_1` shrinks like :math:`(\sigma_2/\sigma_1)^{2t}` after
    ``t`` iterations. Pass the returned ``v`` back in as a warm start: when
    ``A`` changes slowly (a weight during training) one iteration per step
    keeps the estimate accurate (Miyato et al. 2018).

    Parameters
    ----------
    A:
        A matrix or a batch of matrices, float32/float64, any device.
    v:
        Starting right vector(s), shape ``[..., n]``; ``None`` draws a random
        one from ``generator``. It does not need to be normalised.
    num_iters:
        Number of iterations (>= 1).
    eps:
        Guard against division by zero in the normalisation (as in torch).

    Returns
    -------
    (sigma, u, v):
        ``sigma`` of shape ``[...]``, unit vectors ``u`` ``[..., m]`` and
        ``v`` ``[..., n]`` with ``A v ~ sigma u``.
    """
    A = _check_matrix(A)
    _validate.integer("num_iters", num_iters, 1)
    _validate.positive("eps", eps, hint="the guard against division by zero, 1e-12 as in torch")
    n = A.shape[-1]
    if v is None:
        v = _randn((*A.shape[:-2], n), A, generator)
    elif not isinstance(v, torch.Tensor) or v.shape[-1] != n:
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"v must be a tensor of shape [..., {n}] (n = A.shape[-1]), got {shape}")
    v = F.normalize(v.to(dtype=A.dtype, device=A.device), dim=-1, eps=eps)
    AH = A.mH
    with torch.no_grad():
        for _ in range(num_iters):
            u = F.normalize((A @ v.unsqueeze(-1)).squeeze(-1), dim=-1, eps=eps)
            w = (AH @ u.unsqueeze(-1)).squeeze(-1)
            # sigma = ||A^T u|| = u^T A v for v = A^T u / ||A^T u||: no third product
            sigma = torch.linalg.vector_norm(w, dim=-1)
            v = w / sigma.clamp_min(eps).unsqueeze(-1)  # = F.normalize(w, eps=eps)
    return sigma, u, v


# --------------------------------------------------------------------------- randomized SVD

def randomized_svd(A: torch.Tensor, rank: int, *, oversample: int = 10, power_iters: int = 2,
                   generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""A rank-``rank`` truncated SVD of ``A`` from a random sketch
    (Halko, Martinsson & Tropp 2011, Algorithms 4.4 and 5.1).

    With :math:`\ell = k + p` columns (``rank`` ``k``, ``oversample`` ``p``)
    and ``q = power_iters``:

    1. draw a Gaussian :math:`\Omega \in \mathbb{R}^{n\times\ell}` and set
       :math:`Q = \operatorname{orth}(A\Omega)`;
    2. ``q`` times: :math:`Q \leftarrow \operatorname{orth}(A\,\operatorname{orth}(A^\top Q))`
       (re-orthonormalising after every product keeps small singular values
       from being lost to rounding);
    3. :math:`B = Q^\top A` (``ell x n``), :math:`B = \tilde U \Sigma V^\top`,
       :math:`U = Q \tilde U`; keep the top ``k`` triplets.

    Power iterations sharpen the sketch: they act like a sketch of
    :math:`(AA^\top)^q A`, whose singular values :math:`\sigma_i^{2q+1}`
    decay faster. See :func:`halko_bound` for the error guarantee.

    Returns ``(U, S, Vh)`` shaped like ``torch.linalg.svd(A, full_matrices=False)``
    truncated to ``rank``: ``U`` ``[..., m, k]``, ``S`` ``[..., k]`` (descending),
    ``Vh`` ``[..., k, n]``, so ``A ~ U @ diag(S) @ Vh``. (``torch.svd_lowrank``
    returns ``V`` instead of ``Vh`` and uses ``q`` for ``k + p``.) Works on
    batches ``[..., m, n]`` and on any device; ``generator`` makes the sketch
    reproducible.
    """
    A = _check_matrix(A)
    m, n = A.shape[-2:]
    _validate.integer("rank", rank, 1)
    if rank > min(m, n):
        raise ValueError(f"rank must be <= min(m, n) = {min(m, n)} for A of shape {tuple(A.shape)}, "
                         f"got {rank}; use torch.linalg.svd for a full decomposition")
    _validate.integer("oversample", oversample, 0)
    _validate.integer("power_iters", power_iters, 0)
    ell = min(rank + oversample, min(m, n))
    omega = _randn((*A.shape[:-2], n, ell), A, generator)
    Q = orthonormalize(A @ omega)
    AH = A.mH
    for _ in range(power_iters):
        Z = orthonormalize(AH @ Q)
        Q = orthonormalize(A @ Z)
    B = Q.mH @ A
    Ub, S, Vh = torch.linalg.svd(B, full_matrices=False)
    U = Q @ Ub
    return U[..., :rank], S[..., :rank], Vh[..., :rank, :]


def halko_bound(singular_values: torch.Tensor, rank: int, oversample: int, power_iters: int = 0,
                *, truncated: bool = True) -> float:
    r"""Halko et al.'s (2011) high-probability bound on the spectral-norm error
    of :func:`randomized_svd`, given the full singular values of ``A``.

    The range finder's error satisfies, with probability at least
    :math:`1 - 6p^{-p}` (:func:`halko_probability`; their simplified tail
    bound, Section 1.5, for ``q = 0``; ``q`` power iterations take the
    ``(2q+1)``-th root, Section 4.5 and Corollary 10.10),

    .. math:: \|A - QQ^\top A\|_2 \le
              \big[1 + 11\sqrt{k+p}\,\sqrt{\min(m,n)}\big]^{1/(2q+1)}\,\sigma_{k+1}.

    The paper's tail bounds (Section 10.3) assume ``p >= 4``; below that the
    probability :math:`1 - 6p^{-p}` is negative (``p = 2``) or only 0.78
    (``p = 3``), so this function refuses ``oversample < 4``. At ``p = 4`` it
    is 0.977, at ``p = 5`` 0.998.

    Truncating to rank ``k`` (``truncated=True``) adds at most
    :math:`\sigma_{k+1}`: :math:`\|A - Q[B]_k\| \le \|A - QQ^\top A\| + \sigma_{k+1}(Q^\top A)`
    and :math:`\sigma_{k+1}(Q^\top A) \le \sigma_{k+1}(A)`. The optimum over all
    rank-``k`` matrices (Eckart-Young-Mirsky) is :math:`\sigma_{k+1}`.
    """
    S = torch.as_tensor(singular_values).detach().to(torch.float64).flatten().cpu()
    _validate.integer("rank", rank, 1)
    _validate.integer("oversample", oversample, 0)
    if oversample < 4:
        raise ValueError(f"oversample must be >= 4 for the Halko et al. tail bound, got {oversample}: it holds "
                         f"with probability 1 - 6 p^-p = {halko_probability(oversample):.3g}, which is no "
                         "guarantee (the paper assumes p >= 4); report the measured error instead")
    _validate.integer("power_iters", power_iters, 0)
    if rank >= S.numel():
        raise ValueError(f"rank must be < the number of singular values ({S.numel()}), got {rank}")
    s_next = float(S[rank])
    factor = (1.0 + 11.0 * math.sqrt(rank + oversample) * math.sqrt(S.numel())) ** (1.0 / (2 * power_iters + 1))
    return (factor + (1.0 if truncated else 0.0)) * s_next


def halko_probability(oversample: int) -> float:
    r"""The probability :math:`1 - 6p^{-p}` with which :func:`halko_bound` holds
    for oversampling ``p``. It is negative for ``p = 1, 2`` (no guarantee) and
    0.78 for ``p = 3``; ``p = 0`` gives ``-inf``."""
    _validate.integer("oversample", oversample, 0)
    if oversample == 0:
        return -math.inf
    return 1.0 - 6.0 * float(oversample) ** (-oversample)


# --------------------------------------------------------------------------- spectral normalisation

class SpectralNorm(nn.Module):
    r"""A parametrization ``W -> W / sigma_hat(W)`` with a persistent power
    iteration (Miyato et al. 2018), the same computation as torch's
    ``_SpectralNorm`` but built on :func:`power_iteration`.

    In training mode every forward pass does ``n_power_iterations`` steps
    from the stored ``_v`` (updated in place), then divides by
    :math:`\hat\sigma = u^\top W v`; in eval mode the stored vectors are used
    as they are. Gradients flow through :math:`\hat\sigma` (not through
    ``u``, ``v``), as in the paper.
    """

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0,
                 eps: float = 1e-12) -> None:
        super().__init__()
        ndim = weight.ndim
        if not -ndim <= dim < ndim:
            raise IndexError(f"dim must be in [-{ndim}, {ndim - 1}] for a weight with {ndim} "
                             f"dimensions, got {dim}")
        _validate.integer("n_power_iterations", n_power_iterations, 1)
        self.dim = dim % ndim
        self.eps = eps
        self.n_power_iterations = n_power_iterations
        if ndim > 1:
            mat = self._as_matrix(weight)
            # the same draws, in the same order, as torch's implementation
            u = mat.new_empty(mat.shape[0]).normal_(0, 1)
            v = mat.new_empty(mat.shape[1]).normal_(0, 1)
            self.register_buffer("_u", F.normalize(u, dim=0, eps=eps))
            self.register_buffer("_v", F.normalize(v, dim=0, eps=eps))
            self._power_method(mat, 15)

    def _as_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        if self.dim != 0:
            weight = weight.permute(self.dim, *(d for d in range(weight.dim()) if d != self.dim))
        return weight.flatten(1)

    @torch.no_grad()
    def _power_method(self, mat: torch.Tensor, iters: int) -> None:
        _, u, v = power_iteration(mat.detach(), self._v, num_iters=iters, eps=self.eps)
        self._u.copy_(u)
        self._v.copy_(v)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        mat = self._as_matrix(weight)
        if self.training:
            self._power_method(mat, self.n_power_iterations)
        u, v = self._u.clone(), self._v.clone()
        sigma = torch.vdot(u, torch.mv(mat, v))
        return weight / sigma

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value


def spectral_norm(module: nn.Module, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None) -> nn.Module:
    """Drop-in for ``torch.nn.utils.parametrizations.spectral_norm``: register a
    :class:`SpectralNorm` parametrization on ``module.<name>`` and return the
    module. ``dim`` defaults to 1 for transposed convolutions, else 0 (as in
    torch). The power-iteration vectors live in
    ``module.parametrizations.<name>[0]._u`` / ``._v``."""
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"module {module.__class__.__name__} has no parameter or buffer named {name!r}")
    if dim is None:
        transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        dim = 1 if isinstance(module, transposed) else 0
    parametrize.register_parametrization(module, name, SpectralNorm(weight, n_power_iterations, dim, eps))
    return module


# --------------------------------------------------------------------------- Jacobians

def jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    r"""The input-output Jacobian :math:`J = \partial f(x)/\partial x` as a
    matrix of shape ``[f(x).numel(), x.numel()]`` (rows: outputs), computed by
    ``torch.func.jacrev``. ``fn`` may be an ``nn.Module``; its parameters are
    treated as constants."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor (one input, not a batch)")
    J = torch.func.jacrev(fn)(x)
    return J.reshape(-1, x.numel())


def jacobian_singular_values(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                             *, batched: bool = False) -> torch.Tensor:
    """Singular values (descending) of the input-output Jacobian of ``fn`` at ``x``.

    With ``batched=True``, ``x`` has shape ``[B, *input_shape]``, ``fn`` maps one
    input (no batch dimension) and the result has shape ``[B, min(out, in)]``
    (``torch.func.vmap`` over ``torch.func.jacrev``).
    """
    if not batched:
        return torch.linalg.svdvals(jacobian(fn, x))
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError("with batched=True, x must have shape [B, *input_shape]")
    J = torch.func.vmap(torch.func.jacrev(fn))(x)
    return torch.linalg.svdvals(J.reshape(x.shape[0], -1, x[0].numel()))


def spectral_radius(A: torch.Tensor) -> torch.Tensor:
    r""":math:`\rho(A) = \max_i |\lambda_i(A)|` of a square matrix (or batch),
    as a real tensor. Always :math:`\rho(A) \le \sigma_{\max}(A)`, with equality
    for normal matrices."""
    A = _check_matrix(A)
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"the spectral radius needs a square matrix, got shape {tuple(A.shape)}")
    return torch.linalg.eigvals(A).abs().amax(-1)


# --------------------------------------------------------------------------- orthogonal init

class HessianEig(NamedTuple):
    """Result of :func:`hessian_eig`."""

    eigenvalue: float  # the eigenvalue of largest magnitude (signed); abs() is ||H||_2
    vectors: list[torch.Tensor]  # its unit eigenvector, one tensor per parameter
    iterations: int  # power iterations done
    converged: bool  # relative change of the eigenvalue below tol


def hessian_eig(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], *,
                num_iters: int = 100, tol: float = 1e-6,
                generator: torch.Generator | None = None) -> HessianEig:
    r"""The eigenvalue of largest magnitude of the Hessian of ``loss_fn()`` with
    respect to ``params``, by power iteration on Hessian-vector products.

    The Hessian :math:`H = \nabla^2 L(\theta)` is never formed: each iteration
    computes :math:`Hv = \nabla_\theta (\nabla_\theta L \cdot v)` by double
    backward (Pearlmutter 1994) on a graph built once, normalises it, and reads
    the eigenvalue as the Rayleigh quotient :math:`v^\top H v`. Since ``H`` is
    symmetric, ``abs(eigenvalue)`` is its spectral norm :math:`\lVert H\rVert_2`;
    where the curvature is positive (near a minimum) it is the sharpness
    :math:`\lambda_{\max}`. Convergence is geometric with ratio
    :math:`|\lambda_2/\lambda_1|`; iterations stop when the eigenvalue changes by
    less than ``tol`` (relative) or after ``num_iters``.

    ``loss_fn`` takes no argument and returns a scalar built from ``params``
    (tensors with ``requires_grad=True``); ``generator`` seeds the start vector.
    The parameters' ``.grad`` fields are not touched.
    """
    params = list(params)
    if not params:
        raise ValueError("params must hold at least one tensor; pass e.g. list(model.parameters())")
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor) or not p.is_floating_point() or not p.requires_grad:
            raise ValueError(f"params[{i}] must be a floating-point tensor with requires_grad=True")
    _validate.integer("num_iters", num_iters, 1)
    _validate.positive("tol", tol, hint="the relative change of the eigenvalue that ends the iteration")
    loss = loss_fn()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn() must return a scalar tensor (e.g. the mean loss of a batch)")
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [_randn(p.shape, p, generator) for p in params]
    norm = torch.sqrt(sum((x * x).sum() for x in v))
    v = [x / norm for x in v]
    if not any(g.requires_grad for g in grads):  # the gradient is constant: H = 0
        return HessianEig(0.0, v, 0, True)
    eig = math.nan
    converged = False
    iterations = 0
    while iterations < num_iters:
        iterations += 1
        dot = sum((g * x).sum() for g, x in zip(grads, v))
        Hv = torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)
        Hv = [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(Hv, params)]
        new = float(sum((h * x).sum() for h, x in zip(Hv, v)))
        norm = float(torch.sqrt(sum((h * h).sum() for h in Hv)))
        if norm == 0.0:
            eig, converged = 0.0, True
            break
        v = [h / norm for h in Hv]
        if abs(new - eig) <= tol * abs(new):
            eig, converged = new, True
            break
        eig = new
    return HessianEig(eig, v, iterations, converged)


def orthogonal_(tensor: torch.Tensor, gain: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Fill ``tensor`` (in place) with a uniformly (Haar) random matrix with
    orthonormal rows or columns, times ``gain``; same signature, draws and
    result as ``torch.nn.init.orthogonal_``.

    The QR factors of a Gaussian matrix give an orthogonal ``Q``, but
    LAPACK's sign convention biases it; multiplying each column by
    :math:`\operatorname{sign}(R_{ii})` makes it Haar distributed (Mezzadri 2007).
    All singular values of the result equal ``gain``, so a product of such
    layers neither grows nor shrinks any direction: the initialisation that
    makes deep linear networks learn in depth-independent time
    (Saxe et al. 2014). Tensors with more than 2 dimensions are flattened
    after the first.
    """
    if not isinstance(tensor, torch.Tensor) or tensor.ndim < 2:
        raise ValueError("orthogonal_ needs a tensor with at least 2 dimensions")
    _validate.positive("gain", gain, finite=True)
    if tensor.numel() == 0:
        return tensor
    rows = tensor.shape[0]
    cols = tensor.numel() // rows
    with torch.no_grad():
        flat = tensor.new_empty((rows, cols)).normal_(0, 1, generator=generator)
        if rows < cols:
            flat = flat.T
        q, r = torch.linalg.qr(flat)
        q = q * torch.diagonal(r).sign()
        if rows < cols:
            q = q.T
        tensor.view_as(q).copy_(q).mul_(gain)
    return tensor


def init_orthogonal_(model: nn.Module, gain: float = 1.0,
                     generator: torch.Generator | None = None) -> nn.Module:
    """Orthogonal init (:func:`orthogonal_`) of the weight of every ``nn.Linear``
    in ``model``, biases set to zero; returns the model."""
    found = False
    for module in model.modules():
        if isinstance(module, nn.Linear):
            found = True
            orthogonal_(module.weight, gain, generator)
            if module.bias is not None:
                with torch.no_grad():
                    module.bias.zero_()
    if not found:
        raise ValueError(f"{model.__class__.__name__} contains no nn.Linear layer to initialise")
    return model


# --------------------------------------------------------------------------- low-rank structure

def energy_fraction(A_or_S: torch.Tensor, k: int | None = None) -> torch.Tensor:
    r"""The fraction of :math:`\|A\|_F^2 = \sum_i \sigma_i^2` in the top ``k``
    singular values, :math:`\sum_{i\le k}\sigma_i^2 / \sum_i \sigma_i^2`.

    Pass a matrix (its singular values are computed) or a 1-D tensor of
    singular values. ``k=None`` returns the whole cumulative curve
    (entry ``i`` is the fraction in the top ``i+1``). By Eckart-Young,
    ``1 - energy_fraction(A, k)`` is the squared relative Frobenius error of
    the best rank-``k`` approximation.
    """
    if not isinstance(A_or_S, torch.Tensor):
        raise TypeError("pass a tensor: a matrix or a 1-D tensor of singular values")
    if A_or_S.dim() == 1:
        S = A_or_S.abs()
    else:
        S = torch.linalg.svdvals(_check_matrix(A_or_S, "A"))
    e = S.to(torch.float64) ** 2
    total = e.sum(-1, keepdim=True)
    if bool((total == 0).any()):
        raise ValueError("the matrix is zero: its energy fraction is undefined")
    curve = e.cumsum(-1) / total
    if k is None:
        return curve
    _validate.integer("k", k, 1)
    if k > S.shape[-1]:
        raise ValueError(f"k must be <= {S.shape[-1]} (the number of singular values), got {k}")
    return curve[..., k - 1]


def _orth(A: torch.Tensor, name: str) -> torch.Tensor:
    """An orthonormal basis of the column space of ``A``, by SVD with the rank
    tolerance of ``scipy.linalg.orth``: singular values above
    ``max(s) * eps * max(m, n)`` count (``eps`` of ``A``'s dtype)."""
    U, S, _ = torch.linalg.svd(A, full_matrices=False)
    eps = torch.finfo(S.dtype).eps
    tol = S.max() * eps * max(A.shape)
    rank = int((S > tol).sum())
    if rank == 0:
        raise ValueError(f"{name} is zero (rank 0): its column space is {{0}}, which makes no angle with "
                         "another subspace; pass a matrix with at least one nonzero column")
    return U[:, :rank]


def subspace_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    r"""Principal angles (radians, descending, like ``scipy.linalg.subspace_angles``)
    between the column spaces of ``A`` ``[m, k]`` and ``B`` ``[m, l]``.

    Each column space gets an orthonormal basis from the SVD, keeping only the
    singular values above a rank tolerance (as ``scipy.linalg.orth`` does), so
    a rank-deficient input counts by its rank, not by its number of columns:
    there are ``min(rank A, rank B)`` angles. The cosines are the singular
    values of :math:`Q_A^\top Q_B`; small angles are computed from the sines,
    :math:`\sigma(Q_B - Q_A Q_A^\top Q_B)`, which stay accurate where the
    arccos of a cosine near 1 does not (Knyazev & Argentati 2002, as scipy does).
    """
    A, B = _check_matrix(A), _check_matrix(B, "B")
    if A.dim() != 2 or B.dim() != 2:
        raise ValueError(f"A and B must be matrices [m, k] and [m, l] (no batches), got shapes "
                         f"{tuple(A.shape)} and {tuple(B.shape)}; loop over a batch")
    if A.shape[-2] != B.shape[-2]:
        raise ValueError(f"A and B must have the same number of rows, got {A.shape[-2]} and {B.shape[-2]}")
    QA, QB = _orth(A, "A"), _orth(B, "B")
    if QA.shape[-1] < QB.shape[-1]:
        QA, QB = QB, QA
    cos = torch.linalg.svdvals(QA.mH @ QB).clamp(max=1.0)
    sin = torch.linalg.svdvals(QB - QA @ (QA.mH @ QB)).clamp(max=1.0)
    # cos is descending (angles ascending); sin is descending (angles descending)
    small = torch.asin(sin)
    large = torch.acos(cos.flip(-1))
    return torch.where(sin ** 2 <= 0.5, small, large)


class SubspaceClassifier:
    r"""One linear subspace per class: classify by the smallest projection residual.

    ``fit`` takes, for each class ``c``, the ``rank`` leading right singular
    vectors :math:`V_c` of the (uncentred) data matrix :math:`X_c` of that
    class, the rank-``rank`` subspace that holds the most of its energy
    (Eckart-Young). ``predict`` assigns ``x`` to
    :math:`\arg\min_c \|x - V_c V_c^\top x\|`. This is the subspace method of
    pattern recognition (Watanabe's CLAFIC, see Oja 1983). One singular vector
    per class (``rank=1``) is a single "class feature vector"; more
    directions per class model the variation within a class.
    """

    def __init__(self, rank: int) -> None:
        self.rank = _validate.integer("rank", rank, 1)
        self.classes_: torch.Tensor | None = None
        self.bases_: torch.Tensor | None = None

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> SubspaceClassifier:
        """Fit on features ``x`` ``[N, d]`` and integer labels ``y`` ``[N]``."""
        x = _check_matrix(x, "x")
        if x.dim() != 2 or y.shape != (x.shape[0],):
            raise ValueError(f"x must be [N, d] and y [N], got {tuple(x.shape)} and {tuple(y.shape)}")
        classes = torch.unique(y)
        bases = []
        for c in classes:
            xc = x[y == c]
            if self.rank > min(xc.shape):
                raise ValueError(f"rank {self.rank} exceeds min(samples, features) = {min(xc.shape)} "
                                 f"for class {int(c)}; lower the rank")
            Vh = torch.linalg.svd(xc, full_matrices=False).Vh
            bases.append(Vh[: self.rank].mT)
        self.classes_, self.bases_ = classes, torch.stack(bases)  # [C, d, rank]
        return self

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C]``: the norm of ``x`` minus its projection on each class subspace."""
        if self.bases_ is None:
            raise RuntimeError("call fit(x, y) before predict or residuals")
        d = self.bases_.shape[1]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape [N, {d}], got {type(x).__name__}; "
                            "convert with torch.as_tensor(x)")
        if x.dim() != 2 or x.shape[1] != d:
            raise ValueError(f"x must have shape [N, {d}] (one row per sample, {d} features as in fit), "
                             f"got {tuple(x.shape)}; for one sample use x.reshape(1, -1)")
        if x.dtype != self.bases_.dtype or x.device != self.bases_.device:
            raise TypeError(f"x is {x.dtype} on {x.device} but the classifier was fitted on "
                            f"{self.bases_.dtype} on {self.bases_.device}; convert with "
                            f"x.to(dtype={self.bases_.dtype}, device='{self.bases_.device}')")
        coeff = torch.einsum("nd,cdr->ncr", x, self.bases_)
        proj_sq = (coeff ** 2).sum(-1)
        return ((x ** 2).sum(-1, keepdim=True) - proj_sq).clamp(min=0).sqrt()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The label of the nearest class subspace for each row of ``x``."""
        return self.classes_[self.residuals(x).argmin(-1)]

    def score(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy on ``(x, y)``."""
        return (self.predict(x) == y).double().mean().item()
