"""The exercise checkers must accept right answers (the book's own solutions
included), name the mistake in wrong ones on every failing case, never crash on a
student's answer, and offer visible/hidden cases and ``require()`` to graders."""

import ast
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from gradlab import checks, compress, prune
from gradlab.clip import unitwise_norm
from gradlab.compress import payload_bytes, subspace_iteration_step
from gradlab.spectral import power_iteration

CHAPTERS = Path(__file__).resolve().parents[2] / "chapters"


def fails_with(result, *phrases):
    """The check failed and its text contains every phrase."""
    assert not result.passed, str(result)
    text = str(result)
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} not in:\n{text}"
    return result


# ----------------------------------------------------------------------------- the book's own solutions

_CELL = re.compile(r"```\{code-cell\}[^\n]*\n(.*?)\n```", re.S)
_SOLUTION = re.compile(r"\{solution-start\}\s*(\S+)(.*?)\{solution-end\}", re.S)


def book_solutions():
    """(chapter, label, checker, function name, code) for every solution cell that
    ends with ``print(checks.check_x(answer))``; the code keeps the cell's imports,
    definitions and assignments before that call."""
    found = []
    for md in sorted(CHAPTERS.glob("[0-9][0-9]_*.md")):
        for label, body in _SOLUTION.findall(md.read_text()):
            for code in _CELL.findall(body):
                call = re.search(r"print\(checks\.(check_\w+)\((\w+)\)\)", code)
                if not call:
                    continue
                keep = []
                for node in ast.parse(code).body:
                    if "checks.check_" in ast.unparse(node):
                        break
                    if isinstance(node, (ast.FunctionDef, ast.Import, ast.ImportFrom, ast.Assign)):
                        keep.append(node)
                found.append((md.stem, label, call.group(1), call.group(2), ast.unparse(ast.Module(keep, []))))
    return found


BOOK = book_solutions()
# chapter 2's solution iterates over a single tensor's rows; the fix (wrap a tensor in a list)
# goes into the chapter. strict: once the chapter is fixed this test must lose its marker.
KNOWN_BROKEN: dict[str, str] = {}  # label -> why the book's solution is known to fail (none now)


def test_every_checker_a_chapter_calls_has_a_book_solution():
    called = set()
    for md in CHAPTERS.glob("[0-9][0-9]_*.md"):
        called |= set(re.findall(r"print\(checks\.(check_\w+)\(", md.read_text()))
    assert called == {checker for _, _, checker, _, _ in BOOK}
    assert len(called) == 13 and called <= set(checks.__all__)


@pytest.mark.parametrize("chapter,label,checker,name,code", [
    pytest.param(*sol, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BROKEN[sol[1]]))
    if sol[1] in KNOWN_BROKEN else sol for sol in BOOK], ids=[sol[1] for sol in BOOK])
def test_the_books_solution_passes_every_case(chapter, label, checker, name, code):
    namespace = {"torch": torch, "math": math, "np": np, "checks": checks}
    exec(code, namespace)
    result = getattr(checks, checker)(namespace[name])
    assert result.passed and result.score == 1.0, str(result)
    assert all(passed for _, passed, _ in result.cases)


def unfixed_clip(parameters, max_norm):
    """Chapter 2's solution without the fix: iterating over a single tensor walks its rows."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale)
    return total


def book_clip(parameters, max_norm):
    """Chapter 2's solution with the fix for a single tensor."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return unfixed_clip(parameters, max_norm)


def test_the_fixed_clip_solution_passes_and_the_unfixed_one_fails_on_the_single_tensor_only():
    assert checks.check_clip_grad_norm(book_clip).passed

    result = fails_with(checks.check_clip_grad_norm(unfixed_clip), "a single tensor",
                        "if isinstance(parameters, torch.Tensor): parameters = [parameters]")
    assert result.failed == ["a single tensor instead of a list"]
    assert result.score == pytest.approx(6 / 7)


# ----------------------------------------------------------------------------- the result and the grader's API

def right_norm(params):
    norms = [torch.linalg.vector_norm(p.grad, dtype=torch.float64) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)).item() if norms else 0.0


def test_result_keeps_every_case_and_lists_every_failure():
    def summed(params):
        return sum(p.grad.double().norm().item() for p in params if p.grad is not None)

    result = fails_with(checks.check_global_grad_norm(summed), "added the per-tensor norms")
    names = [name for name, _, _ in result.cases]
    assert len(names) == 7 and len(set(names)) == 7
    # every case with more than one gradient fails, and each one is named in the message
    assert result.failed == ["three tensors", "large gradients (1e20)", "model.parameters(), a generator",
                             "float64 gradients"]
    for name in result.failed:
        assert f"'{name}'" in result.message
    assert result.message.startswith("4 of 7 cases fail:")
    assert "The other 3 cases pass." in result.message
    assert result.score == pytest.approx(3 / 7)
    for name, passed, hint in result.cases:
        assert passed == (name not in result.failed) and (hint == "") == passed


def test_visible_and_hidden_cases_split_all_cases():
    full = checks.check_clip_grad_norm(book_clip)
    visible = checks.check_clip_grad_norm(book_clip, cases="visible")
    hidden = checks.check_clip_grad_norm(book_clip, cases="hidden")
    assert full.selection == "all" and visible.selection == "visible" and hidden.selection == "hidden"
    names = [c.name for c in full.cases]
    assert [c.name for c in visible.cases] + [c.name for c in hidden.cases] == names
    assert len(visible.cases) == 3 and all(c.passed for c in visible.cases + hidden.cases)
    assert "3 visible cases" in visible.message and "has 7" in visible.message
    assert "4 hidden cases" in hidden.message


@pytest.mark.parametrize("checker", [c for name, c in vars(checks).items() if name.startswith("check_")],
                         ids=lambda c: c.__name__)
