"""The exercise checkers must accept right answers and name the mistake in wrong ones."""

import math

import pytest
import torch

from gradlab import checks, compress, prune
from gradlab.compress import payload_bytes, subspace_iteration_step


def right_norm(params):
    norms = [torch.linalg.vector_norm(p.grad, dtype=torch.float64) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)).item()


def test_global_norm_right_answer():
    result = checks.check_global_grad_norm(right_norm)
    assert result.passed and bool(result) and str(result).startswith("PASSED")


def test_global_norm_sum_of_norms():
    def summed(params):
        return sum(p.grad.norm().item() for p in params if p.grad is not None)
    result = checks.check_global_grad_norm(summed)
    assert not result.passed and "added the per-tensor norms" in result.message


def test_global_norm_squared():
    result = checks.check_global_grad_norm(lambda ps: right_norm(ps) ** 2)
    assert not result.passed and "square root" in result.message


def test_global_norm_overflow():
    def naive(params):
        return torch.sqrt(sum((p.grad**2).sum() for p in params if p.grad is not None))
    result = checks.check_global_grad_norm(naive)
    assert not result.passed and "overflowed" in result.message


def test_global_norm_forgets_none():
    def crashes(params):
        return right_norm([p for p in params]) if all(p.grad is not None for p in params) else \
            sum(p.grad.norm() for p in params)
    result = checks.check_global_grad_norm(crashes)
    assert not result.passed and "p.grad = None" in result.message


def test_torch_float32_total_norm_overflows_where_ours_does_not():
    # the reason the checker's reference is computed in float64
    grads = [torch.full((10,), 1e20)]
    assert torch.nn.utils.get_total_norm(grads).isinf()
    assert not checks.check_global_grad_norm(lambda ps: torch.nn.utils.get_total_norm(
        [p.grad for p in ps if p.grad is not None])).passed


def test_global_norm_not_written():
    def stub(params):
        raise NotImplementedError
    assert "not written yet" in checks.check_global_grad_norm(stub).message


def test_transient_growth():
    assert checks.check_transient_growth(torch.tensor([[0.9, 30.0], [0.0, 0.9]])).passed
    weak = checks.check_transient_growth(torch.tensor([[0.9, 1.0], [0.0, 0.9]]))
    assert not weak.passed and "non-normal" in weak.message
    unstable = checks.check_transient_growth(torch.tensor([[1.1, 0.0], [0.0, 0.5]]))
    assert not unstable.passed and ">= 1" in unstable.message
    assert not checks.check_transient_growth(torch.ones(2, 3)).passed


def right_jacobian(weights, x):
    h, J = x, torch.eye(x.numel(), dtype=x.dtype)
    for W in weights:
        h = torch.tanh(W @ h)
        J = torch.diag(1 - h**2) @ W @ J
    return J


def test_jacobian_product():
    assert checks.check_jacobian_product(right_jacobian).passed
    transposed = checks.check_jacobian_product(lambda w, x: right_jacobian(w, x).T)
    assert not transposed.passed and "transpose" in transposed.message
    weights_only = checks.check_jacobian_product(lambda w, x: w[2] @ w[1] @ w[0])
    assert not weights_only.passed and "diag(tanh'" in weights_only.message


def right_clip(params, max_norm):
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def test_clip_grad_norm_checker():
    assert checks.check_clip_grad_norm(right_clip).passed

    def per_tensor(params, max_norm):
        total = torch.nn.utils.get_total_norm([p.grad for p in params])
        for p in params:
            p.grad.mul_(min(1.0, max_norm / (p.grad.norm().item() + 1e-6)))
        return total
    r = checks.check_clip_grad_norm(per_tensor)
    assert not r.passed and "each tensor separately" in r.message

    def no_min(params, max_norm):
        total = torch.nn.utils.get_total_norm([p.grad for p in params])
        for p in params:
            p.grad.mul_(max_norm / (total + 1e-6))
        return total
    r = checks.check_clip_grad_norm(no_min)
    assert not r.passed and "enlarged small gradients" in r.message

    def after(params, max_norm):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return torch.nn.utils.get_total_norm([p.grad for p in params])
    r = checks.check_clip_grad_norm(after)
    assert not r.passed and "after clipping" in r.message

    def not_in_place(params, max_norm):
        total = torch.nn.utils.get_total_norm([p.grad for p in params])
        [p.grad * 0.5 for p in params]
        return total
    r = checks.check_clip_grad_norm(not_in_place)
    assert not r.passed and "in place" in r.message


FUNCTION_CHECKERS = [checks.check_global_grad_norm, checks.check_jacobian_product,
                     checks.check_clip_grad_norm, checks.check_subspace_iteration_step,
                     checks.check_error_feedback, checks.check_top_singular,
                     checks.check_soft_threshold, checks.check_adam_step,
                     checks.check_warmup, checks.check_spike_guard, checks.check_payload_bytes,
                     checks.check_unitwise_norm]


