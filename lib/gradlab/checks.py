"""Auto-checks for the book's coding exercises.

Each ``check_*`` function takes the student's function (or answer), tests it
against a reference on several cases, and returns a :class:`CheckResult`. A
wrong answer raises nothing: the result's ``passed`` is False and its
``message`` says *what* is wrong and gives a hint, because a checker that only
says "wrong" teaches nothing. Chapters print ``result`` (its ``str`` is the
message).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["CheckResult", "check_global_grad_norm", "check_transient_growth",
           "check_jacobian_product", "check_clip_grad_norm", "check_subspace_iteration_step",
           "check_error_feedback", "check_top_singular", "check_soft_threshold",
           "check_adam_step", "check_warmup", "check_spike_guard", "check_payload_bytes",
           "check_unitwise_norm"]


@dataclass(frozen=True)
class CheckResult:
    """Outcome of a check: ``passed`` and a message for the student."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return ("PASSED: " if self.passed else "NOT YET: ") + self.message


def _as_float(value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"expected a single number, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach())
    return float(value)


def _call(fn: Callable, *args, where: str | None = None, convert: Callable | None = None,
          hints: tuple[tuple[str, str], ...] = ()):
    """Run the student's function on ``args``; return ``(value, None)``, or
    ``(None, CheckResult)`` saying what went wrong, so that a bug in the student's
    code reports instead of crashing the notebook.

    ``where`` names the case in the message ("on the case 'x'"; by default the
    arguments), ``convert`` is applied to the returned value (its failure is
    reported as an unexpected return value), and ``hints`` holds
    ``(substring, hint)`` pairs added when the exception's message contains the
    substring.
    """
    where = where or f"for the arguments {args}"
    try:
        value = fn(*args)
    except NotImplementedError:
        return None, CheckResult(False, "your function is not written yet (it raises NotImplementedError).")
    except Exception as exc:  # the student's code: report, don't crash the notebook
        hint = "".join(f" Hint: {h}" for key, h in hints if key in str(exc))
        return None, CheckResult(False, f"your function raised {type(exc).__name__}: {exc} {where}.{hint}")
    if convert is not None:
        try:
            value = convert(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            return None, CheckResult(False, f"your function returned {type(value).__name__} {where}, "
                                            f"which is not what was asked: {exc}.")
    return value, None


def _params_with_grads(shapes, scale: float, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.zeros(shape, requires_grad=True)
        p.grad = scale * torch.randn(shape, generator=g)
        params.append(p)
    return params


def check_global_grad_norm(fn: Callable) -> CheckResult:
    """Check a student's ``fn(parameters) -> float``: the global L2 norm of all
    gradients, ``sqrt(sum_p ||g_p||^2)``, skipping parameters without a gradient.

    The reference is ``torch.nn.utils.get_total_norm`` of the gradients cast to
    float64 (in float32 torch's own function returns ``inf`` for gradients of
    size 1e20, because it squares in the gradients' dtype).
    """
    cases = [
        ("three tensors", _params_with_grads([(3, 4), (5,), (2, 2, 2)], 1.0, 0)),
        ("large gradients (1e20)", _params_with_grads([(10,), (10,)], 1e20, 1)),
        ("one tensor", _params_with_grads([(7,)], 1.0, 2)),
    ]
    no_grad = torch.zeros(3, requires_grad=True)
    cases.append(("a parameter without .grad", _params_with_grads([(4,)], 1.0, 3) + [no_grad]))
    for label, params in cases:
        grads = [p.grad for p in params if p.grad is not None]
        expected = float(torch.nn.utils.get_total_norm([g.double() for g in grads], 2.0))
        got, err = _call(fn, list(params), where=f"on the case '{label}'", convert=_as_float,
                         hints=(("NoneType", "some parameters have p.grad = None; skip them."),))
        if err is not None:
            return err
        if math.isclose(got, expected, rel_tol=1e-4):
            continue
        per_tensor = [float(torch.linalg.vector_norm(g, dtype=torch.float64)) for g in grads]
        if not math.isfinite(got):
            hint = ("the result overflowed: squaring 1e20 in float32 gives inf. Square in "
                    "float64: torch.linalg.vector_norm(p.grad, dtype=torch.float64).")
        elif math.isclose(got, sum(per_tensor), rel_tol=1e-4):
            hint = "you added the per-tensor norms; add their squares and take one square root."
        elif math.isclose(got, expected**2, rel_tol=1e-4):
            hint = "you returned the squared norm; take the square root at the end."
        elif math.isclose(got, max(per_tensor), rel_tol=1e-4):
            hint = "you returned the largest per-tensor norm; the global norm combines all of them."
        else:
            hint = "compare with torch.nn.utils.get_total_norm([p.grad for p in params])."
        return CheckResult(False, f"on the case '{label}' you returned {got:.6g}, expected "
                                  f"{expected:.6g}: {hint}")
    return CheckResult(True, "your global gradient norm matches the float64 reference on all "
                             "cases, including gradients of 1e20 and parameters without .grad.")


def check_transient_growth(W, *, min_peak: float = 100.0, max_power: int = 200) -> CheckResult:
    """Check a matrix ``W`` whose spectral radius is below 1 but whose powers
    still grow: ``max_k ||W^k||_2 >= min_peak`` for some ``k <= max_power``,
    and ``||W^k||`` decays afterwards."""
    W = torch.as_tensor(W, dtype=torch.float64)
    if W.dim() != 2 or W.shape[0] != W.shape[1]:
        return CheckResult(False, f"W must be a square matrix, got shape {tuple(W.shape)}.")
    if not bool(torch.isfinite(W).all()):
        return CheckResult(False, "W contains NaN or inf.")
    rho = float(torch.linalg.eigvals(W).abs().max())
    if rho >= 1.0:
        return CheckResult(False, f"the spectral radius of W is {rho:.4g} >= 1, so its powers grow "
                                  "for ever; the exercise asks for rho < 1 (e.g. 0.9 on the diagonal).")
    norms = []
    P = torch.eye(W.shape[0], dtype=torch.float64)
    for _ in range(max_power):
        P = P @ W
        norms.append(float(torch.linalg.matrix_norm(P, 2)))
    peak, k = max(norms), norms.index(max(norms)) + 1
    if peak < min_peak:
        sigma = float(torch.linalg.matrix_norm(W, 2))
        return CheckResult(False, f"rho = {rho:.3g} < 1 as required, but max_k ||W^k|| = {peak:.3g} "
                                  f"(at k = {k}) < {min_peak:g}. sigma_max(W) = {sigma:.3g}. Hint: "
                                  "make W strongly non-normal, e.g. a large off-diagonal entry "
                                  "in an upper-triangular matrix.")
    return CheckResult(True, f"rho(W) = {rho:.3g} < 1, yet ||W^k|| peaks at {peak:.4g} for k = {k} "
                             f"before decaying to {norms[-1]:.3g} at k = {max_power}.")


def check_jacobian_product(fn: Callable) -> CheckResult:
    """Check ``fn(weights, x) -> Tensor``: the input-output Jacobian of the tanh
    network ``h_l = tanh(W_l h_{l-1})`` as the product of the layer Jacobians
    ``J_l = diag(1 - h_l**2) W_l`` (last layer on the left), compared with
    ``torch.func.jacrev`` of the network."""
    g = torch.Generator().manual_seed(7)
    dims = [5, 6, 4, 3]
    weights = [torch.randn(b, a, generator=g, dtype=torch.float64) / a**0.5
               for a, b in zip(dims[:-1], dims[1:])]
    x = torch.randn(dims[0], generator=g, dtype=torch.float64)

    def net(v):
        for W in weights:
            v = torch.tanh(W @ v)
        return v

    expected = torch.func.jacrev(net)(x)
    got, err = _call(fn, [W.clone() for W in weights], x.clone(), where="on a 3-layer tanh network",
                     convert=lambda out: torch.as_tensor(out, dtype=torch.float64))
    if err is not None:
        return err
    if got.shape != expected.shape:
        hint = ""
        if got.shape == expected.T.shape:
            hint = (" That is the transpose: multiply with the last layer on the left, "
                    "J = J_L ... J_2 J_1.")
        return CheckResult(False, f"the Jacobian should have shape {tuple(expected.shape)} "
                                  f"(outputs x inputs), got {tuple(got.shape)}.{hint}")
    if torch.allclose(got, expected, rtol=1e-6, atol=1e-9):
        return CheckResult(True, "your product of layer Jacobians equals torch.func.jacrev of the network.")
    # diagnose the usual slips
    acts, v = [], x
    for W in weights:
        v = torch.tanh(W @ v)
        acts.append(v)
    no_deriv = weights[2] @ weights[1] @ weights[0]
    if torch.allclose(got, no_deriv):
        return CheckResult(False, "you multiplied the weights only; each layer's Jacobian also has "
                                  "the factor diag(tanh'(z_l)) = diag(1 - h_l**2).")
    return CheckResult(False, "the values differ from torch.func.jacrev of the network (max abs "
                              f"error {float((got - expected).abs().max()):.3g}). Check the order of "
                              "the product (last layer on the left) and the derivative tanh' = 1 - tanh**2.")


def check_clip_grad_norm(fn: Callable) -> CheckResult:
    """Check ``fn(parameters, max_norm) -> total_norm``: clip all gradients together, in
    place, to a global L2 norm of at most ``max_norm``, returning the norm before
    clipping, compared with ``torch.nn.utils.clip_grad_norm_``."""
    import copy

    cases = [
        ("large gradients, max_norm=1", _params_with_grads([(4, 3), (5,), (2, 2)], 3.0, 10), 1.0),
        ("small gradients, max_norm=100 (nothing to clip)", _params_with_grads([(6,), (3, 3)], 0.1, 11), 100.0),
        ("one large and one tiny tensor", _params_with_grads([(8,)], 50.0, 12) +
         _params_with_grads([(8,)], 1e-3, 13), 2.0),
    ]
    for label, params, max_norm in cases:
        ref = copy.deepcopy(params)
        expected_total = float(torch.nn.utils.clip_grad_norm_(ref, max_norm))
        before = [p.grad.clone() for p in params]
        got_total, err = _call(fn, params, max_norm, where=f"on the case '{label}'", convert=_as_float)
        if err is not None:
            return err
        got = torch.cat([p.grad.flatten() for p in params])
        want = torch.cat([p.grad.flatten() for p in ref])
        unchanged = all(torch.equal(p.grad, b) for p, b in zip(params, before))
        if unchanged and not torch.allclose(want, got):
            return CheckResult(False, f"on the case '{label}' the gradients did not change: modify p.grad "
                                      "in place (p.grad.mul_(scale)) instead of returning new tensors.")
        if not math.isclose(got_total, expected_total, rel_tol=1e-4):
            after_norm = float(got.norm())
            hint = ("you returned the norm after clipping; return the norm before it."
                    if math.isclose(got_total, after_norm, rel_tol=1e-4)
                    else "the returned norm should be sqrt(sum over tensors of ||p.grad||^2).")
            return CheckResult(False, f"on the case '{label}' you returned {got_total:.6g}, expected "
                                      f"{expected_total:.6g}: {hint}")
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-7):
            per_tensor = torch.cat([g.flatten() * min(1.0, max_norm / (float(g.norm()) + 1e-6))
                                    for g in before])
            if torch.allclose(got, per_tensor, rtol=1e-4, atol=1e-7):
                hint = ("you clipped each tensor separately; scale all of them by one factor computed "
                        "from the global norm.")
            elif float(got.norm()) > float(torch.cat([b.flatten() for b in before]).norm()) * (1 + 1e-6):
                hint = "you enlarged small gradients; the scale factor is min(1, max_norm / norm)."
            else:
                hint = "the clipped gradients differ from torch.nn.utils.clip_grad_norm_'s."
            return CheckResult(False, f"on the case '{label}': {hint}")
    return CheckResult(True, "your clipping matches torch.nn.utils.clip_grad_norm_: same returned norm, "
                             "same clipped gradients, and small gradients left alone.")


def check_subspace_iteration_step(fn: Callable) -> CheckResult:
    """Check ``fn(M, Q) -> (P, Q_new)``: one PowerSGD subspace-iteration step on one worker,
    ``P = orth(M Q)`` (orthonormal columns) and ``Q_new = M^T P``, so that
    ``P @ Q_new.T`` is the projection of ``M`` on span(M Q). The reference is
    :func:`gradlab.compress.subspace_iteration_step`; signs and rotations of ``P`` are
    allowed, so only the product ``P Q_new^T`` and ``P^T P = I`` are compared."""
    from gradlab.compress import subspace_iteration_step

    g = torch.Generator().manual_seed(11)
    cases = [(torch.randn(12, 8, generator=g, dtype=torch.float64), 2),
             (torch.randn(6, 20, generator=g, dtype=torch.float64), 3),
             (torch.randn(9, 9, generator=g, dtype=torch.float64), 1)]
    for M, r in cases:
        Q0 = torch.randn(M.shape[1], r, generator=g, dtype=torch.float64)
        P_ref, Q_ref = subspace_iteration_step(M, Q0)
        expected = P_ref @ Q_ref.T
        label = f"M of shape {tuple(M.shape)}, rank {r}"
        out, err = _call(fn, M.clone(), Q0.clone(), where=f"on the case {label}")
        if err is not None:
            return err
        if not (isinstance(out, tuple) and len(out) == 2):
            return CheckResult(False, "return a pair (P, Q_new).")
        P, Q = (torch.as_tensor(t, dtype=torch.float64) for t in out)
        if P.shape != (M.shape[0], r) or Q.shape != (M.shape[1], r):
            return CheckResult(False, f"on the case {label}: P should be {M.shape[0]} x {r} and Q_new "
                                      f"{M.shape[1]} x {r}, got {tuple(P.shape)} and {tuple(Q.shape)}.")
        if not torch.allclose(P.T @ P, torch.eye(r, dtype=torch.float64), atol=1e-8):
            return CheckResult(False, f"on the case {label}: the columns of P are not orthonormal "
                                      "(P^T P != I). Orthogonalise M @ Q, e.g. with torch.linalg.qr(...).Q.")
        if torch.allclose(P @ Q.T, expected, atol=1e-8):
            continue
        if torch.allclose(P @ Q.T, 2 * expected, atol=1e-8):
            hint = "on one worker there is nothing to average: Q_new = M.T @ P, not 2 M.T @ P."
        else:
            hint = "compute P from M @ Q (orthonormalised), then Q_new = M.T @ P."
        return CheckResult(False, f"on the case {label}, P @ Q_new.T is not the projection of M on "
                                  f"span(M Q) (max error {float((P @ Q.T - expected).abs().max()):.3g}): {hint}")
    return CheckResult(True, "one subspace-iteration step: P has orthonormal columns and P @ Q_new.T = "
                             "P P^T M, as in gradlab.compress.subspace_iteration_step.")


def check_error_feedback(fn: Callable) -> CheckResult:
    """Check ``fn(grad, residual, k) -> (sent, new_residual)``: top-k of ``grad + residual``
    with error feedback (Stich et al. 2018), against a reference on random cases."""
    g = torch.Generator().manual_seed(0)
    cases = [("a vector, zero residual", torch.randn(20, generator=g), torch.zeros(20), 3),
             ("a vector with a residual", torch.randn(30, generator=g), torch.randn(30, generator=g), 5),
             ("a 4x6 matrix", torch.randn(4, 6, generator=g), 0.5 * torch.randn(4, 6, generator=g), 4),
             ("k equal to the size", torch.randn(5, generator=g), torch.randn(5, generator=g), 5)]
    for label, grad, residual, k in cases:
        acc = grad + residual
        keep = torch.zeros(acc.numel(), dtype=torch.bool)
        keep[torch.topk(acc.abs().flatten(), k).indices] = True
        want_sent = torch.where(keep.view(acc.shape), acc, torch.zeros_like(acc))
        out, err = _call(fn, grad.clone(), residual.clone(), k, where=f"on the case '{label}'")
        if err is not None:
            return err
        if not (isinstance(out, tuple) and len(out) == 2):
            return CheckResult(False, "return a pair (sent, new_residual) of dense tensors.")
        sent, new_res = (torch.as_tensor(t) for t in out)
        if sent.shape != grad.shape or new_res.shape != grad.shape:
            return CheckResult(False, f"on the case '{label}' the shapes are {tuple(sent.shape)} and "
                                      f"{tuple(new_res.shape)}; both must be {tuple(grad.shape)} (dense).")
        if not torch.allclose(sent + new_res, acc, atol=1e-6):
            return CheckResult(False, f"on the case '{label}' sent + new_residual != grad + residual: "
                                      "the residual must keep exactly what was not sent.")
        nnz = int((sent != 0).sum())
        if nnz != k:
            return CheckResult(False, f"on the case '{label}' you sent {nnz} non-zero entries, expected k = {k}.")
        if not torch.allclose(sent, want_sent, atol=1e-6):
            grad_top = torch.zeros(grad.numel(), dtype=torch.bool)
            grad_top[torch.topk(grad.abs().flatten(), k).indices] = True
            if torch.equal(sent.flatten() != 0, grad_top):
                hint = "you chose the entries from grad alone; choose them from grad + residual."
            elif torch.equal(sent.flatten() != 0,
                             torch.zeros_like(keep).index_fill_(0, torch.topk(acc.flatten(), k).indices, True)):
                hint = "you chose the k largest values; choose the k largest magnitudes (abs)."
            else:
                hint = "sent must hold the k entries of grad + residual with the largest magnitude."
            return CheckResult(False, f"on the case '{label}': {hint}")
    return CheckResult(True, "top-k with error feedback: the k largest magnitudes of grad + residual are "
                             "sent and the rest is kept, as in gradlab.compress.ErrorFeedback.")


def check_top_singular(fn: Callable) -> CheckResult:
    """Check ``fn(W, v, num_iters) -> (sigma, u, v)``: power iteration for the largest
    singular value ``sigma_max(W)`` and unit singular vectors, started from ``v``.
    The reference is :func:`gradlab.spectral.power_iteration` and ``torch.linalg.svd``;
    a non-normal matrix tells ``sigma_max`` (iterate ``W^T W``) from the spectral
    radius (iterate ``W``)."""
    from gradlab.spectral import power_iteration

    g = torch.Generator().manual_seed(21)
    nonnormal = torch.tensor([[0.9, 5.0, 0.0], [0.0, 0.5, 5.0], [0.0, 0.0, 0.2]], dtype=torch.float64)
    cases = [("a non-normal 3 x 3 matrix (rho = 0.9, sigma_max about 5.3)", nonnormal, 100),
             ("a 20 x 12 matrix", torch.randn(20, 12, generator=g, dtype=torch.float64), 100),
             ("a 12 x 20 matrix", torch.randn(12, 20, generator=g, dtype=torch.float64), 100)]
    for label, W, iters in cases:
        v0 = torch.randn(W.shape[1], generator=g, dtype=torch.float64)
        exact = float(torch.linalg.matrix_norm(W, 2))
        ref_sigma, _, _ = power_iteration(W, v0, num_iters=iters)
        out, err = _call(fn, W.clone(), v0.clone(), iters, where=f"on the case {label}")
        if err is not None:
            return err
        if not (isinstance(out, tuple) and len(out) == 3):
            return CheckResult(False, "return a triple (sigma, u, v).")
        try:
            sigma = _as_float(out[0])
        except TypeError as exc:
            return CheckResult(False, f"sigma must be one number: {exc}.")
        u, v = (torch.as_tensor(t, dtype=torch.float64).flatten() for t in out[1:])
        if u.numel() != W.shape[0] or v.numel() != W.shape[1]:
            return CheckResult(False, f"on the case {label}: u should have {W.shape[0]} entries (rows of W) "
                                      f"and v {W.shape[1]} (columns), got {u.numel()} and {v.numel()}.")
        if not (math.isclose(float(u.norm()), 1.0, rel_tol=1e-6) and math.isclose(float(v.norm()), 1.0, rel_tol=1e-6)):
            return CheckResult(False, f"on the case {label}: u and v must be unit vectors (norms "
                                      f"{float(u.norm()):.4g} and {float(v.norm()):.4g}). Normalise after every "
                                      "product, or the iterates overflow or underflow.")
        if math.isclose(sigma, exact, rel_tol=1e-6) and math.isclose(sigma, float(ref_sigma), rel_tol=1e-6):
            if float((W @ v - sigma * u).norm()) > 1e-5 * exact:
                return CheckResult(False, f"on the case {label} sigma is right but W v != sigma u: return the "
                                          "left vector u = W v / ||W v|| that belongs to your v.")
            continue
        if W.shape[0] == W.shape[1]:
            rho = float(torch.linalg.eigvals(W).abs().max())
            if math.isclose(sigma, rho, rel_tol=1e-3):
                return CheckResult(False, f"on the case {label} you returned {sigma:.4g}, the spectral radius "
                                          f"rho(W), not sigma_max = {exact:.4g}: iterating v <- W v finds the "
                                          "largest eigenvalue. Alternate u <- W v, v <- W^T u.")
        if math.isclose(sigma, exact**2, rel_tol=1e-6):
            return CheckResult(False, f"on the case {label} you returned {sigma:.6g} = sigma_max^2, the top "
                                      "eigenvalue of W^T W; sigma_max is its square root, ||W v||.")
        return CheckResult(False, f"on the case {label} you returned sigma = {sigma:.6g}, expected "
                                  f"{exact:.6g} (torch.linalg.matrix_norm(W, 2)).")
    return CheckResult(True, "your power iteration finds sigma_max (not the spectral radius) and unit vectors "
                             "with W v = sigma u, like gradlab.spectral.power_iteration.")


def check_soft_threshold(fn: Callable) -> CheckResult:
    """Check ``fn(x, tau)``: the soft-threshold ``sign(x) * max(|x| - tau, 0)``, the proximal
    operator of ``tau * ||x||_1`` (one half of an ISTA step)."""
    g = torch.Generator().manual_seed(0)
    cases = [("random values, tau = 0.5", torch.randn(50, generator=g, dtype=torch.float64), 0.5),
             ("values exactly at +-tau", torch.tensor([-1.0, -0.3, 0.3, 1.0], dtype=torch.float64), 0.3),
             ("tau = 0 (no shrinkage)", torch.randn(3, 4, generator=g, dtype=torch.float64), 0.0),
             ("a large tau", torch.randn(20, generator=g, dtype=torch.float64), 10.0)]
    for label, x, tau in cases:
        want = torch.sign(x) * torch.clamp(x.abs() - tau, min=0)
        got, err = _call(fn, x.clone(), tau, where=f"on the case '{label}'",
                         convert=lambda out: torch.as_tensor(out, dtype=torch.float64))
        if err is not None:
            return err
        if got.shape != x.shape:
            return CheckResult(False, f"on the case '{label}' the result has shape {tuple(got.shape)}, "
                                      f"expected {tuple(x.shape)}: work elementwise.")
        if torch.allclose(got, want, atol=1e-12):
            continue
        if torch.allclose(got, torch.clamp(x.abs() - tau, min=0), atol=1e-12):
            hint = "the magnitudes are right but the signs are lost: multiply by sign(x)."
        elif torch.allclose(got, x * (x.abs() > tau), atol=1e-12):
            hint = ("that is hard thresholding (keep x where |x| > tau); soft thresholding also shrinks "
                    "the survivors towards 0 by tau.")
        elif torch.allclose(got, x - tau * torch.sign(x), atol=1e-12):
            hint = "entries with |x| <= tau must become exactly 0, not change sign."
        else:
            hint = "the result should be sign(x) * max(|x| - tau, 0)."
        return CheckResult(False, f"on the case '{label}': {hint}")
    return CheckResult(True, "soft-thresholding shrinks every entry by tau and sets |x| <= tau to exactly 0, "
                             "as gradlab.prune.soft_threshold does.")


def check_adam_step(fn: Callable) -> CheckResult:
    """Check ``fn(p, g, m, v, t, lr, beta1, beta2, eps) -> (p, m, v)``: one Adam step
    (Kingma & Ba 2015) at step number ``t`` (1-based), returning new tensors, against
    ``torch.optim.Adam`` run for several steps in float64."""
    g = torch.Generator().manual_seed(0)
    lr, beta1, beta2, eps = 0.01, 0.8, 0.99, 1e-8
    p_ref = torch.randn(5, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    opt = torch.optim.Adam([p_ref], lr=lr, betas=(beta1, beta2), eps=eps)
    p = p_ref.detach().clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t in range(1, 6):
        grad = torch.randn(5, 3, generator=g, dtype=torch.float64) * 10.0 ** (t - 3)
        p_ref.grad = grad.clone()
        opt.step()
        inputs = {"p": p, "g": grad, "m": m, "v": v}
        snapshot = {k: x.clone() for k, x in inputs.items()}
        out, err = _call(fn, p, grad, m, v, t, lr, beta1, beta2, eps, where=f"at step t = {t}")
        if err is not None:
            return err
        changed = [k for k, x in inputs.items() if not torch.equal(x, snapshot[k])]
        if changed:
            return CheckResult(False, f"at step t = {t} your function changed its input(s) "
                                      f"{', '.join(changed)} in place (e.g. with m.mul_(...) or m += ...); "
                                      "build new tensors instead, m = beta1 * m + (1 - beta1) * g, so that "
                                      "the caller's tensors stay as they were.")
        if not (isinstance(out, tuple) and len(out) == 3):
            return CheckResult(False, "return a tuple (p, m, v) of the updated tensors.")
        new_p, new_m, new_v = (torch.as_tensor(x, dtype=torch.float64) for x in out)
        st = opt.state[p_ref]
        if not torch.allclose(new_m, st["exp_avg"], rtol=1e-10, atol=1e-14):
            return CheckResult(False, f"at step t = {t} the first moment m is wrong: "
                                      "m = beta1 * m + (1 - beta1) * g.")
        if not torch.allclose(new_v, st["exp_avg_sq"], rtol=1e-10, atol=1e-14):
            return CheckResult(False, f"at step t = {t} the second moment v is wrong: "
                                      "v = beta2 * v + (1 - beta2) * g**2.")
        if not torch.allclose(new_p, p_ref.detach(), rtol=1e-10, atol=1e-12):
            m_hat, v_hat = new_m / (1 - beta1**t), new_v / (1 - beta2**t)
            no_bc = p - lr * new_m / (new_v.sqrt() + eps)
            if torch.allclose(new_p, no_bc, rtol=1e-10, atol=1e-12):
                hint = "the moments are right but the bias correction is missing: divide by 1 - beta**t."
            elif torch.allclose(new_p, p + lr * m_hat / (v_hat.sqrt() + eps), rtol=1e-10, atol=1e-12):
                hint = "the step goes uphill: subtract lr * m_hat / (sqrt(v_hat) + eps)."
            else:
                hint = "the update should be p - lr * m_hat / (sqrt(v_hat) + eps)."
            return CheckResult(False, f"at step t = {t} the parameters are wrong: {hint}")
        p, m, v = new_p, new_m, new_v
    return CheckResult(True, "five Adam steps, with gradients from 0.01 to 100, match torch.optim.Adam; "
                             "the tested version is gradlab.optim.Adam.")


def check_warmup(fn: Callable) -> CheckResult:
    """Check ``fn(step, warmup_steps) -> float``: the linear warm-up factor
    ``min(1, (step + 1) / warmup_steps)`` for 0-based steps (1 when
    ``warmup_steps == 0``), against ``torch.optim.lr_scheduler.LinearLR`` with
    ``start_factor = 1 / warmup_steps`` and ``total_iters = warmup_steps - 1``."""
    for w in (4, 10, 50):
        p = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([p], lr=1.0)
        sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / w, end_factor=1.0,
                                                  total_iters=w - 1)
        for step in range(2 * w + 3):
            ref = opt.param_groups[0]["lr"]
            got, err = _call(fn, step, w, where=f"at step {step} with warmup_steps = {w}", convert=_as_float)
            if err is not None:
                return err
            if not math.isclose(got, ref, rel_tol=1e-9, abs_tol=1e-12):
                if math.isclose(got, step / w, rel_tol=1e-9, abs_tol=1e-12):
                    hint = ("off by one: at step 0 the factor is step / warmup_steps = 0, so the first "
                            "update is wasted; use (step + 1) / warmup_steps.")
                elif step >= w and got > 1:
                    hint = "after the warm-up the factor must stay at 1: cap it with min(1, ...)."
                else:
                    hint = "the factor should grow linearly from 1 / warmup_steps to 1 and then stay at 1."
                return CheckResult(False, f"with warmup_steps = {w}, step {step}: got {got:.6g}, "
                                          f"expected {ref:.6g}; {hint}")
            opt.step()
            sched.step()
    got, err = _call(fn, 0, 0, where="with warmup_steps = 0", convert=_as_float)
    if err is not None:
        return err
    if not math.isclose(got, 1.0):
        return CheckResult(False, f"warmup_steps = 0 means no warm-up: the factor should be 1, got {got}.")
    return CheckResult(True, "your factors match torch.optim.lr_scheduler.LinearLR for 4, 10 and 50 "
                             "warm-up steps; the tested version is gradlab.lm.warmup_factor.")


def check_spike_guard(fn: Callable) -> CheckResult:
    """Check ``fn(history, norm, factor) -> bool``: skip the update when ``norm`` is
    not finite or exceeds ``factor`` times the median of the last 20 finite
    norms in ``history`` (never with an empty history), against
    :func:`gradlab.monitor.detect_spikes`."""
    from gradlab.monitor import detect_spikes

    g = torch.Generator().manual_seed(0)
    base = (1.0 + 0.2 * torch.randn(60, generator=g)).abs().tolist()
    cases = {
        "a smooth run": base,
        "a spike of 50x at step 30": base[:30] + [50.0] + base[31:],
        "two spikes in a row": base[:20] + [40.0, 45.0] + base[22:],
        "a NaN and an inf": base[:10] + [float("nan")] + base[11:40] + [float("inf")] + base[41:],
        "a slow rise by 3x": [b * (1 + 2 * i / 60) for i, b in enumerate(base)],
        "a spike in the first steps": [1.0, 30.0] + base[2:],
        "a spike, then a smaller one": base[:30] + [50.0] + base[31:35] + [12.0] + base[36:],
    }
    for factor in (10.0, 4.0):
        for label, values in cases.items():
            expected = set(detect_spikes(values, window=20, factor=factor))
            history: list[float] = []
            for i, v in enumerate(values):
                got, err = _call(fn, list(history), v, factor,
                                 where=f"in '{label}' (factor {factor}) at step {i}")
                if err is not None:
                    return err
                if not isinstance(got, (bool, int)) and not (isinstance(got, torch.Tensor) and got.numel() == 1):
                    return CheckResult(False, f"return True (skip) or False (keep), got {type(got).__name__}.")
                got = bool(got)
                if got != (i in expected):
                    if not math.isfinite(v):
                        hint = "a non-finite norm must always be skipped (and never enter the history)."
                    elif got and not history:
                        hint = "with an empty history there is nothing to compare with: keep the step."
                    elif got:
                        hint = ("compare with factor * median of the last 20 finite values in the history; "
                                "a spike must not be judged against itself.")
                    else:
                        hint = ("compare with the median of the last 20 finite values, not the mean: one "
                                "earlier spike must not hide the next.")
                    return CheckResult(False, f"in '{label}' (factor {factor}) at step {i} (norm {v:.3g}) "
                                              f"you said {'skip' if got else 'keep'}; {hint}")
                if math.isfinite(v):
                    history.append(v)
    return CheckResult(True, "your guard skips exactly the steps gradlab.monitor.detect_spikes flags, "
                             f"in {len(cases)} traces and at two factors.")


def check_payload_bytes(fn: Callable) -> CheckResult:
    """Check ``fn(n, m, scheme, rank, ratio) -> int``: the bytes one worker hands to
    the collective per step for one ``n x m`` float32 gradient, with ``scheme``
    ``"allreduce"`` (every entry), ``"topk"`` (``ceil(ratio * n * m)`` entries, a
    4-byte value and a 4-byte index each) or ``"powersgd"`` (``(n + m) r`` numbers
    when torch's rule ``(n + m) r * 2 < n m`` says the matrix is worth
    compressing, with ``r = min(n, m, rank)``; else every entry). The reference
    is :func:`gradlab.compress.payload_bytes` with ``min_compression_rate=2``."""
    from gradlab.compress import payload_bytes

    cases = [(4096, 16384, "allreduce", 4, 0.01), (4096, 16384, "powersgd", 4, 0.01),
             (4096, 16384, "topk", 4, 0.01), (256, 64, "powersgd", 4, 0.01),
             (7, 13, "topk", 1, 0.1), (10, 256, "powersgd", 8, 0.01), (3, 3, "powersgd", 4, 0.01)]
    for n, m, scheme, rank, ratio in cases:
        expected = payload_bytes([(n, m)], scheme, rank=rank, ratio=ratio, min_compression_rate=2)
        label = f"a {n} x {m} matrix, scheme {scheme!r}" + (
            f", rank {rank}" if scheme == "powersgd" else f", ratio {ratio}" if scheme == "topk" else "")
        got, err = _call(fn, n, m, scheme, rank, ratio, where=f"on the case {label}", convert=_as_float)
        if err is not None:
            return err
        if got == expected:
            continue
        r = min(n, m, rank)
        if got * 4 == expected:
            hint = "count bytes, not numbers: 4 bytes per float32 value."
        elif scheme == "topk" and got * 2 == expected:
            hint = "each kept entry sends its value and its index: 4 + 4 bytes."
        elif scheme == "topk" and got == math.floor(ratio * n * m) * 8:
            hint = "keep ceil(ratio * n * m) entries (at least one), not the rounded-down number."
        elif scheme == "powersgd" and got == (n + m) * r * 4:
            hint = (f"(n + m) r * 2 = {(n + m) * r * 2} is not below n m = {n * m}: compressing would save "
                    "less than half, so torch's hook (min_compression_rate=2) sends this matrix dense.")
        elif scheme == "powersgd" and got == (n + m) * rank * 4:
            hint = "the rank cannot exceed min(n, m); use r = min(n, m, rank)."
        elif scheme == "powersgd" and got == n * m * r * 4:
            hint = "P is n x r and Q is m x r: (n + m) r numbers, not n m r."
        else:
            hint = {"allreduce": "every entry of the matrix, 4 bytes each.",
                    "topk": "ceil(ratio * n * m) entries, value and index, 8 bytes each.",
                    "powersgd": "(n + m) r numbers of 4 bytes if (n + m) r * 2 < n m, else n m numbers."}.get(
                scheme, "scheme is one of 'allreduce', 'topk', 'powersgd'.")
        return CheckResult(False, f"on the case {label} you return {got:,.0f} bytes, expected {expected:,d}: {hint}")
    return CheckResult(True, f"your byte counts match gradlab.compress.payload_bytes on {len(cases)} cases, "
                             "including matrices too small to be worth compressing.")


def check_unitwise_norm(fn: Callable) -> CheckResult:
    """Check ``fn(x) -> norms``: AGC's norm per output unit for PyTorch's layouts
    (``[out, in]`` linear weights, ``[out, in, kh, kw]`` convolution kernels; a
    vector or scalar is one unit), against :func:`gradlab.clip.unitwise_norm`.
    The result may keep the reduced dimensions (``[out, 1, ...]``) or not
    (``[out]``), as long as it has one norm per unit."""
    from gradlab.clip import unitwise_norm

    g = torch.Generator().manual_seed(3)
    cases = [("a Linear(5, 3) weight [3, 5]", torch.randn(3, 5, generator=g, dtype=torch.float64)),
             ("a Conv2d(3, 4, 2) kernel [4, 3, 2, 2]", torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)),
             ("a bias vector [7]", torch.randn(7, generator=g, dtype=torch.float64)),
             ("a square weight [6, 6]", torch.randn(6, 6, generator=g, dtype=torch.float64))]
    for label, x in cases:
        expected = unitwise_norm(x)
        got, err = _call(fn, x.clone(), where=f"on the case {label}",
                         convert=lambda out: torch.as_tensor(out, dtype=torch.float64))
        if err is not None:
            return err
        units = 1 if x.ndim <= 1 else x.shape[0]
        if got.numel() == units and torch.allclose(got.flatten(), expected.flatten(), rtol=1e-10, atol=1e-12):
            continue
        if x.ndim >= 2:
            over_dim0 = torch.linalg.vector_norm(x, dim=0)
            if got.numel() == over_dim0.numel() and torch.allclose(got.flatten(), over_dim0.flatten()):
                return CheckResult(False, f"on the case {label} you took the norm over dimension 0, one norm "
                                          "per *input* (JAX's [in, out] layout). PyTorch stores [out, in, ...]: "
                                          "a unit is a slice x[i], so reduce over every dimension except 0.")
            if x.ndim > 2:
                over_dim1 = torch.linalg.vector_norm(x, dim=1)
                if got.numel() == over_dim1.numel() and torch.allclose(got.flatten(), over_dim1.flatten()):
                    return CheckResult(False, f"on the case {label} you reduced over dimension 1 only; a "
                                              "convolution unit's weights are x[i, :, :, :], so reduce over "
                                              "dimensions 1, 2 and 3.")
        if got.numel() == 1 and math.isclose(float(got), float(torch.linalg.vector_norm(x)), rel_tol=1e-10) \
                and units > 1:
            return CheckResult(False, f"on the case {label} you returned the norm of the whole tensor; AGC needs "
                                      f"one norm per output unit ({units} here).")
        if x.ndim <= 1:
            return CheckResult(False, f"on the case {label}: a vector (a bias or a gain) counts as one unit, "
                                      "so return its norm, one number.")
        return CheckResult(False, f"on the case {label} you returned {got.numel()} values; expected {units}, the "
                                  "L2 norm of each slice x[i] (compare with gradlab.clip.unitwise_norm).")
    return CheckResult(True, "one norm per output unit for linear weights, convolution kernels and vectors, "
                             "as gradlab.clip.unitwise_norm computes them.")