def test_every_checker_takes_the_cases_keyword(checker):
    arg = torch.tensor([[0.99, 3.0], [0.0, 0.99]]) if checker is checks.check_transient_growth else print
    with pytest.raises(ValueError, match="cases must be one of 'all', 'visible', 'hidden'"):
        checker(arg, cases="some")
    visible, hidden, everything = (checker(arg, cases=s) for s in ("visible", "hidden", "all"))
    assert len(visible.cases) >= 1 and len(hidden.cases) >= 1
    assert [c.name for c in visible.cases + hidden.cases] == [c.name for c in everything.cases]


def test_a_failing_check_visible_to_students_still_passes_its_visible_cases():
    def clips_list_only(parameters, max_norm):  # a generator is read twice
        total = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
        for p in parameters:
            p.grad.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return total

    assert checks.check_clip_grad_norm(clips_list_only, cases="visible").passed
    fails_with(checks.check_clip_grad_norm(clips_list_only, cases="hidden"), "twice")


def test_require_raises_the_student_facing_text():
    good = checks.check_clip_grad_norm(book_clip, cases="visible")
    assert good.require() is good and checks.require(good) is good

    def stub(parameters, max_norm):
        raise NotImplementedError

    bad = checks.check_clip_grad_norm(stub, cases="visible")
    with pytest.raises(AssertionError) as info:
        bad.require()
    assert str(info.value) == str(bad) == "NOT YET: " + checks.NOT_WRITTEN
    with pytest.raises(AssertionError, match="not written yet"):
        checks.require(bad)
    with pytest.raises(TypeError, match="CheckResult"):
        checks.require(True)


def test_str_starts_with_passed_or_not_yet():
    result = checks.check_global_grad_norm(right_norm)
    assert result.passed and bool(result) and str(result).startswith("PASSED: ")
    assert str(checks.check_global_grad_norm(lambda ps: 0.0)).startswith("NOT YET: ")


FUNCTION_CHECKERS = [checks.check_global_grad_norm, checks.check_jacobian_product,
                     checks.check_clip_grad_norm, checks.check_subspace_iteration_step,
                     checks.check_error_feedback, checks.check_top_singular,
                     checks.check_soft_threshold, checks.check_adam_step,
                     checks.check_warmup, checks.check_spike_guard, checks.check_payload_bytes,
                     checks.check_unitwise_norm]


def test_the_function_checkers_are_all_there():
    names = {c.__name__ for c in FUNCTION_CHECKERS} | {"check_transient_growth"}
    assert names == {name for name in checks.__all__ if name.startswith("check_")}


@pytest.mark.parametrize("checker", FUNCTION_CHECKERS, ids=lambda c: c.__name__)
def test_every_checker_reports_a_stub_and_a_crash_instead_of_raising(checker):
    def stub(*args):
        raise NotImplementedError

    def crashes(*args):
        raise ZeroDivisionError("float division by zero")

    stub_result = checker(stub)
    assert not stub_result.passed and stub_result.message == checks.NOT_WRITTEN
    assert str(stub_result) == "NOT YET: your function is not written yet (it raises NotImplementedError)."
    assert stub_result.score == 0 and len(stub_result.failed) == len(stub_result.cases) >= 4
    crash_result = checker(crashes)
    assert not crash_result.passed
    assert "ZeroDivisionError: float division by zero" in crash_result.message
    assert "case" in crash_result.message


GARBAGE = {"None": None, "a string": "abc", "a 3-D tensor": torch.ones(7, 7, 7), "nan": float("nan"),
           "a dict": {"a": 1}, "a list of tensors": [torch.ones(2)] * 3, "a tuple of strings": ("a", "b", "c"),
           "a complex tensor": torch.ones(3, dtype=torch.complex64), "a sparse tensor": torch.eye(3).to_sparse(),
           "a pair of Nones": (None, None), "a triple of Nones": (None, None, None)}


@pytest.mark.parametrize("checker", FUNCTION_CHECKERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("kind", list(GARBAGE))
def test_no_checker_crashes_on_a_wrong_type_or_shape(checker, kind):
    result = checker(lambda *args: GARBAGE[kind])
    assert isinstance(result, checks.CheckResult) and not result.passed
    assert result.cases and all(hint for _, passed, hint in result.cases if not passed)


@pytest.mark.parametrize("checker", FUNCTION_CHECKERS, ids=lambda c: c.__name__)
def test_passing_a_value_instead_of_a_function_is_explained(checker):
    result = checker(3.0)
    fails_with(result, "pass your function itself")


@pytest.mark.parametrize("checker", [checks.check_global_grad_norm, checks.check_clip_grad_norm,
                                     checks.check_warmup], ids=lambda c: c.__name__)
def test_a_checker_expecting_a_number_reports_a_vector(checker):
    result = checker(lambda *args: torch.ones(3))
    assert not result.passed
    assert "Tensor" in result.message and "shape (3,)" in result.message


def test_checkers_leave_the_global_random_state_alone():
    state = torch.get_rng_state()
    for checker in FUNCTION_CHECKERS:
        checker(lambda *args: None)
    checks.check_clip_grad_norm(book_clip)
    checks.check_transient_growth(torch.tensor([[0.99, 3.0], [0.0, 0.99]]))
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- chapter 1

def test_global_norm_mistakes():
    fails_with(checks.check_global_grad_norm(lambda ps: right_norm(ps) ** 2), "square root")

    def naive(params):
        return torch.sqrt(sum((p.grad**2).sum() for p in params if p.grad is not None))
    fails_with(checks.check_global_grad_norm(naive), "overflowed")

    def largest(params):
        return max(p.grad.double().norm().item() for p in params if p.grad is not None)
    fails_with(checks.check_global_grad_norm(largest), "largest per-tensor norm")

    def forgets_none(params):
        return torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in params])).item()
    fails_with(checks.check_global_grad_norm(forgets_none), "'a parameter without .grad'", "p.grad = None")

    def empty_crashes(params):
        return torch.linalg.vector_norm(torch.stack(
            [p.grad.double().norm() for p in params if p.grad is not None])).item()
    result = fails_with(checks.check_global_grad_norm(empty_crashes), "norm of no gradients is 0")
    assert result.failed == ["no parameter has a gradient"]

    def twice(params):
        if not any(p.grad is not None for p in params):
            return 0.0
        return right_norm(params)
    result = fails_with(checks.check_global_grad_norm(twice), "you iterate over parameters twice",
                        "model.parameters() is empty the second time: turn it into a list first")
    assert result.failed == ["model.parameters(), a generator"]

    def uses_len(params):
        assert len(params) >= 0
        return right_norm(params)
    result = fails_with(checks.check_global_grad_norm(uses_len), "has no len()", "turn it into a list first")
    assert result.failed == ["model.parameters(), a generator"]

    def float32_only(params):
        return right_norm([p for p in params if p.grad is None or p.grad.dtype == torch.float32])
    assert checks.check_global_grad_norm(float32_only).failed == ["float64 gradients"]