@pytest.mark.parametrize("checker", FUNCTION_CHECKERS, ids=lambda c: c.__name__)
def test_every_checker_reports_a_stub_and_a_crash_instead_of_raising(checker):
    def stub(*args):
        raise NotImplementedError

    def crashes(*args):
        raise ZeroDivisionError("float division by zero")

    stub_result = checker(stub)
    assert not stub_result.passed and "not written yet" in stub_result.message
    crash_result = checker(crashes)
    assert not crash_result.passed
    assert "ZeroDivisionError: float division by zero" in crash_result.message
    # the message names the case (or the arguments) that made it crash
    assert any(word in crash_result.message for word in ("case", "step", "network", "arguments"))


@pytest.mark.parametrize("checker", [checks.check_global_grad_norm, checks.check_clip_grad_norm,
                                     checks.check_warmup], ids=lambda c: c.__name__)
def test_a_checker_expecting_a_number_reports_a_vector(checker):
    result = checker(lambda *args: torch.ones(3))
    assert not result.passed
    assert "Tensor" in result.message and "shape (3,)" in result.message


def test_unitwise_norm_checker_accepts_both_shapes_and_names_the_layout_mistake():
    from gradlab.clip import unitwise_norm

    assert checks.check_unitwise_norm(unitwise_norm).passed
    flat = checks.check_unitwise_norm(lambda x: unitwise_norm(x).flatten())
    assert flat.passed  # [out] instead of [out, 1]: still one norm per unit
    jax = checks.check_unitwise_norm(lambda x: torch.linalg.vector_norm(x, dim=0) if x.ndim > 1
                                     else torch.linalg.vector_norm(x))
    assert not jax.passed and "dimension 0" in jax.message and "JAX" in jax.message
    whole = checks.check_unitwise_norm(lambda x: torch.linalg.vector_norm(x))
    assert not whole.passed and "whole tensor" in whole.message
    dim1 = checks.check_unitwise_norm(lambda x: torch.linalg.vector_norm(x, dim=1) if x.ndim > 1
                                      else torch.linalg.vector_norm(x))
    assert not dim1.passed and "dimensions 1, 2 and 3" in dim1.message
    per_entry = checks.check_unitwise_norm(lambda x: x.abs())
    assert not per_entry.passed and "expected 3" in per_entry.message


def test_check_subspace_iteration_step_accepts_a_correct_step_and_explains_mistakes():
    def good(M, Q):
        P = torch.linalg.qr(M @ Q).Q
        return P, M.T @ P

    assert checks.check_subspace_iteration_step(good).passed
    assert checks.check_subspace_iteration_step(lambda M, Q: subspace_iteration_step(M, Q)).passed
    not_orth = checks.check_subspace_iteration_step(lambda M, Q: (M @ Q, M.T @ (M @ Q)))
    assert not not_orth.passed and "orthonormal" in not_orth.message
    doubled = checks.check_subspace_iteration_step(lambda M, Q: (good(M, Q)[0], 2 * good(M, Q)[1]))
    assert not doubled.passed and "nothing to average" in doubled.message


def test_check_payload_bytes_accepts_the_reference_and_explains_mistakes():
    def good(n, m, scheme, rank, ratio):
        return payload_bytes([(n, m)], scheme, rank=rank, ratio=ratio)

    def by_hand(n, m, scheme, rank, ratio):
        if scheme == "allreduce":
            return 4 * n * m
        if scheme == "topk":
            return 8 * math.ceil(ratio * n * m)
        r = min(n, m, rank)
        return 4 * (n + m) * r if (n + m) * r * 2 < n * m else 4 * n * m

    assert checks.check_payload_bytes(good).passed and checks.check_payload_bytes(by_hand).passed

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
        result = checks.check_payload_bytes(wrong)
        assert not result.passed and says in result.message, (wrong, result.message)


def test_check_error_feedback_passes_reference_and_catches_mistakes():
    def reference(grad, residual, k):
        sent = compress.ErrorFeedback(lambda a: compress.topk(a, k))
        sent.residual = residual.clone()
        msg = sent(grad).to_dense()
        return msg, sent.residual

    def from_grad_only(grad, residual, k):
        acc = grad + residual
        keep = torch.zeros(acc.numel(), dtype=torch.bool)
        keep[torch.topk(grad.abs().flatten(), k).indices] = True
        s = torch.where(keep.view(acc.shape), acc, torch.zeros_like(acc))
        return s, acc - s

    assert checks.check_error_feedback(reference).passed
    result = checks.check_error_feedback(from_grad_only)
    assert not result.passed and "grad + residual" in result.message
    assert not checks.check_error_feedback(lambda g, r, k: (g, r)).passed


def test_check_soft_threshold_passes_reference_and_catches_mistakes():
    assert checks.check_soft_threshold(prune.soft_threshold).passed
    hard = checks.check_soft_threshold(lambda x, t: x * (x.abs() > t))
    assert not hard.passed and "hard thresholding" in hard.message
    unsigned = checks.check_soft_threshold(lambda x, t: torch.clamp(x.abs() - t, min=0))
    assert not unsigned.passed and "sign" in unsigned.message