def test_torch_float32_total_norm_overflows_where_ours_does_not():
    # the reason the checker's reference is computed in float64
    grads = [torch.full((10,), 1e20)]
    assert torch.nn.utils.get_total_norm(grads).isinf()
    result = checks.check_global_grad_norm(lambda ps: torch.nn.utils.get_total_norm(
        [p.grad for p in ps if p.grad is not None]))
    assert result.failed == ["large gradients (1e20)"]


def transient_peak(W, powers=1000):
    """max_k ||W^k||_2 and ||W^powers||_2, straight from numpy."""
    P, norms = np.eye(len(W)), []
    for _ in range(powers):
        P = P @ np.asarray(W, dtype=float)
        norms.append(np.linalg.norm(P, 2))
    return max(norms), norms[-1]


def test_transient_growth():
    book = [[0.99, 3.0], [0.0, 0.99]]  # the book's solution: sigma_max 3.3, peak about 111 at k = 100
    assert checks.check_transient_growth(torch.tensor(book)).passed
    assert checks.check_transient_growth(book).passed  # nested lists
    assert checks.check_transient_growth(np.array(book)).passed
    peak, last = transient_peak(book)
    result = checks.check_transient_growth(book)
    assert f"{peak:.4g}" in result.message and 100 < peak < 120 and last < peak / 2
    # a 3 x 3 chain also works: rho 0.9, sigma_max 3.6, peak about 257
    assert checks.check_transient_growth([[0.9, 3.0, 0.0], [0.0, 0.9, 3.0], [0.0, 0.0, 0.9]]).passed
    # the section's example, scaled up, passes rho and the peak but not sigma_max
    scaled = checks.check_transient_growth([[0.9, 30.0], [0.0, 0.9]])
    assert scaled.failed == ["largest singular value at most 4"]
    fails_with(scaled, "sigma_max(W) = 30.")
    # with sigma_max <= 4, rho = 0.9 cannot reach 100: the peak is about 3.9 c <= 16
    weak = fails_with(checks.check_transient_growth([[0.9, 3.7], [0.0, 0.9]]), "section's example")
    assert weak.failed == ["a peak of at least 100"]
    assert "non-normal" not in weak.message and "off-diagonal" not in weak.message  # no giveaway
    assert transient_peak([[0.9, 3.7], [0.0, 0.9]])[0] < 16
    stub = checks.check_transient_growth(0.9 * torch.eye(2))
    assert stub.failed == ["a peak of at least 100"] and "0.9" in stub.message
    unstable = fails_with(checks.check_transient_growth(torch.tensor([[1.1, 0.0], [0.0, 0.5]])), ">= 1")
    assert "spectral radius below 1" in unstable.failed
    assert not checks.check_transient_growth(torch.ones(2, 3)).passed
    slow = fails_with(checks.check_transient_growth(torch.tensor([[0.999, 1.0], [0.0, 0.999]])), "outlasts")
    assert slow.failed == ["a decay after the peak (below half of it by k = 1000)"]
    assert checks.check_transient_growth([[0.999, 1.0], [0.0, 0.999]], max_power=5000).passed
    assert checks.check_transient_growth([[0.9, 30.0], [0.0, 0.9]], max_sigma=40).passed
    assert not checks.check_transient_growth(book, min_peak=200).passed
    fails_with(checks.check_transient_growth("abc"), "square matrix of numbers")
    fails_with(checks.check_transient_growth(torch.zeros(0, 0)), "square matrix")
    fails_with(checks.check_transient_growth([[1e10, 1e10], [0.0, 1e10]]), ">= 1")  # powers overflow
    fails_with(checks.check_transient_growth([[float("nan"), 0.0], [0.0, 0.5]]), "NaN or inf")
    visible = checks.check_transient_growth(book, cases="visible")
    assert len(visible.cases) == 4 and visible.passed
    assert len(checks.check_transient_growth(book, cases="hidden").cases) == 1
    for bad in ({"min_peak": 0}, {"max_sigma": -1.0}, {"max_power": 1}, {"max_power": 10.5}):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            checks.check_transient_growth(book, **bad)


def right_jacobian(weights, x):
    h, J = x, torch.eye(x.numel(), dtype=x.dtype)
    for W in weights:
        h = torch.tanh(W @ h)
        J = torch.diag(1 - h**2) @ W @ J
    return J


def jacobian_with(factor, order="last-left", side="left"):
    def jac(weights, x):
        h, J = x, None
        for W in weights:
            z = W @ h
            out = torch.tanh(z)
            d = factor(z, out, h)
            L = torch.diag(d) @ W if side == "left" else W @ torch.diag(d)
            J = L if J is None else (L @ J if order == "last-left" else J @ L)
            h = out
        return J
    return jac


def test_jacobian_product():
    assert checks.check_jacobian_product(right_jacobian).passed
    fails_with(checks.check_jacobian_product(lambda w, x: right_jacobian(w, x).T), "transpose")
    weights_only = fails_with(checks.check_jacobian_product(lambda w, x: w[2] @ w[1] @ w[0]), "diag(tanh'")
    assert weights_only.failed[0] == "a 3-layer tanh network (5 -> 6 -> 4 -> 3)"
    result = fails_with(checks.check_jacobian_product(jacobian_with(lambda z, out, h: 1 - out**2, order="first-left")),
                        "wrong order")
    assert "a square network (4 -> 4 -> 4 -> 4)" in result.failed
    fails_with(checks.check_jacobian_product(jacobian_with(lambda z, out, h: 1 - z**2)), "not 1 - z_l**2")
    fails_with(checks.check_jacobian_product(jacobian_with(lambda z, out, h: 1 - out)), "square h_l")
    fails_with(checks.check_jacobian_product(jacobian_with(lambda z, out, h: 1 - h**2, side="right")),
               "not W_l diag(1 - h_{l-1}**2)")
    fails_with(checks.check_jacobian_product(jacobian_with(lambda z, out, h: 1 - out**2, side="right")),
               "multiplies from the left")
    def float64_eye(weights, x):
        h, J = x, torch.eye(x.numel(), dtype=torch.float64)
        for W in weights:
            h = torch.tanh(W @ h)
            J = torch.diag(1 - h**2) @ W @ J
        return J
    result = fails_with(checks.check_jacobian_product(float64_eye), "dtype=x.dtype")
    assert result.failed == ["float32 weights and input"]
    assert checks.check_jacobian_product(lambda w, x: torch.func.jacrev(
        lambda v: torch.tanh(w[-1] @ _forward(w[:-1], v)))(x)).passed


def _forward(weights, v):
    for W in weights:
        v = torch.tanh(W @ v)
    return v


# ----------------------------------------------------------------------------- chapter 2

def as_list(parameters):
    return [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)


def total_norm(params):
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


def scales_in_place(factor):
    """A clip_grad_norm_ that multiplies each gradient in place by factor(p.grad, total,
    max_norm) and returns the total norm: right or wrong depending on the factor."""
    def clip_fn(parameters, max_norm):
        params = as_list(parameters)
        total = total_norm(params)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(factor(p.grad, total, max_norm))
        return total
    return clip_fn


def test_clip_grad_norm_accepts_torch_and_gradlab():
    from gradlab import clip

    assert checks.check_clip_grad_norm(torch.nn.utils.clip_grad_norm_).passed
    assert checks.check_clip_grad_norm(clip.clip_grad_norm_).passed


def test_clip_grad_norm_names_each_mistake():
    def twice(parameters, max_norm):  # the brief's example: a generator read twice
        total = total_norm(parameters)
        for p in parameters:
            if p.grad is not None:
                p.grad.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return total
    result = fails_with(checks.check_clip_grad_norm(twice),
                        "you iterate over parameters twice; a generator such as model.parameters() is empty the "
                        "second time: turn it into a list first")
    assert result.failed == ["model.parameters(), a generator", "a single tensor instead of a list"]

    def summed(parameters, max_norm):
        params = [p for p in parameters if p.grad is not None]
        total = sum(p.grad.norm() for p in params)
        for p in params:
            p.grad.mul_(min(1.0, max_norm / (float(total) + 1e-6)))
        return total
    result = fails_with(checks.check_clip_grad_norm(summed), "added the per-tensor norms")
    assert result.message.count("added the per-tensor norms") == 1  # scale and returned norm: one sentence
    assert "three tensors, max_norm=1 (clipped)" in result.failed and "float64 gradients" in result.failed

    def no_sqrt(parameters, max_norm):
        params = [p for p in parameters if p.grad is not None]
        total = sum((p.grad.double() ** 2).sum() for p in params)
        for p in params:
            p.grad.mul_(min(1.0, max_norm / (float(total) + 1e-6)))
        return total
    fails_with(checks.check_clip_grad_norm(no_sqrt), "the norm has no square root")

    per_tensor = scales_in_place(lambda g, total, c: min(1.0, c / (g.norm().item() + 1e-6)))
    fails_with(checks.check_clip_grad_norm(per_tensor), "each tensor separately")

    def no_return(parameters, max_norm):
        book_clip(parameters, max_norm)
    result = fails_with(checks.check_clip_grad_norm(no_return), "returned None", "return the total norm")
    assert len(result.failed) == 7

    no_min = scales_in_place(lambda g, total, c: c / (total + 1e-6))
    result = fails_with(checks.check_clip_grad_norm(no_min), "enlarged small gradients")
    assert result.failed == ["small gradients, max_norm=100 (nothing to clip)"]

    def after(parameters, max_norm):
        params = as_list(parameters)
        book_clip(params, max_norm)
        return total_norm(params)
    fails_with(checks.check_clip_grad_norm(after), "after clipping")

    def not_in_place(parameters, max_norm):
        params = as_list(parameters)
        total = total_norm(params)
        [p.grad * 0.5 for p in params]
        return total
    fails_with(checks.check_clip_grad_norm(not_in_place), "did not change", "in place")

    def rebinds(parameters, max_norm):
        params = as_list(parameters)
        total = total_norm(params)
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * torch.clamp(max_norm / (total + 1e-6), max=1.0)
        return total
    result = fails_with(checks.check_clip_grad_norm(rebinds), "replaced p.grad by a new tensor")
    assert len(result.failed) == 7

    def scales_weights(parameters, max_norm):
        params = as_list(parameters)
        total = total_norm(params)
        for p in params:
            p.data.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return total
    fails_with(checks.check_clip_grad_norm(scales_weights), "not their gradients p.grad")

    upside_down = scales_in_place(lambda g, total, c: total / c)
    fails_with(checks.check_clip_grad_norm(upside_down), "upside down")

    def forgets_none(parameters, max_norm):
        params = list(parameters) if not isinstance(parameters, torch.Tensor) else [parameters]
        total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        for p in params:
            p.grad.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return total
    result = fails_with(checks.check_clip_grad_norm(forgets_none), "p.grad = None; skip them")
    assert result.failed == ["a parameter without .grad"]


def test_clip_grad_norm_accepts_other_right_answers():
    def as_float(parameters, max_norm):
        return float(book_clip(parameters, max_norm))
    assert checks.check_clip_grad_norm(as_float).passed

    def no_eps_and_only_when_needed(parameters, max_norm):
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        params = [p for p in params if p.grad is not None]
        total = torch.norm(torch.stack([p.grad.detach().norm() for p in params]))
        if total > max_norm:
            for p in params:
                p.grad.detach().mul_(max_norm / total)
        return total.item()
    assert checks.check_clip_grad_norm(no_eps_and_only_when_needed).passed


def test_unitwise_norm_checker_accepts_both_shapes_and_names_the_layout_mistake():
    assert checks.check_unitwise_norm(unitwise_norm).passed
    flat = checks.check_unitwise_norm(lambda x: unitwise_norm(x).flatten())
    assert flat.passed  # [out] instead of [out, 1]: still one norm per unit
    jax = fails_with(checks.check_unitwise_norm(lambda x: torch.linalg.vector_norm(x, dim=0) if x.ndim > 1
                                                else torch.linalg.vector_norm(x)), "dimension 0", "JAX")
    assert "a square weight [6, 6]" in jax.failed
    fails_with(checks.check_unitwise_norm(lambda x: torch.linalg.vector_norm(x)), "whole tensor")
    dim1 = fails_with(checks.check_unitwise_norm(lambda x: torch.linalg.vector_norm(x, dim=1) if x.ndim > 1
                                                 else torch.linalg.vector_norm(x)),
                      "dimensions 1, 2 and 3", "dimensions 1 and 2")
    assert dim1.failed == ["a Conv2d(3, 4, 2) kernel [4, 3, 2, 2]", "a Conv1d(3, 4, 5) kernel [4, 3, 5]"]
    fails_with(checks.check_unitwise_norm(lambda x: x.abs()), "expected 3")
    fails_with(checks.check_unitwise_norm(lambda x: unitwise_norm(x) ** 2), "squared norms")
    no_scalar = fails_with(checks.check_unitwise_norm(lambda x: x.reshape(x.shape[0], -1).norm(dim=1)
                                                      if x.ndim > 1 else x.norm() if x.ndim == 1 else x.shape[0]),
                           "a scalar (a 0-d tensor, such as a learnable gain) is one unit")
    assert no_scalar.failed == ["a 0-d gain"]
    vector = fails_with(checks.check_unitwise_norm(lambda x: x.abs() if x.ndim <= 1 else unitwise_norm(x)),
                        "counts as one unit")
    assert vector.failed == ["a bias vector [7]"]


# ----------------------------------------------------------------------------- chapter 3

def good_power(W, v, n):
    return power_iteration(W, v, num_iters=n)


def test_top_singular_accepts_the_reference_and_names_mistakes():
    assert checks.check_top_singular(good_power).passed

    def eigen_iteration(W, v, n):  # finds rho(W), not sigma_max
        for _ in range(n):
            v = W @ v / (W @ v).norm()
        return (W @ v).norm(), v, v
    fails_with(checks.check_top_singular(eigen_iteration), "spectral radius")

    fails_with(checks.check_top_singular(lambda W, v, n: (good_power(W, v, n)[0] ** 2,) + good_power(W, v, n)[1:]),
               "sigma_max^2")

    def swapped(W, v, n):
        s, u, v = good_power(W, v, n)
        return s, v, u
    fails_with(checks.check_top_singular(swapped), "(sigma, v, u)")

    def unnormalised(W, v, n):
        for _ in range(n):
            v = W.T @ (W @ v)
        v = v / v.norm()
        u = W @ v
        return u.norm(), u / u.norm(), v
    result = fails_with(checks.check_top_singular(unnormalised), "overflowed", "after every product")
    assert "a 10 x 10 matrix with entries of size 1000" in result.failed

    fails_with(checks.check_top_singular(lambda W, v, n: (good_power(W, v, n)[0], 2 * good_power(W, v, n)[1],
                                                          good_power(W, v, n)[2])), "unit vectors")
    fails_with(checks.check_top_singular(lambda W, v, n: (-good_power(W, v, n)[0],) + good_power(W, v, n)[1:]),
               "positive")

    def wrong_u(W, v, n):
        s, u, v = good_power(W, v, n)
        return s, torch.roll(u, 1), v
    fails_with(checks.check_top_singular(wrong_u), "W v != sigma u")


# ----------------------------------------------------------------------------- chapter 4

def adam(p, g, m, v, t, lr, b1, b2, eps, *, exp=0, correct_m=True, correct_v=True, eps_at="after", sign=-1,
         use_lr=True, state="m", numerator="m"):
    """One Adam step with one optional slip (the defaults are right)."""
    m_new = b1 * m + (1 - b1) * g
    v_new = b2 * v + (1 - b2) * g * g
    m_hat = m_new / (1 - b1 ** (t + exp)) if correct_m else m_new
    v_hat = v_new / (1 - b2 ** (t + exp)) if correct_v else v_new
    if eps_at == "after":
        denom = v_hat.sqrt() + eps
    elif eps_at == "inside":
        denom = (v_hat + eps).sqrt()
    else:  # "outside": m_hat / sqrt(v_hat) + eps
        denom = None
    top = m_hat if numerator == "m" else g
    step = top / denom if denom is not None else top / v_hat.sqrt() + eps
    p_new = p + sign * (lr if use_lr else 1.0) * step
    if state == "m_hat":
        return p_new, m_hat, v_hat
    return p_new, m_new, v_new


def test_adam_accepts_the_right_step_and_gradlab():
    from gradlab.optim import Adam

    assert checks.check_adam_step(adam).passed

    def with_gradlab(p, g, m, v, t, lr, b1, b2, eps):
        q = p.clone().requires_grad_(True)
        opt = Adam([q], lr=lr, betas=(b1, b2), eps=eps)
        opt.state[q] = {"step": torch.tensor(float(t - 1)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        q.grad = g.clone()
        opt.step()
        return q.detach(), opt.state[q]["exp_avg"], opt.state[q]["exp_avg_sq"]
    assert checks.check_adam_step(with_gradlab).passed, str(checks.check_adam_step(with_gradlab))


@pytest.mark.parametrize("slip,says", [
    (dict(correct_m=False, correct_v=False), "bias correction is missing"),
    (dict(exp=1), "exponent t + 1"),
    (dict(correct_v=False), "only m is bias-corrected"),
    (dict(correct_m=False), "only v is bias-corrected"),
    (dict(state="m_hat"), "you returned the bias-corrected m_hat as the new m"),
    (dict(eps_at="inside"), "eps is inside the square root"),
    (dict(eps_at="outside"), "eps belongs in the denominator"),
    (dict(sign=+1), "uphill"),
    (dict(use_lr=False), "missing the learning rate"),
    (dict(numerator="g"), "not the gradient g itself"),
])
def test_adam_names_each_mistake(slip, says):
    result = fails_with(checks.check_adam_step(lambda *a: adam(*a, **slip)), says)
    # the message for a step does not blame the moments when they are right
    if "state" not in slip:
        assert "first moment" not in result.message and "second moment" not in result.message


def test_adam_exponent_t_minus_1_divides_by_zero_at_t_1():
    def t_minus_1_tensors(p, g, m, v, t, lr, b1, b2, eps):
        return adam(p, g, m, v, t, lr, b1, b2, eps, exp=-1)
    result = fails_with(checks.check_adam_step(t_minus_1_tensors), "1 - beta**0 = 0", "exponent t - 1")
    assert "step t = 1 (gradients of 0.01)" in result.failed

    def t_minus_1_floats(p, g, m, v, t, lr, b1, b2, eps):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        c1, c2 = 1 / (1 - b1 ** (t - 1)), 1 / (1 - b2 ** (t - 1))
        return p - lr * (m * c1) / ((v * c2).sqrt() + eps), m, v
    result = fails_with(checks.check_adam_step(t_minus_1_floats), "ZeroDivisionError", "1 - beta**0 = 0")
    assert result.cases[0].name == "step t = 1 (gradients of 0.01)" and not result.cases[0].passed


def test_adam_names_moment_and_eps_variants():
    def v_hat_state(p, g, m, v, t, lr, b1, b2, eps):
        p_new, m_new, v_new = adam(p, g, m, v, t, lr, b1, b2, eps)
        return p_new, m_new, v_new / (1 - b2**t)
    fails_with(checks.check_adam_step(v_hat_state), "bias-corrected v_hat as the new v")

    def swapped_m(p, g, m, v, t, lr, b1, b2, eps):
        m_new = (1 - b1) * m + b1 * g
        v_new = b2 * v + (1 - b2) * g * g
        return p - lr * (m_new / (1 - b1**t)) / ((v_new / (1 - b2**t)).sqrt() + eps), m_new, v_new
    fails_with(checks.check_adam_step(swapped_m), "beta1 and 1 - beta1 are swapped")

    def v_of_g(p, g, m, v, t, lr, b1, b2, eps):
        m_new = b1 * m + (1 - b1) * g
        v_new = b2 * v + (1 - b2) * g
        return p - lr * (m_new / (1 - b1**t)) / ((v_new / (1 - b2**t)).abs().sqrt() + eps), m_new, v_new
    fails_with(checks.check_adam_step(v_of_g), "squared gradient")

    def eps_in_v(p, g, m, v, t, lr, b1, b2, eps):
        m_new = b1 * m + (1 - b1) * g
        v_new = b2 * v + (1 - b2) * g * g
        return p - lr * (m_new / (1 - b1**t)) / ((v_new + eps) / (1 - b2**t)).sqrt(), m_new, v_new
    result = fails_with(checks.check_adam_step(eps_in_v), "eps is added to v before the square root")
    assert "eps = 0.1, as large as sqrt(v_hat), at step t = 3" in result.failed

    def efficient(p, g, m, v, t, lr, b1, b2, eps):
        m_new = b1 * m + (1 - b1) * g
        v_new = b2 * v + (1 - b2) * g * g
        return p - lr * (1 - b2**t) ** 0.5 / (1 - b1**t) * m_new / (v_new.sqrt() + eps), m_new, v_new
    fails_with(checks.check_adam_step(efficient), "'efficient' form")

    def old_moments(p, g, m, v, t, lr, b1, b2, eps):
        m_new = b1 * m + (1 - b1) * g
        v_new = b2 * v + (1 - b2) * g * g
        return p - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps), m_new, v_new
    fails_with(checks.check_adam_step(old_moments), "from before this step")

    def no_sqrt(p, g, m, v, t, lr, b1, b2, eps):
        m_new = b1 * m + (1 - b1) * g
        v_new = b2 * v + (1 - b2) * g * g
        return p - lr * (m_new / (1 - b1**t)) / (v_new / (1 - b2**t) + eps), m_new, v_new
    fails_with(checks.check_adam_step(no_sqrt), "take the square root of v_hat")

    def in_place(p, g, m, v, t, lr, b1, b2, eps):
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        return p - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps), m, v
    fails_with(checks.check_adam_step(in_place), "changed its input(s) m, v in place")

    def float64_out(p, g, m, v, t, lr, b1, b2, eps):
        return tuple(x.double() for x in adam(p, g, m, v, t, lr, b1, b2, eps))
    result = fails_with(checks.check_adam_step(float64_out), "keep the dtype")
    assert result.failed == ["float32 tensors at step t = 2"]


# ----------------------------------------------------------------------------- chapter 5

def ef_reference(grad, residual, k):
    sent = compress.ErrorFeedback(lambda a: compress.topk(a, k))
    sent.residual = residual.clone()
    msg = sent(grad).to_dense()
    return msg, sent.residual


def ef_right(grad, residual, k):
    acc = grad + residual
    keep = torch.zeros(acc.numel(), dtype=torch.bool)
    keep[torch.topk(acc.abs().flatten(), k).indices] = True
    sent = torch.where(keep.view(acc.shape), acc, torch.zeros_like(acc))
    return sent, acc - sent


def test_error_feedback_accepts_the_reference_and_names_mistakes():
    assert checks.check_error_feedback(ef_reference).passed and checks.check_error_feedback(ef_right).passed

    def from_grad_only(grad, residual, k):
        acc = grad + residual
        keep = torch.zeros(acc.numel(), dtype=torch.bool)
        keep[torch.topk(grad.abs().flatten(), k).indices] = True
        s = torch.where(keep.view(acc.shape), acc, torch.zeros_like(acc))
        return s, acc - s
    fails_with(checks.check_error_feedback(from_grad_only), "grad + residual")

    def largest_values(grad, residual, k):
        acc = grad + residual
        keep = torch.zeros(acc.numel(), dtype=torch.bool)
        keep[torch.topk(acc.flatten(), k).indices] = True
        s = torch.where(keep.view(acc.shape), acc, torch.zeros_like(acc))
        return s, acc - s
    fails_with(checks.check_error_feedback(largest_values), "largest magnitudes (abs)")

    def drops_old_residual(grad, residual, k):
        sent, _ = ef_right(grad, residual, k)
        return sent, grad - sent
    fails_with(checks.check_error_feedback(drops_old_residual), "dropped the old residual")

    def keeps_old_residual(grad, residual, k):
        return ef_right(grad, residual, k)[0], residual
    fails_with(checks.check_error_feedback(keeps_old_residual), "not the old residual")

    def sends_grad(grad, residual, k):
        sent, new_res = ef_right(grad, residual, k)
        return torch.where(sent != 0, grad, 0.0), new_res
    fails_with(checks.check_error_feedback(sends_grad), "not grad alone")

    def k_plus_one(grad, residual, k):
        return ef_right(grad, residual, min(k + 1, grad.numel()))
    fails_with(checks.check_error_feedback(k_plus_one), "non-zero entries, expected k")

    fails_with(checks.check_error_feedback(lambda g, r, k: tuple(t.flatten() for t in ef_right(g, r, k))),
               "'a 4x6 matrix'", "dense")
    fails_with(checks.check_error_feedback(lambda g, r, k: tuple(t.to_sparse() for t in ef_right(g, r, k))),
               "dense tensors")
    fails_with(checks.check_error_feedback(lambda g, r, k: (g, r)), "non-zero entries")


def test_soft_threshold_accepts_the_reference_and_names_mistakes():
    assert checks.check_soft_threshold(prune.soft_threshold).passed
    assert checks.check_soft_threshold(torch.nn.functional.softshrink).passed
    assert checks.check_soft_threshold(lambda x, t: x - x.clamp(-t, t)).passed
    fails_with(checks.check_soft_threshold(lambda x, t: x * (x.abs() > t)), "hard thresholding")
    fails_with(checks.check_soft_threshold(lambda x, t: torch.clamp(x.abs() - t, min=0)), "sign")
    fails_with(checks.check_soft_threshold(lambda x, t: x - t * torch.sign(x)), "not change sign")
    fails_with(checks.check_soft_threshold(lambda x, t: torch.clamp(x - t, min=0)), "negative entries")
    fails_with(checks.check_soft_threshold(lambda x, t: torch.clamp(x, -t, t)), "value clipping")
    fails_with(checks.check_soft_threshold(lambda x, t: x * (1 - t)), "scaled x by (1 - tau)")
    fails_with(checks.check_soft_threshold(lambda x, t: prune.soft_threshold(x, t).sum()), "work elementwise")
    float64_only = checks.check_soft_threshold(
        lambda x, t: prune.soft_threshold(x, t) if x.dtype == torch.float64 else x)
    assert float64_only.failed == ["one float32 entry below tau", "a 2-D float32 tensor"]


# ----------------------------------------------------------------------------- chapter 6

def power_step(M, Q):
    P = torch.linalg.qr(M @ Q).Q
    return P, M.T @ P


def test_subspace_iteration_step_accepts_a_correct_step_and_names_mistakes():
    assert checks.check_subspace_iteration_step(power_step).passed
    def svd_basis(M, Q):  # any orthonormal basis of span(M Q) will do
        P = torch.linalg.svd(M @ Q, full_matrices=False).U
        return P, M.T @ P
    assert checks.check_subspace_iteration_step(svd_basis).passed
    assert checks.check_subspace_iteration_step(lambda M, Q: subspace_iteration_step(M, Q)).passed
    fails_with(checks.check_subspace_iteration_step(lambda M, Q: (M @ Q, M.T @ (M @ Q))), "orthonormal")

    def normalised_columns(M, Q):
        P = M @ Q
        P = P / P.norm(dim=0)
        return P, M.T @ P
    fails_with(checks.check_subspace_iteration_step(normalised_columns), "not orthogonal to each other")
    fails_with(checks.check_subspace_iteration_step(lambda M, Q: (power_step(M, Q)[0], 2 * power_step(M, Q)[1])),
               "nothing to average")
    fails_with(checks.check_subspace_iteration_step(lambda M, Q: power_step(M, Q)[::-1]), "you returned (Q_new, P)")
    fails_with(checks.check_subspace_iteration_step(lambda M, Q: (power_step(M, Q)[0], M.T @ (M @ Q))),
               "not M @ Q")
    square = fails_with(checks.check_subspace_iteration_step(lambda M, Q: (power_step(M, Q)[0],
                                                                            M @ power_step(M, Q)[0])), "not M @ P")
    assert "M of shape (9, 9), rank 1" in square.failed


def payload_by_hand(n, m, scheme, rank, ratio):
    if scheme == "allreduce":
        return 4 * n * m
    if scheme == "topk":
        return 8 * math.ceil(ratio * n * m)
    r = min(n, m, rank)
    return 4 * (n + m) * r if (n + m) * r * 2 < n * m else 4 * n * m


def test_check_payload_bytes_accepts_the_reference_and_names_mistakes():
    def good(n, m, scheme, rank, ratio):
        return payload_bytes([(n, m)], scheme, rank=rank, ratio=ratio)

    assert checks.check_payload_bytes(good).passed and checks.check_payload_bytes(payload_by_hand).passed

    def numbers(n, m, scheme, rank, ratio):
        return payload_by_hand(n, m, scheme, rank, ratio) // 4

    def bits(n, m, scheme, rank, ratio):
        return payload_by_hand(n, m, scheme, rank, ratio) * 8

    def no_index(n, m, scheme, rank, ratio):
        return payload_by_hand(n, m, scheme, rank, ratio) // (2 if scheme == "topk" else 1)

    def floor_k(n, m, scheme, rank, ratio):
        return 8 * math.floor(ratio * n * m) if scheme == "topk" else payload_by_hand(n, m, scheme, rank, ratio)

    def fractional_k(n, m, scheme, rank, ratio):
        return 8 * ratio * n * m if scheme == "topk" else payload_by_hand(n, m, scheme, rank, ratio)

    def always_factors(n, m, scheme, rank, ratio):
        return 4 * (n + m) * min(n, m, rank) if scheme == "powersgd" else payload_by_hand(n, m, scheme, rank, ratio)

    def rank_uncapped(n, m, scheme, rank, ratio):
        return 4 * (n + m) * rank if scheme == "powersgd" else payload_by_hand(n, m, scheme, rank, ratio)

    def stub(n, m, scheme, rank, ratio):
        raise NotImplementedError

    for wrong, says in [(numbers, "4 bytes per float32"), (bits, "not bits"), (no_index, "value and its index"),
                        (floor_k, "ceil"), (fractional_k, "whole number"), (always_factors, "sends this matrix dense"),
                        (rank_uncapped, "min(n, m, rank)"), (stub, "not written yet"),
                        (lambda *a: [1, 2], "not what was asked")]:
        fails_with(checks.check_payload_bytes(wrong), says)
    result = fails_with(checks.check_payload_bytes(lambda *a: float(payload_by_hand(*a))), "return it as an int")
    assert len(result.failed) == 8
    assert checks.check_payload_bytes(lambda *a: np.int64(payload_by_hand(*a))).passed
    # a recognised mistake is named without giving away the expected count
    result = checks.check_payload_bytes(numbers)
    assert "expected" not in result.message


# ----------------------------------------------------------------------------- chapter 7

def guard(history, norm, factor):
    if not math.isfinite(norm):
        return True
    recent = [h for h in history if math.isfinite(h)][-20:]
    return bool(recent) and norm > factor * statistics.median(recent)


def test_spike_guard_accepts_numpy_and_tensor_booleans():
    assert checks.check_spike_guard(guard).passed

    def torch_median(history, norm, factor):  # the lower middle value for an even count
        recent = history[-20:]
        return not math.isfinite(norm) or (bool(recent) and norm > factor * float(torch.tensor(recent).median()))
    assert checks.check_spike_guard(torch_median).passed
    assert checks.check_spike_guard(lambda h, n, f: np.bool_(guard(h, n, f))).passed
    assert checks.check_spike_guard(lambda h, n, f: torch.tensor(guard(h, n, f))).passed
    assert checks.check_spike_guard(lambda h, n, f: int(guard(h, n, f))).passed
    fails_with(checks.check_spike_guard(lambda h, n, f: "skip"), "return True (skip) or False (keep)")


def test_spike_guard_names_mistakes_per_trace():
    def mean_guard(history, norm, factor):
        if not math.isfinite(norm):
            return True
        recent = history[-20:]
        return bool(recent) and norm > factor * statistics.mean(recent)
    result = fails_with(checks.check_spike_guard(mean_guard), "median")
    assert result.failed == ["a spike, then a smaller one"]

    def ignores_nan(history, norm, factor):
        recent = history[-20:]
        return bool(recent) and norm > factor * statistics.median(recent)
    result = fails_with(checks.check_spike_guard(ignores_nan), "non-finite")
    assert result.failed == ["a NaN and an inf"]
    fails_with(checks.check_spike_guard(lambda h, n, f: True), "empty history")


def test_warmup_names_mistakes():
    from gradlab import lm

    assert checks.check_warmup(lm.warmup_factor).passed
    fails_with(checks.check_warmup(lambda s, w: 1.0 if w == 0 else min(1.0, s / w)), "off by one")
    fails_with(checks.check_warmup(lambda s, w: 1.0 if w == 0 else (s + 1) / w), "min(1")
    result = fails_with(checks.check_warmup(lambda s, w: min(1.0, (s + 1) / w)), "ZeroDivisionError",
                        "return 1.0 before dividing")
    assert result.failed == ["warmup_steps = 0 (no warm-up)"]
    fails_with(checks.check_warmup(lambda s, w: 1.0 if w == 0 else min(1, (s + 1) // w)), "integer division")
    fails_with(checks.check_warmup(lambda s, w: 1.0 if w == 0 else min(1.0, (s + 1) / (w + 1))),
               "reach 1 at step warmup_steps - 1")
    fails_with(checks.check_warmup(lambda s, w: 1.0 if w <= 1 else min(1.0, s / (w - 1))), "not 0")
    fails_with(checks.check_warmup(lambda s, w: 0.0 if w == 0 else min(1.0, (s + 1) / w)), "no warm-up")
