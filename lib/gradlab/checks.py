"""Auto-checks for the book's coding exercises.

Each ``check_*`` function takes the student's function (or answer), runs it on
several named *cases* against a reference (``torch.optim``, ``torch.nn.utils``,
``torch.func``, or the tested ``gradlab`` function), and returns a
:class:`CheckResult`. A wrong answer raises nothing, whatever it does (a wrong
type, a wrong shape, an exception, a ``NotImplementedError`` stub): the
result's ``passed`` is False and its message names every failing case and the
mistake behind it ("you added the per-tensor norms; ..."), because a checker
that only says "wrong" teaches nothing. Chapters print the result::

    print(checks.check_clip_grad_norm(my_clip_grad_norm_))

prints ``PASSED: ...`` or ``NOT YET: ...``; a stub prints ``NOT YET: your
function is not written yet (it raises NotImplementedError).``

What a result holds
-------------------
``result.passed`` (also ``bool(result)``), ``result.message`` (the text after
``PASSED:``/``NOT YET:``), ``result.cases``, one ``CaseResult(name, passed,
hint)`` per case that ran (a named tuple: ``for name, ok, hint in
result.cases``), ``result.failed`` (the names of the failing cases),
``result.score`` (the fraction of cases that pass, for partial marks such as
"half marks for a check that fails on one named case only") and
``result.selection`` (which cases ran).

Visible and hidden cases, for graders (nbgrader)
------------------------------------------------
Every checker takes ``cases="all"`` (the default, what the chapters run),
``"visible"`` (the cases that test what the exercise states, shown to
students) or ``"hidden"`` (the strongest cases: generators, ``None``
gradients, single tensors, other dtypes, edge values); ``"visible"`` and
``"hidden"`` split ``"all"`` without overlap, and each checker's docstring
lists which cases are which. Case names are stable, so a rubric can refer to
them. ``result.require()`` (or ``checks.require(result)``) raises
``AssertionError`` whose text is ``str(result)``, the student-facing message,
when the check fails, and returns the result otherwise, so that an autograded
test cell is one line per part::

    checks.check_clip_grad_norm(my_clip_grad_norm_, cases="visible").require()
    ### BEGIN HIDDEN TESTS
    checks.check_clip_grad_norm(my_clip_grad_norm_, cases="hidden").require()
    ### END HIDDEN TESTS

(two test cells, one per line, give separate points to the visible and the
hidden cases). To list a checker's cases without an answer, run it on None:
``[c.name for c in checks.check_warmup(None, cases="hidden").cases]``. For
partial marks, read the result instead of requiring it: ``result.score`` is
the fraction of cases passed, and ``len(result.failed) == 1`` (with
``result.failed[0]`` naming the case) is the "half marks for a check that
fails on one named case only" rule. A stub fails every case with the message
``NOT_WRITTEN``: the check itself never raises, and ``require()`` turns the
failure into an ``AssertionError``, so an untouched notebook scores zero.

The checkers use their own random generators: calling one leaves torch's
global random state as it was, so a chapter's later cells draw the same
numbers whether or not a check ran.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

__all__ = ["CheckResult", "CaseResult", "require", "check_global_grad_norm", "check_transient_growth",
           "check_jacobian_product", "check_clip_grad_norm", "check_subspace_iteration_step",
           "check_error_feedback", "check_top_singular", "check_soft_threshold",
           "check_adam_step", "check_warmup", "check_spike_guard", "check_payload_bytes",
           "check_unitwise_norm"]

SELECTIONS = ("all", "visible", "hidden")
NOT_WRITTEN = "your function is not written yet (it raises NotImplementedError)."
GENERATOR_TWICE = ("you iterate over parameters twice; a generator such as model.parameters() is empty "
                   "the second time: turn it into a list first (params = list(parameters)).")
SUMMED_NORMS = "you added the per-tensor norms; add their squares and take one square root."
NO_SQRT = "the norm has no square root: take the square root of the sum of squares, sqrt(sum_p ||g_p||^2)."
GENERATOR_ONCE = ("parameters may be a generator such as model.parameters(), which has no len() and no "
                  "indexing and can be read only once: turn it into a list first (params = list(parameters)).")


class CaseResult(NamedTuple):
    """One case of a check: its ``name``, whether it ``passed``, and the ``hint``
    for the student ("" when it passed)."""

    name: str
    passed: bool
    hint: str


@dataclass(frozen=True)
class CheckResult:
    """Outcome of a check: ``passed``, the ``message`` for the student, and one
    :class:`CaseResult` per case in ``cases`` (``selection`` says which cases ran:
    ``"all"``, ``"visible"`` or ``"hidden"``)."""

    passed: bool
    message: str
    cases: tuple[CaseResult, ...] = ()
    selection: str = "all"

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return ("PASSED: " if self.passed else "NOT YET: ") + self.message

    @property
    def failed(self) -> list[str]:
        """The names of the failing cases, in the order they ran."""
        return [c.name for c in self.cases if not c.passed]

    @property
    def score(self) -> float:
        """The fraction of cases that pass (1.0 or 0.0 for a check without cases)."""
        if not self.cases:
            return 1.0 if self.passed else 0.0
        return sum(c.passed for c in self.cases) / len(self.cases)

    def require(self) -> CheckResult:
        """Return the result if it passed; else raise ``AssertionError`` whose text is
        ``str(self)``, the student-facing message (an nbgrader test cell fails with it)."""
        if not self.passed:
            raise AssertionError(str(self))
        return self


def require(result: CheckResult) -> CheckResult:
    """``result.require()``: raise ``AssertionError`` with the student-facing text if
    ``result`` failed, return it otherwise."""
    if not isinstance(result, CheckResult):
        raise TypeError(f"require expects the CheckResult a check_* function returns, got "
                        f"{type(result).__name__}")
    return result.require()


# ----------------------------------------------------------------------------- machinery

class _Fail(Exception):
    """A case failed; ``hint`` says why, for the student, and ``detail`` (optional)
    what this case gave ("you returned 3, expected 4.43"): cases failing with the
    same hint are listed together, each with its detail."""

    def __init__(self, hint: str, detail: str = ""):
        super().__init__(hint)
        self.hint, self.detail = hint, detail


@dataclass(frozen=True)
class _Case:
    name: str
    data: Any
    visible: bool = True


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}".rstrip(": .") if text else type(exc).__name__


def _call(fn: Callable, *args, convert: Callable | None = None,
          hints: tuple[tuple[str, str], ...] = ()):
    """Run the student's function on ``args`` and return its value, or raise
    :class:`_Fail` saying what went wrong (a stub, an exception, a value that
    ``convert`` cannot turn into what was asked). ``hints`` holds ``(substring,
    hint)`` pairs added when the exception's text contains the substring.
    Warnings raised inside the student's code are not shown."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = fn(*args)
    except NotImplementedError as exc:
        if _is_stub(fn, exc):
            raise _Fail(NOT_WRITTEN) from None
        raise _Fail(f"your function raised {_short(exc)} (from a library call, not from your own "
                    "code): that operation is not supported for these inputs.") from None
    except Exception as exc:  # the student's code: report, don't crash the notebook
        text = f"{type(exc).__name__}: {exc}"
        hint = "".join(f" Hint: {h}" for key, h in hints if key in text)
        raise _Fail(f"your function raised {_short(exc)}.{hint}") from None
    if convert is not None:
        try:
            value = convert(value)
        except Exception as exc:
            raise _Fail(f"your function returned {_describe(value)}, which is not what was asked: "
                        f"{str(exc).rstrip('.')}.") from None
    return value


def _is_stub(fn: Callable, exc: NotImplementedError) -> bool:
    """Whether ``exc`` was raised by the student's function itself (the stub's
    ``raise NotImplementedError``), not by a library call inside it."""
    code = getattr(fn, "__code__", None)
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return code is None or tb is None or tb.tb_frame.f_code is code or not exc.args


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a Tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _as_float(value) -> float:
    if value is None:
        raise TypeError("expected a number, got None (is a return statement missing?)")
    if isinstance(value, numbers.Real):
        return float(value)
    t = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=torch.float64)
    if t.numel() != 1:
        raise TypeError("expected a single number")
    return float(t.reshape(()))


def _tensor(value, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.is_sparse:
            raise TypeError("expected a dense tensor, got a sparse one (use .to_dense())")
        if value.is_complex():
            raise TypeError("expected real numbers, got a complex tensor")
        return value.detach().to(dtype)
    if value is None:
        raise TypeError("expected a tensor, got None (is a return statement missing?)")
    return torch.as_tensor(value, dtype=dtype)


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float = 0.0) -> bool:
    """``allclose`` with ``atol`` relative to the largest entry of ``want``; False on
    a shape mismatch."""
    if got.shape != want.shape:
        return False
    scale = float(want.abs().max()) if want.numel() else 0.0
    return bool(torch.allclose(got.to(want.dtype), want, rtol=rtol, atol=atol * max(scale, 1e-300)))


def _run(fn, cases: Sequence[_Case], judge: Callable, selection: str, summary: str,
         check_callable: bool = True) -> CheckResult:
    """Run ``judge(fn, case.data)`` on the selected cases and collect the outcomes;
    ``summary`` (with ``{n}`` for the number of cases) is the message when every
    case of ``selection="all"`` passes."""
    if selection not in SELECTIONS:
        raise ValueError(f"cases must be one of {', '.join(map(repr, SELECTIONS))}, got {selection!r}")
    chosen = [c for c in cases if selection == "all" or c.visible == (selection == "visible")]
    if check_callable and not callable(fn):
        hint = (f"pass your function itself, e.g. check(my_function), not its result "
                f"(got {_describe(fn)}).")
        outcomes = [CaseResult(c.name, False, hint) for c in chosen]
        return CheckResult(False, _failure_message(outcomes), tuple(outcomes), selection)
    outcomes, details = [], {}
    for case in chosen:
        try:
            judge(fn, case.data)
        except _Fail as fail:
            outcomes.append(CaseResult(case.name, False, f"{fail.detail}: {fail.hint}" if fail.detail else fail.hint))
            details[case.name] = (fail.hint, fail.detail)
        except Exception as exc:  # an answer so far off that comparing it failed
            outcomes.append(CaseResult(case.name, False, f"your result could not be compared with the "
                                                         f"reference ({_short(exc)}); check its type and shape."))
        else:
            outcomes.append(CaseResult(case.name, True, ""))
    outcomes_t = tuple(outcomes)
    if not all(o.passed for o in outcomes):
        return CheckResult(False, _failure_message(outcomes, details), outcomes_t, selection)
    n, names = len(outcomes), ", ".join(f"'{o.name}'" for o in outcomes)
    if selection == "all":
        return CheckResult(True, summary.format(n=n), outcomes_t, selection)
    if selection == "visible":
        return CheckResult(True, f"your answer passes the {n} visible cases ({names}); the full check, "
                                 f"cases='all', has {len(cases)}.", outcomes_t, selection)
    return CheckResult(True, f"your answer passes the {n} hidden cases ({names}).", outcomes_t, selection)


def _failure_message(outcomes: Sequence[CaseResult], details: dict | None = None) -> str:
    """The student's message: every failing case, those with the same hint together
    (each with its detail, if any), and how many cases pass."""
    details = details or {}
    failed = [o for o in outcomes if not o.passed]
    n, k = len(outcomes), len(failed)
    groups: dict[str, list[tuple[str, str]]] = {}
    for o in failed:
        hint, detail = details.get(o.name, (o.hint, ""))
        groups.setdefault(hint, []).append((o.name, detail))
    if k == 1:
        other = f" (The other {n - 1} case{'s pass' if n > 2 else ' passes'}.)" if n > 1 else ""
        return f"on the case '{failed[0].name}': {failed[0].hint}{other}"
    if k == n and len(groups) == 1:
        hint, members = next(iter(groups.items()))
        if hint == NOT_WRITTEN:
            return hint
        if not any(detail for _, detail in members):
            return f"on all {n} cases: {hint}"
    lines = [f"{k} of {n} cases fail:"]
    for hint, members in groups.items():
        if len(members) == 1:
            name, detail = members[0]
            lines.append(f"- case '{name}': {detail + ': ' if detail else ''}{hint}")
            continue
        names = [f"'{name}'" + (f" ({detail})" if detail else "") for name, detail in members]
        lines.append(f"- cases {', '.join(names[:-1])} and {names[-1]}: {hint}")
    if k < n:
        lines.append(f"The other {n - k} case{'s pass' if n - k > 1 else ' passes'}.")
    return "\n".join(lines)


class _CountingIterator:
    """An iterator over parameters, like ``model.parameters()``, that counts how
    many times a pass over it starts (``iter`` is called on it)."""

    def __init__(self, items):
        self._it = iter(list(items))
        self.passes = 0

    def __iter__(self) -> Iterator:
        self.passes += 1
        return self

    def __next__(self):
        return next(self._it)


def _iterates_twice(fn: Callable, params: list, *args) -> bool:
    """Whether ``fn(parameters, *args)`` starts more than one pass over ``parameters``."""
    counter = _CountingIterator(params)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(counter, *args)
    except Exception:
        pass
    return counter.passes >= 2


def _params_with_grads(shapes, scale: float, seed: int, dtype: torch.dtype = torch.float32,
                       without_grad: Sequence[int] = ()) -> list[torch.nn.Parameter]:
    """Parameters with random values and random gradients of size ``scale``
    (``p.grad`` is None for the indices in ``without_grad``), from a private
    generator."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for i, shape in enumerate(shapes):
        p = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype))
        grad = scale * torch.randn(shape, generator=g, dtype=dtype)
        if i not in without_grad:
            p.grad = grad
        params.append(p)
    return params


def _module(params: Sequence[torch.nn.Parameter]) -> torch.nn.Module:
    """A module holding ``params``: its ``.parameters()`` is a generator, as a model's."""
    module = torch.nn.Module()
    for i, p in enumerate(params):
        module.register_parameter(f"p{i}", p)
    return module


def _as_argument(params: list, kind: str):
    """``params`` in the form a caller passes them: a list, a model's
    ``.parameters()`` generator, or a single tensor."""
    if kind == "list":
        return list(params)
    if kind == "generator":
        return _module(params).parameters()
    if kind == "tensor":
        (p,) = params
        return p
    raise ValueError(kind)


# ----------------------------------------------------------------------------- chapter 1

def check_global_grad_norm(fn: Callable, *, cases: str = "all") -> CheckResult:
    """Check a student's ``fn(parameters) -> float``: the global L2 norm of all
    gradients, ``sqrt(sum_p ||g_p||^2)``, skipping parameters without a gradient.

    The reference is ``torch.nn.utils.get_total_norm`` of the gradients cast to
    float64 (in float32 torch's own function returns ``inf`` for gradients of
    size 1e20, because it squares in the gradients' dtype). Visible cases: a list
    of three tensors, one tensor, gradients of 1e20, a parameter without
    ``.grad``; hidden: ``model.parameters()`` (a generator, readable once),
    float64 gradients, no gradient at all (the norm is 0).
    """
    all_cases = [
        _Case("three tensors", ([(3, 4), (5,), (2, 2, 2)], 1.0, 0, torch.float32, (), "list")),
        _Case("one tensor", ([(7,)], 1.0, 2, torch.float32, (), "list")),
        _Case("large gradients (1e20)", ([(10,), (10,)], 1e20, 1, torch.float32, (), "list")),
        _Case("a parameter without .grad", ([(4,), (3,)], 1.0, 3, torch.float32, (1,), "list")),
        _Case("model.parameters(), a generator", ([(3, 4), (4,), (2, 3)], 1.0, 4, torch.float32, (), "generator"),
              visible=False),
        _Case("float64 gradients", ([(5, 2), (3,)], 1.0, 5, torch.float64, (), "list"), visible=False),
        _Case("no parameter has a gradient", ([(3,), (2, 2)], 1.0, 6, torch.float32, (0, 1), "list"),
              visible=False),
    ]

    def judge(fn, data):
        shapes, scale, seed, dtype, without, kind = data
        params = _params_with_grads(shapes, scale, seed, dtype, without)
        grads = [p.grad for p in params if p.grad is not None]
        expected = float(torch.nn.utils.get_total_norm([g.double() for g in grads], 2.0))
        got = _call(fn, _as_argument(params, kind), convert=_as_float, hints=(
            ("NoneType", "some parameters have p.grad = None; skip them."),
            ("empty", "no parameter has a gradient here: the norm of no gradients is 0, so return 0.0."),
            ("generator", GENERATOR_ONCE)))
        if math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-12):
            return
        per_tensor = [float(torch.linalg.vector_norm(g, dtype=torch.float64)) for g in grads]
        if kind == "generator" and _iterates_twice(fn, _params_with_grads(shapes, scale, seed, dtype, without)):
            raise _Fail(GENERATOR_TWICE)
        if not math.isfinite(got):
            raise _Fail("the result overflowed: squaring 1e20 in float32 gives inf. Square in "
                        "float64: torch.linalg.vector_norm(p.grad, dtype=torch.float64).")
        if math.isclose(got, sum(per_tensor), rel_tol=1e-4):
            raise _Fail(SUMMED_NORMS)
        if math.isclose(got, expected**2, rel_tol=1e-4):
            raise _Fail("you returned the squared norm; take the square root at the end.")
        if per_tensor and math.isclose(got, max(per_tensor), rel_tol=1e-4):
            raise _Fail("you returned the largest per-tensor norm; the global norm combines all of them.")
        raise _Fail("compare with torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]) "
                    "on small gradients.", f"you returned {got:.6g}, expected {expected:.6g}")

    return _run(fn, all_cases, judge, cases,
                "your global gradient norm matches the float64 reference on all {n} cases, including "
                "gradients of 1e20, parameters without .grad and model.parameters() (a generator).")


def check_transient_growth(W, *, min_peak: float = 100.0, max_sigma: float = 4.0, max_power: int = 1000,
                           cases: str = "all") -> CheckResult:
    """Check a matrix ``W`` whose spectral radius is below 1 and whose largest
    singular value is at most ``max_sigma``, but whose powers still grow:
    ``max_k ||W^k||_2 >= min_peak`` for some ``k <= max_power``, and ``||W^k||``
    decays afterwards (below half the peak by ``k = max_power``).

    Transient growth of non-normal matrices (Trefethen and Embree 2005): for
    ``W = [[a, c], [0, a]]``, ``||W^k|| ~ c k a^(k-1)``, which peaks near
    ``k = 1/ln(1/a)`` at about ``c / (e a ln(1/a))``. Bounding ``sigma_max``
    (about ``c``) makes the peak come from the length of the transient, so
    ``a`` must be close to 1. Visible cases: a square finite matrix,
    ``rho < 1``, ``sigma_max <= max_sigma``, the peak; hidden: the decay."""
    if not (isinstance(min_peak, (int, float)) and min_peak > 0):
        raise ValueError(f"min_peak must be a number > 0, got {min_peak!r}")
    if not (isinstance(max_sigma, (int, float)) and max_sigma > 0):
        raise ValueError(f"max_sigma must be a number > 0, got {max_sigma!r}")
    if not (isinstance(max_power, int) and max_power >= 2):
        raise ValueError(f"max_power must be an integer >= 2, got {max_power!r}")
    names = ["a square matrix of finite numbers", "spectral radius below 1",
             f"largest singular value at most {max_sigma:g}", f"a peak of at least {min_peak:g}",
             f"a decay after the peak (below half of it by k = {max_power})"]
    all_cases = [_Case(name, i, visible=i < 4) for i, name in enumerate(names)]
    info: dict[str, Any] = {}
    try:
        M = _tensor(W)
        if M.dim() != 2 or M.shape[0] != M.shape[1] or M.numel() == 0:
            info["problem"] = f"W must be a square matrix, got shape {tuple(M.shape)}."
        elif not bool(torch.isfinite(M).all()):
            info["problem"] = "W contains NaN or inf."
    except Exception as exc:
        info["problem"] = f"W must be a square matrix of numbers (a tensor or nested lists), got " \
                          f"{_describe(W)} ({_short(exc)})."
    if "problem" not in info:
        info["rho"] = float(torch.linalg.eigvals(M).abs().max())
        info["sigma"] = float(torch.linalg.matrix_norm(M, 2))
        norms, P = [], torch.eye(M.shape[0], dtype=torch.float64)
        for _ in range(max_power):
            P = P @ M
            if not bool(torch.isfinite(P).all()):  # the powers overflowed: they grow without end
                norms.append(math.inf)
                break
            norms.append(float(torch.linalg.matrix_norm(P, 2)))
        info["norms"] = norms + [math.inf] * (max_power - len(norms))
        info["peak"] = max(info["norms"])
        info["k"] = info["norms"].index(info["peak"]) + 1 if math.isfinite(info["peak"]) else max_power

    def judge(_, i):
        if "problem" in info:
            raise _Fail(info["problem"] if i == 0 else "not checked: W is not a square matrix of finite numbers.")
        rho, sigma, peak, k = info["rho"], info["sigma"], info["peak"], info["k"]
        if i == 1 and rho >= 1.0:
            raise _Fail(f"the spectral radius of W is {rho:.4g} >= 1, so its powers do not decay; the "
                        "exercise asks for rho < 1.")
        if i == 2 and sigma > max_sigma:
            raise _Fail(f"sigma_max(W) = {sigma:.4g} > {max_sigma:g}; the exercise asks for a largest "
                        f"singular value of at most {max_sigma:g}.")
        if i >= 3 and rho >= 1.0:
            raise _Fail("not checked: with rho >= 1 the powers do not decay, which is not transient growth.")
        if i == 3 and peak < min_peak:
            raise _Fail(f"rho = {rho:.3g} and sigma_max(W) = {sigma:.3g}, but max_k ||W^k|| = {peak:.3g} "
                        f"(at k = {k}) < {min_peak:g}. Look at the section's example.")
        if i == 4 and not info["norms"][-1] < peak / 2:
            raise _Fail(f"||W^k|| has not fallen below half its peak by k = {max_power}: with rho = {rho:.4g} "
                        "so close to 1 the transient outlasts the check; move rho a little further from 1.")

    summary = ""
    if "problem" not in info:
        summary = (f"rho(W) = {info['rho']:.3g} < 1 and sigma_max(W) = {info['sigma']:.3g}, yet ||W^k|| peaks "
                   f"at {info['peak']:.4g} for k = {info['k']} before decaying to {info['norms'][-1]:.3g} "
                   f"at k = {max_power}.")
    return _run(W, all_cases, judge, cases, summary.replace("{", "{{").replace("}", "}}"), check_callable=False)


def _jacobian_variant(weights, x, deriv: str = "output", order: str = "last-left",
                      side: str = "left") -> torch.Tensor | None:
    """The product of layer Jacobians, right (the defaults) or with a typical slip:
    ``deriv`` the derivative factor (``"output"``: 1 - h_l**2, ``"pre"``: 1 - z_l**2,
    ``"unsquared"``: 1 - h_l, ``"input"``: 1 - h_{l-1}**2, ``"none"``: 1), ``order``
    ``"first-left"`` for the reversed product, ``side`` ``"right"`` for W diag(d).
    None when the slip gives no product of matching shapes."""
    try:
        h, J = x, None
        for W in weights:
            z = W @ h
            out = torch.tanh(z)
            d = {"output": 1 - out**2, "pre": 1 - z**2, "unsquared": 1 - out, "input": 1 - h**2,
                 "none": torch.ones_like(out)}[deriv]
            L = torch.diag(d) @ W if side == "left" else W @ torch.diag(d)
            J = L if J is None else (L @ J if order == "last-left" else J @ L)
            h = out
        return J
    except RuntimeError:
        return None


def check_jacobian_product(fn: Callable, *, cases: str = "all") -> CheckResult:
    """Check ``fn(weights, x) -> Tensor``: the input-output Jacobian of the tanh
    network ``h_l = tanh(W_l h_{l-1})`` as the product of the layer Jacobians
    ``J_l = diag(1 - h_l**2) W_l`` (last layer on the left), compared with
    ``torch.func.jacrev`` of the network. Visible cases: a 3-layer network and one
    layer; hidden: a square network (where a transposed or reversed product has the
    right shape), 50 layers of width 64 (the exercise's measurement) and float32."""
    all_cases = [_Case("a 3-layer tanh network (5 -> 6 -> 4 -> 3)", ([5, 6, 4, 3], 1.0, 7, torch.float64)),
                 _Case("one layer (4 -> 3)", ([4, 3], 1.0, 8, torch.float64)),
                 _Case("a square network (4 -> 4 -> 4 -> 4)", ([4, 4, 4, 4], 1.5, 9, torch.float64), visible=False),
                 _Case("50 layers of width 64", ([64] * 51, 1.0, 10, torch.float64), visible=False),
                 _Case("float32 weights and input", ([5, 6, 3], 1.0, 11, torch.float32), visible=False)]

    def judge(fn, data):
        dims, gain, seed, dtype = data
        g = torch.Generator().manual_seed(seed)
        weights = [gain * torch.randn(b, a, generator=g, dtype=dtype) / a**0.5 for a, b in zip(dims[:-1], dims[1:])]
        x = torch.randn(dims[0], generator=g, dtype=dtype)
        w64, x64 = [W.double() for W in weights], x.double()

        def net(v):
            for W in w64:
                v = torch.tanh(W @ v)
            return v

        expected = torch.func.jacrev(net)(x64)
        got = _call(fn, [W.clone() for W in weights], x.clone(), convert=_tensor,
                    hints=(("dtype", "keep the inputs' dtype, e.g. torch.eye(n, dtype=x.dtype)."),))
        rtol, atol = (1e-6, 1e-9) if dtype == torch.float64 else (1e-4, 1e-5)
        if got.shape != expected.shape:
            hint = ""
            if got.shape == expected.T.shape:
                hint = " That is the transpose: multiply with the last layer on the left, J = J_L ... J_2 J_1."
            raise _Fail(f"the Jacobian should have shape {tuple(expected.shape)} (outputs x inputs), got "
                        f"{tuple(got.shape)}.{hint}")
        if _close(got, expected, rtol, atol):
            return
        slips = [
            (expected.T, "that is the transpose: multiply with the last layer on the left, J = J_L ... J_2 J_1."),
            (_jacobian_variant(w64, x64, deriv="none"), "you multiplied the weights only; each layer's Jacobian "
             "also has the factor diag(tanh'(z_l)) = diag(1 - h_l**2)."),
            (_jacobian_variant(w64, x64, order="first-left"), "the product is in the wrong order: the last "
             "layer's Jacobian goes on the left, J = J_L ... J_2 J_1."),
            (_jacobian_variant(w64, x64, deriv="pre"), "tanh'(z) = 1 - tanh(z)**2 = 1 - h_l**2, not 1 - z_l**2 "
             "(z_l = W_l h_{l-1} is the input of tanh, h_l its output)."),
            (_jacobian_variant(w64, x64, deriv="unsquared"), "tanh' = 1 - tanh**2: square h_l."),
            (_jacobian_variant(w64, x64, deriv="input", side="right"), "the factor belongs to the layer's output: "
             "J_l = diag(1 - h_l**2) W_l, not W_l diag(1 - h_{l-1}**2)."),
            (_jacobian_variant(w64, x64, deriv="input"), "layer l's factor uses its output h_l = tanh(W_l h_{l-1}), "
             "not its input h_{l-1}."),
            (_jacobian_variant(w64, x64, side="right"), "diag(1 - h_l**2) multiplies from the left: "
             "J_l = diag(1 - h_l**2) W_l, not W_l diag(1 - h_l**2)."),
        ]
        for candidate, hint in slips:
            if candidate is not None and _close(got, candidate, rtol, atol):
                raise _Fail(hint)
        err = float((got - expected).abs().max())
        raise _Fail("the values differ from torch.func.jacrev of the network. "
                    "Check the order of the product (last layer on the left) and the derivative "
                    "tanh' = 1 - tanh**2.", f"max abs error {err:.3g}")

    return _run(fn, all_cases, judge, cases,
                "your product of layer Jacobians equals torch.func.jacrev of the network on all {n} cases, "
                "up to 50 layers deep and in float32.")


# ----------------------------------------------------------------------------- chapter 2

SINGLE_TENSOR = ("torch.nn.utils.clip_grad_norm_ also accepts a single tensor (the chapter clips one "
                 "tensor at a time this way), and iterating over a tensor gives its rows, not the tensor: "
                 "start with `if isinstance(parameters, torch.Tensor): parameters = [parameters]`.")


def check_clip_grad_norm(fn: Callable, *, cases: str = "all") -> CheckResult:
    """Check ``fn(parameters, max_norm) -> total_norm``: clip all gradients together, in
    place, to a global L2 norm of at most ``max_norm``, returning the norm before
    clipping, compared with ``torch.nn.utils.clip_grad_norm_``.

    ``parameters`` comes as the chapter passes it: a list, ``model.parameters()``
    (a generator, readable once), or a single tensor; some ``p.grad`` may be None.
    Visible cases: three lists (clipped, nothing to clip, a large and a tiny
    tensor); hidden: a generator, a parameter without ``.grad``, a single tensor,
    float64 gradients.
    """
    all_cases = [
        _Case("three tensors, max_norm=1 (clipped)", ([(4, 3), (5,), (2, 2)], 3.0, 10, torch.float32, (), "list", 1.0)),
        _Case("small gradients, max_norm=100 (nothing to clip)",
              ([(6,), (3, 3)], 0.1, 11, torch.float32, (), "list", 100.0)),
        _Case("one large and one tiny tensor", ([(8,), (8,)], [50.0, 1e-3], 12, torch.float32, (), "list", 2.0)),
        _Case("model.parameters(), a generator", ([(3, 4), (4,), (2, 3)], 2.0, 13, torch.float32, (), "generator",
                                                   1.0), visible=False),
        _Case("a parameter without .grad", ([(5,), (2, 3), (4,)], 2.0, 14, torch.float32, (1,), "list", 1.0),
              visible=False),
        _Case("a single tensor instead of a list", ([(3, 5)], 2.0, 15, torch.float32, (), "tensor", 1.0),
              visible=False),
        _Case("float64 gradients", ([(4, 2), (6,)], 2.0, 16, torch.float64, (), "list", 1.5), visible=False),
    ]

    def make(data):
        shapes, scale, seed, dtype, without, _, _ = data
        if isinstance(scale, list):  # one scale per tensor
            return [p for i, (shape, s) in enumerate(zip(shapes, scale))
                    for p in _params_with_grads([shape], s, seed + 100 * i, dtype)]
        return _params_with_grads(shapes, scale, seed, dtype, without)

    def judge(fn, data):
        kind, max_norm = data[5], data[6]
        params = make(data)
        ref = [p.detach().clone().requires_grad_(True) for p in params]
        for r, p in zip(ref, params):
            r.grad = None if p.grad is None else p.grad.clone()
        expected_total = float(torch.nn.utils.clip_grad_norm_(ref, max_norm))
        grads_before = [p.grad for p in params]
        before = [None if g is None else g.clone() for g in grads_before]
        values_before = [p.detach().clone() for p in params]
        hints = (("NoneType", "some parameters have p.grad = None; skip them."), ("generator", GENERATOR_ONCE))
        if kind == "tensor":
            hints = (("", SINGLE_TENSOR),)
        got_total = _call(fn, _as_argument(params, kind), max_norm, hints=hints)

        problems = []
        # the gradients: in place, scaled by one factor like torch's
        if any(g is None and p.grad is not None for g, p in zip(grads_before, params)):
            problems.append("a parameter whose p.grad was None now has a gradient; leave such parameters alone.")
        present = [(p, b, g0, r) for p, b, g0, r in zip(params, before, grads_before, ref) if b is not None]
        if any(p.grad is None for p, *_ in present):
            problems.append("some p.grad became None; scale the gradients, don't remove them.")
        if not problems:
            # torch scales by max_norm / (norm + 1e-6); without the 1e-6 the factor differs by up to 1e-6
            rtol, atol = (1e-4, 1e-7) if data[3] == torch.float32 else (1e-5, 1e-9)
            got = torch.cat([p.grad.detach().flatten().double() for p, *_ in present])
            want = torch.cat([r.grad.flatten().double() for *_, r in present])
            old = torch.cat([b.flatten().double() for _, b, _, _ in present])
            if _close(got, want, rtol, atol):
                if any(p.grad is not g0 for p, _, g0, _ in present):
                    problems.append("the values are right, but you replaced p.grad by a new tensor; clip in "
                                    "place, p.grad.mul_(scale), as torch.nn.utils.clip_grad_norm_ does.")
            elif torch.equal(got, old):
                values_changed = any(not torch.equal(p.detach(), v) for p, v in zip(params, values_before))
                if kind == "generator" and _iterates_twice(fn, make(data), max_norm):
                    problems.append(GENERATOR_TWICE)
                elif kind == "tensor":
                    problems.append(f"the gradient did not change. {SINGLE_TENSOR}")
                elif values_changed:
                    problems.append("you scaled the parameters (p or p.data), not their gradients p.grad.")
                else:
                    problems.append("the gradients did not change: modify p.grad in place (p.grad.mul_(scale)) "
                                    "instead of computing new tensors.")
            else:
                problems.append(_clip_slip(got, old, [b for _, b, _, _ in present], max_norm, rtol, atol))
        # the returned norm
        if got_total is None:
            problems.append("your function returned None: return the total norm before clipping, as "
                            "torch.nn.utils.clip_grad_norm_ does.")
        else:
            try:
                total = _as_float(got_total)
            except Exception as exc:
                total = None
                problems.append(f"your function returned {_describe(got_total)}, which is not the total norm: "
                                f"{str(exc).rstrip('.')}.")
            if total is not None and not math.isclose(total, expected_total, rel_tol=1e-4):
                norms = [float(torch.linalg.vector_norm(b.double())) for _, b, _, _ in present]
                after = math.sqrt(sum(float(torch.linalg.vector_norm(p.grad.double())) ** 2
                                      for p, *_ in present if p.grad is not None))
                if expected_total > max_norm and math.isclose(total, after, rel_tol=1e-4):
                    problems.append("you returned the norm after clipping; return the norm before it.")
                elif len(norms) > 1 and math.isclose(total, sum(norms), rel_tol=1e-4):
                    problems.append(SUMMED_NORMS)
                elif math.isclose(total, expected_total**2, rel_tol=1e-4):
                    problems.append(NO_SQRT)
                else:
                    problems.append(f"you returned the norm {total:.6g}, expected {expected_total:.6g}: return "
                                    "sqrt(sum over tensors of ||p.grad||^2), computed before clipping.")
        if problems:
            # one cause, one sentence: a single tensor or a generator read twice explains the rest
            for cause in (GENERATOR_TWICE, SINGLE_TENSOR):
                if any(cause in problem for problem in problems):
                    problems = [next(problem for problem in problems if cause in problem)]
            raise _Fail(" Also, ".join(dict.fromkeys(problems)))

    return _run(fn, all_cases, judge, cases,
                "your clipping matches torch.nn.utils.clip_grad_norm_ on all {n} cases: same returned norm, "
                "same clipped gradients, small gradients left alone, for a list, model.parameters(), a single "
                "tensor, a parameter without .grad and float64 gradients.")


def _clip_slip(got, old, before, max_norm, rtol, atol) -> str:
    """Name the mistake behind clipped gradients ``got`` (flat) that differ from torch's."""
    norms = [float(torch.linalg.vector_norm(b.double())) for b in before]
    total = math.sqrt(sum(n * n for n in norms))
    per_tensor = torch.cat([b.double().flatten() * min(1.0, max_norm / (n + 1e-6)) for b, n in zip(before, norms)])
    if len(before) > 1 and _close(got, per_tensor, rtol, atol):
        return "you clipped each tensor separately; scale all of them by one factor computed from the global norm."
    for norm, why in ((sum(norms), SUMMED_NORMS), (total**2, NO_SQRT)):
        if _close(got, old * min(1.0, max_norm / (norm + 1e-6)), rtol, atol):
            return why
    if total <= max_norm and float(got.norm()) > float(old.norm()) * (1 + 1e-6):
        return "you enlarged small gradients; the scale factor is min(1, max_norm / norm)."
    if _close(got, old * (total / max_norm), rtol, atol):
        return "the scale factor is upside down: multiply by max_norm / norm, not norm / max_norm."
    return "the clipped gradients differ from torch.nn.utils.clip_grad_norm_'s."


# ----------------------------------------------------------------------------- chapter 6 (low rank)

def check_subspace_iteration_step(fn: Callable, *, cases: str = "all") -> CheckResult:
    """Check ``fn(M, Q) -> (P, Q_new)``: one PowerSGD subspace-iteration step on one worker,
    ``P = orth(M Q)`` (orthonormal columns) and ``Q_new = M^T P``, so that
    ``P @ Q_new.T`` is the projection of ``M`` on span(M Q). The reference is
    :func:`gradlab.compress.subspace_iteration_step`; signs and rotations of ``P`` are
    allowed, so only the product ``P Q_new^T`` and ``P^T P = I`` are compared.
    Visible cases: a tall and a wide matrix; hidden: a square matrix at rank 1
    (where ``M P`` has the shape of ``M^T P``), rank ``min(n, m)``, float32."""
    from gradlab.compress import subspace_iteration_step

    all_cases = [_Case("M of shape (12, 8), rank 2", ((12, 8), 2, 11, torch.float64)),
                 _Case("M of shape (6, 20), rank 3", ((6, 20), 3, 12, torch.float64)),
                 _Case("M of shape (9, 9), rank 1", ((9, 9), 1, 13, torch.float64), visible=False),
                 _Case("M of shape (5, 8), rank 5 = min(n, m)", ((5, 8), 5, 14, torch.float64), visible=False),
                 _Case("float32 M of shape (10, 7), rank 2", ((10, 7), 2, 15, torch.float32), visible=False)]

    def judge(fn, data):
        (n, m), r, seed, dtype = data
        g = torch.Generator().manual_seed(seed)
        M = torch.randn(n, m, generator=g, dtype=dtype)
        Q0 = torch.randn(m, r, generator=g, dtype=dtype)
        P_ref, Q_ref = subspace_iteration_step(M.double(), Q0.double())
        expected = P_ref @ Q_ref.T
        out = _call(fn, M.clone(), Q0.clone())
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise _Fail(f"return a pair (P, Q_new), got {_describe(out)}.")
        P, Q = (_tensor(t) for t in out)
        if n != m and P.shape == (m, r) and Q.shape == (n, r):
            raise _Fail("you returned (Q_new, P); return (P, Q_new).")
        if P.shape != (n, r) or Q.shape != (m, r):
            raise _Fail(f"P should be {n} x {r} and Q_new {m} x {r}, got {tuple(P.shape)} and {tuple(Q.shape)}.")
        tol = 1e-8 if dtype == torch.float64 else 1e-4
        PtP = P.T @ P
        if not torch.allclose(PtP, torch.eye(r, dtype=torch.float64), atol=tol):
            if torch.allclose(PtP.diagonal(), torch.ones(r, dtype=torch.float64), atol=tol):
                raise _Fail("each column of P has norm 1, but the columns are not orthogonal to each other: "
                            "normalising columns is not enough; orthogonalise M @ Q, e.g. with torch.linalg.qr(...).Q.")
            raise _Fail("the columns of P are not orthonormal (P^T P != I). Orthogonalise M @ Q, e.g. with "
                        "torch.linalg.qr(...).Q.")
        if _close(P @ Q.T, expected, 0.0, tol):
            return
        M64, MQ = M.double(), M.double() @ Q0.double()
        same_span = _close(P @ P.T, P_ref @ P_ref.T, 0.0, tol)
        if _close(P @ Q.T, 2 * expected, 0.0, tol):
            hint = "on one worker there is nothing to average: Q_new = M.T @ P, not 2 M.T @ P."
        elif _close(Q, M64.T @ MQ, 0.0, tol):
            hint = "Q_new = M.T @ P uses the orthonormalised P, not M @ Q."
        elif n == m and _close(Q, M64 @ P, 0.0, tol):
            hint = "Q_new = M.T @ P, with the transpose of M, not M @ P."
        elif same_span:
            hint = "P is right; Q_new = M.T @ P."
        elif _close(Q, M64.T @ P, 0.0, tol):
            hint = "Q_new = M.T @ P is right for your P, but P must span the columns of M @ Q: orthonormalise M @ Q."
        else:
            hint = "compute P from M @ Q (orthonormalised), then Q_new = M.T @ P."
        err = float((P @ Q.T - expected).abs().max())
        raise _Fail(f"P @ Q_new.T is not the projection of M on span(M Q): {hint}", f"max error {err:.3g}")

    return _run(fn, all_cases, judge, cases,
                "one subspace-iteration step on all {n} cases: P has orthonormal columns and P @ Q_new.T = "
                "P P^T M, as in gradlab.compress.subspace_iteration_step.")


# ----------------------------------------------------------------------------- chapter 5

def check_error_feedback(fn: Callable, *, cases: str = "all") -> CheckResult:
    """Check ``fn(grad, residual, k) -> (sent, new_residual)``: top-k of ``grad + residual``
    with error feedback (Stich et al. 2018), both results dense of ``grad``'s shape,
    against a reference on random cases. Visible cases: two vectors; hidden: a
    matrix, ``k`` equal to the size, ``k = 1`` on a 3-D tensor, float64."""
    all_cases = [_Case("a vector, zero residual", ((20,), 3, 0, False, torch.float32)),
                 _Case("a vector with a residual", ((30,), 5, 1, True, torch.float32)),
                 _Case("a 4x6 matrix", ((4, 6), 4, 2, True, torch.float32), visible=False),
                 _Case("k equal to the size", ((5,), 5, 3, True, torch.float32), visible=False),
                 _Case("k = 1 on a 2x3x4 tensor", ((2, 3, 4), 1, 4, True, torch.float32), visible=False),
                 _Case("float64 tensors", ((25,), 6, 5, True, torch.float64), visible=False)]

    def judge(fn, data):
        shape, k, seed, with_residual, dtype = data
        g = torch.Generator().manual_seed(seed)
        grad = torch.randn(shape, generator=g, dtype=dtype)
        residual = (0.5 * torch.randn(shape, generator=g, dtype=dtype) if with_residual
                    else torch.zeros(shape, dtype=dtype))
        acc = (grad + residual).double()
        keep = torch.zeros(acc.numel(), dtype=torch.bool)
        keep[torch.topk(acc.abs().flatten(), k).indices] = True
        want_sent = torch.where(keep.view(acc.shape), acc, torch.zeros_like(acc))
        out = _call(fn, grad.clone(), residual.clone(), k)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise _Fail(f"return a pair (sent, new_residual) of dense tensors, got {_describe(out)}.")
        if any(isinstance(t, torch.Tensor) and t.is_sparse for t in out):
            raise _Fail("return dense tensors of grad's shape (zeros where nothing is sent), e.g. with .to_dense().")
        sent, new_res = (_tensor(t) for t in out)
        if sent.shape != grad.shape or new_res.shape != grad.shape:
            raise _Fail(f"the shapes are {tuple(sent.shape)} and {tuple(new_res.shape)}; both must be "
                        f"{tuple(grad.shape)} (dense), e.g. sent.view_as(grad).")
        atol = 1e-6 if dtype == torch.float32 else 1e-12
        if not torch.allclose(sent + new_res, acc, atol=atol):
            sent_mask = sent != 0
            if torch.allclose(new_res, grad.double() - sent, atol=atol):
                hint = "you dropped the old residual: new_residual = grad + residual - sent."
            elif torch.allclose(new_res, residual.double(), atol=atol):
                hint = "the new residual is what was not sent, grad + residual - sent, not the old residual."
            elif torch.allclose(sent, torch.where(sent_mask, grad.double(), 0.0), atol=atol):
                hint = "at the chosen entries send grad + residual, not grad alone."
            else:
                hint = "the residual must keep exactly what was not sent."
            raise _Fail(f"sent + new_residual != grad + residual: {hint}")
        nnz = int((sent != 0).sum())
        if nnz != k:
            raise _Fail(f"you sent {nnz} non-zero entries, expected k = {k}.")
        if not torch.allclose(sent, want_sent, atol=atol):
            grad_top = torch.zeros(grad.numel(), dtype=torch.bool)
            grad_top[torch.topk(grad.abs().flatten(), k).indices] = True
            largest = torch.zeros_like(keep).index_fill_(0, torch.topk(acc.flatten(), k).indices, True)
            if torch.equal(sent.flatten() != 0, grad_top):
                hint = "you chose the entries from grad alone; choose them from grad + residual."
            elif torch.equal(sent.flatten() != 0, largest):
                hint = "you chose the k largest values; choose the k largest magnitudes (abs)."
            else:
                hint = "sent must hold the k entries of grad + residual with the largest magnitude."
            raise _Fail(hint)

    return _run(fn, all_cases, judge, cases,
                "top-k with error feedback on all {n} cases: the k largest magnitudes of grad + residual are "
                "sent and the rest is kept, as in gradlab.compress.ErrorFeedback.")


# ----------------------------------------------------------------------------- chapter 3

def check_top_singular(fn: Callable, *, cases: str = "all") -> CheckResult:
    """Check ``fn(W, v, num_iters) -> (sigma, u, v)``: power iteration for the largest
    singular value ``sigma_max(W)`` and unit singular vectors, started from ``v``.
    The reference is ``torch.linalg.matrix_norm(W, 2)`` (and
    :func:`gradlab.spectral.power_iteration` converges to it on these cases); a
    non-normal matrix tells ``sigma_max`` (iterate ``W^T W``) from the spectral
    radius (iterate ``W``). Visible cases: the non-normal matrix and a tall one;
    hidden: a wide one, float32, and entries of size 1000 (iterates that are not
    normalised at every step overflow)."""
    nonnormal = torch.tensor([[0.9, 5.0, 0.0], [0.0, 0.5, 5.0], [0.0, 0.0, 0.2]], dtype=torch.float64)
    f64, f32 = torch.float64, torch.float32
    all_cases = [_Case("a non-normal 3 x 3 matrix (rho = 0.9, sigma_max about 5.3)", (nonnormal, 21, f64, 1.0)),
                 _Case("a 20 x 12 matrix", ((20, 12), 22, f64, 1.0)),
                 _Case("a 12 x 20 matrix", ((12, 20), 23, f64, 1.0), visible=False),
                 _Case("a float32 20 x 12 matrix", ((20, 12), 24, f32, 1.0), visible=False),
                 _Case("a 10 x 10 matrix with entries of size 1000", ((10, 10), 25, f64, 1000.0), visible=False)]

    def judge(fn, data):
        spec, seed, dtype, scale = data
        g = torch.Generator().manual_seed(seed)
        W = spec.clone() if isinstance(spec, torch.Tensor) else scale * torch.randn(*spec, generator=g, dtype=dtype)
        v0 = torch.randn(W.shape[1], generator=g, dtype=dtype)
        iters = 100
        exact = float(torch.linalg.matrix_norm(W.double(), 2))
        out = _call(fn, W.clone(), v0.clone(), iters)
        if not (isinstance(out, (tuple, list)) and len(out) == 3):
            raise _Fail(f"return a triple (sigma, u, v), got {_describe(out)}.")
        try:
            sigma = _as_float(out[0])
        except Exception as exc:
            raise _Fail(f"sigma must be one number: {str(exc).rstrip('.')}.") from None
        u, v = (_tensor(t).flatten() for t in out[1:])
        if not (math.isfinite(sigma) and bool(torch.isfinite(u).all()) and bool(torch.isfinite(v).all())):
            raise _Fail("your results are not finite (inf or nan): the iterates overflowed. Normalise u and v "
                        "after every product, not only at the end.")
        rows, cols = W.shape
        if rows != cols and u.numel() == cols and v.numel() == rows:
            raise _Fail("you returned (sigma, v, u): u has one entry per row of W and v one per column, "
                        "with W v = sigma u.")
        if u.numel() != rows or v.numel() != cols:
            raise _Fail(f"u should have {rows} entries (rows of W) and v {cols} (columns), got {u.numel()} "
                        f"and {v.numel()}.")
        rtol = 1e-6 if dtype == torch.float64 else 1e-4
        if not (math.isclose(float(u.norm()), 1.0, rel_tol=rtol) and math.isclose(float(v.norm()), 1.0, rel_tol=rtol)):
            raise _Fail(f"u and v must be unit vectors (norms {float(u.norm()):.4g} and {float(v.norm()):.4g}). "
                        "Normalise after every product, or the iterates overflow or underflow.")
        if math.isclose(sigma, exact, rel_tol=rtol):
            if float((W.double() @ v - sigma * u).norm()) > 10 * rtol * exact:
                raise _Fail("sigma is right but W v != sigma u: return the left vector u = W v / ||W v|| that "
                            "belongs to your v.")
            return
        if sigma < 0 and math.isclose(-sigma, exact, rel_tol=rtol):
            raise _Fail("sigma_max is a norm, ||W v||, so it is positive; you returned its negative.")
        if rows == cols:
            rho = float(torch.linalg.eigvals(W.double()).abs().max())
            if not math.isclose(rho, exact, rel_tol=1e-3) and math.isclose(sigma, rho, rel_tol=1e-3):
                raise _Fail(f"you returned {sigma:.4g}, the spectral radius rho(W), not sigma_max = {exact:.4g}: "
                            "iterating v <- W v finds the largest eigenvalue. Alternate u <- W v, v <- W^T u.")
        if math.isclose(sigma, exact**2, rel_tol=rtol):
            raise _Fail(f"you returned {sigma:.6g} = sigma_max^2, the top eigenvalue of W^T W; sigma_max is its "
                        "square root, ||W v||.")
        raise _Fail("sigma_max(W) is torch.linalg.matrix_norm(W, 2); power iteration alternates u <- W v, "
                    "v <- W^T u, normalising each time.", f"you returned sigma = {sigma:.6g}, expected {exact:.6g}")

    return _run(fn, all_cases, judge, cases,
                "your power iteration finds sigma_max (not the spectral radius) and unit vectors with "
                "W v = sigma u on all {n} cases, like gradlab.spectral.power_iteration.")


def check_soft_threshold(fn: Callable, *, cases: str = "all") -> CheckResult:
    """Check ``fn(x, tau)``: the soft-threshold ``sign(x) * max(|x| - tau, 0)``, the proximal
    operator of ``tau * ||x||_1`` (one half of an ISTA step). Visible cases: random
    values and values exactly at ``+-tau``; hidden: ``tau = 0``, a large ``tau``,
    one float32 entry below ``tau`` (the chapter's own call) and a 2-D float32 tensor."""
    g = torch.Generator().manual_seed(0)
    all_cases = [
        _Case("random values, tau = 0.5", (torch.randn(50, generator=g, dtype=torch.float64), 0.5)),
        _Case("values exactly at +-tau", (torch.tensor([-1.0, -0.3, 0.3, 1.0], dtype=torch.float64), 0.3)),
        _Case("tau = 0 (no shrinkage)", (torch.randn(3, 4, generator=g, dtype=torch.float64), 0.0), visible=False),
        _Case("a large tau", (torch.randn(20, generator=g, dtype=torch.float64), 10.0), visible=False),
        _Case("one float32 entry below tau", (torch.tensor([0.004]), 0.01), visible=False),
        _Case("a 2-D float32 tensor", (torch.randn(4, 5, generator=g), 0.3), visible=False),
    ]

    def judge(fn, data):
        x, tau = data
        x64 = x.double()
        want = torch.sign(x64) * torch.clamp(x64.abs() - tau, min=0)
        got = _call(fn, x.clone(), tau, convert=_tensor)
        if got.shape != x.shape:
            raise _Fail(f"the result has shape {tuple(got.shape)}, expected {tuple(x.shape)}: work elementwise.")
        atol = 1e-12 if x.dtype == torch.float64 else 1e-6
        if torch.allclose(got, want, atol=atol):
            return
        slips = [
            (torch.clamp(x64.abs() - tau, min=0), "the magnitudes are right but the signs are lost: multiply "
             "by sign(x)."),
            (x64 * (x64.abs() > tau), "that is hard thresholding (keep x where |x| > tau); soft thresholding "
             "also shrinks the survivors towards 0 by tau."),
            (x64 - tau * torch.sign(x64), "entries with |x| <= tau must become exactly 0, not change sign."),
            (torch.clamp(x64 - tau, min=0), "negative entries must shrink towards 0 too: the result is "
             "sign(x) * max(|x| - tau, 0)."),
            (torch.clamp(x64, -tau, tau), "that clips the values to [-tau, tau] (value clipping); "
             "soft-thresholding subtracts tau from every magnitude and sets the small ones to 0."),
            (x64 * (1 - tau), "you scaled x by (1 - tau); soft-thresholding subtracts tau from every magnitude."),
        ]
        for candidate, hint in slips:
            if torch.allclose(got, candidate, atol=atol):
                raise _Fail(hint)
        raise _Fail("the result should be sign(x) * max(|x| - tau, 0).")

    return _run(fn, all_cases, judge, cases,
                "soft-thresholding shrinks every entry by tau and sets |x| <= tau to exactly 0 on all {n} "
                "cases, as gradlab.prune.soft_threshold does.")


# ----------------------------------------------------------------------------- chapter 4

def _adam_trajectory(grads, lr, beta1, beta2, eps, p0) -> list[tuple[torch.Tensor, ...]]:
    """``(p, m, v)`` before the first step and after each step of ``torch.optim.Adam``."""
    p = p0.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps)
    zeros = torch.zeros_like(p0)
    states = [(p0.clone(), zeros, zeros.clone())]
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
        st = opt.state[p]
        states.append((p.detach().clone(), st["exp_avg"].clone(), st["exp_avg_sq"].clone()))
    return states


def check_adam_step(fn: Callable, *, cases: str = "all") -> CheckResult:
    """Check ``fn(p, g, m, v, t, lr, beta1, beta2, eps) -> (p, m, v)``: one Adam step
    (Kingma & Ba 2015) at step number ``t`` (1-based), returning new tensors,
    against ``torch.optim.Adam``. Each case feeds the state torch's Adam holds
    before step ``t``, so one wrong step does not spoil the next. Visible cases:
    steps 1-3 of a run whose gradients grow from 0.01 to 100; hidden: steps 4-5,
    ``eps = 0.1`` (as large as sqrt(v_hat), where its placement shows), torch's
    defaults at step 10, float32 tensors."""
    g = torch.Generator().manual_seed(0)
    runs = {}
    grads = [torch.randn(5, 3, generator=g, dtype=torch.float64) * 10.0 ** (t - 3) for t in range(1, 6)]
    runs["main"] = (grads, 0.01, 0.8, 0.99, 1e-8, torch.randn(5, 3, generator=g, dtype=torch.float64))
    runs["eps"] = ([0.1 * torch.randn(4, generator=g, dtype=torch.float64) for _ in range(3)], 0.01, 0.9, 0.999,
                   0.1, torch.randn(4, generator=g, dtype=torch.float64))
    runs["defaults"] = ([torch.randn(6, generator=g, dtype=torch.float64) for _ in range(10)], 1e-3, 0.9, 0.999,
                        1e-8, torch.randn(6, generator=g, dtype=torch.float64))
    runs["float32"] = ([torch.randn(5, 3, generator=g) for _ in range(2)], 0.01, 0.8, 0.99, 1e-8,
                       torch.randn(5, 3, generator=g))
    all_cases = [_Case("step t = 1 (gradients of 0.01)", ("main", 1)),
                 _Case("step t = 2 (gradients of 0.1)", ("main", 2)),
                 _Case("step t = 3 (gradients of 1)", ("main", 3)),
                 _Case("step t = 4 (gradients of 10)", ("main", 4), visible=False),
                 _Case("step t = 5 (gradients of 100)", ("main", 5), visible=False),
                 _Case("eps = 0.1, as large as sqrt(v_hat), at step t = 3", ("eps", 3), visible=False),
                 _Case("torch's defaults (lr 1e-3, betas 0.9 and 0.999) at step t = 10", ("defaults", 10),
                       visible=False),
                 _Case("float32 tensors at step t = 2", ("float32", 2), visible=False)]
    trajectories = {name: _adam_trajectory(*run) for name, run in runs.items()}
    div0 = ("a bias correction with the exponent t - 1 divides by 1 - beta**0 = 0 at t = 1; with t counting "
            "from 1, divide by 1 - beta**t.")

    def judge(fn, data):
        name, t = data
        grads, lr, b1, b2, eps, _ = runs[name]
        p0, m0, v0 = trajectories[name][t - 1]
        p_ref, m_ref, v_ref = trajectories[name][t]
        grad = grads[t - 1]
        inputs = {"p": p0.clone(), "g": grad.clone(), "m": m0.clone(), "v": v0.clone()}
        out = _call(fn, inputs["p"], inputs["g"], inputs["m"], inputs["v"], t, lr, b1, b2, eps,
                    hints=(("division by zero", div0),))
        changed = [k for k, x in inputs.items()
                   if not torch.equal(x, {"p": p0, "g": grad, "m": m0, "v": v0}[k])]
        if changed:
            raise _Fail(f"your function changed its input(s) {', '.join(changed)} in place (e.g. with "
                        "m.mul_(...) or m += ...); build new tensors instead, m = beta1 * m + (1 - beta1) * g, "
                        "so that the caller's tensors stay as they were.")
        if not (isinstance(out, (tuple, list)) and len(out) == 3):
            raise _Fail(f"return a tuple (p, m, v) of the updated tensors, got {_describe(out)}.")
        if p0.dtype == torch.float32:
            kept = [x.dtype for x in out if isinstance(x, torch.Tensor)]
            if any(d != torch.float32 for d in kept):
                raise _Fail(f"float32 tensors in, {', '.join(sorted({str(d) for d in kept}))} out: keep the "
                            "dtype of the parameters (compute with Python floats or tensors of p's dtype).")
        new_p, new_m, new_v = (_tensor(x) for x in out)
        for x, what in ((new_p, "p"), (new_m, "m"), (new_v, "v")):
            if x.shape != p0.shape:
                raise _Fail(f"the new {what} has shape {tuple(x.shape)}, expected {tuple(p0.shape)}.")
        P, M, V, G, M0, V0 = (x.double() for x in (p0, m_ref, v_ref, grad, m0, v0))
        rtol, atol = (1e-10, 1e-12) if p0.dtype == torch.float64 else (1e-5, 1e-6)

        def close(a, b):
            return b is not None and _close(a, b, rtol, atol)

        problems = []
        if not close(new_m, M):
            slips = [(M / (1 - b1**t), "you returned the bias-corrected m_hat as the new m; return m itself "
                      "and use m_hat only in this step's update (the correction is recomputed at every step)."),
                     ((1 - b1) * M0 + b1 * G, "beta1 and 1 - beta1 are swapped: m = beta1 * m + (1 - beta1) * g."),
                     (b2 * M0 + (1 - b2) * G, "m uses beta1, not beta2: m = beta1 * m + (1 - beta1) * g."),
                     (M0, "you returned the old m; return the updated one.")]
            problems.append(next((h for c, h in slips if close(new_m, c)),
                                 "the first moment m is wrong: m = beta1 * m + (1 - beta1) * g."))
        if not close(new_v, V):
            slips = [(V / (1 - b2**t), "you returned the bias-corrected v_hat as the new v; return v itself "
                      "and use v_hat only in this step's update (the correction is recomputed at every step)."),
                     ((1 - b2) * V0 + b2 * G * G,
                      "beta2 and 1 - beta2 are swapped: v = beta2 * v + (1 - beta2) * g**2."),
                     (b2 * V0 + (1 - b2) * G, "v averages the squared gradient: v = beta2 * v + (1 - beta2) * g**2."),
                     (b1 * V0 + (1 - b1) * G * G, "v uses beta2, not beta1: v = beta2 * v + (1 - beta2) * g**2."),
                     (V0, "you returned the old v; return the updated one.")]
            problems.append(next((h for c, h in slips if close(new_v, c)),
                                 "the second moment v is wrong: v = beta2 * v + (1 - beta2) * g**2."))
        if not close(new_p, p_ref.double()):
            problems.append(_adam_slip(new_p, P, G, M, V, M0, V0, t, lr, b1, b2, eps, close, div0))
        if problems:
            raise _Fail(" Also, ".join(problems))

    return _run(fn, all_cases, judge, cases,
                "your Adam step matches torch.optim.Adam on all {n} cases: steps 1 to 5 with gradients from "
                "0.01 to 100, an eps as large as sqrt(v_hat), torch's defaults at step 10 and float32; the "
                "tested version is gradlab.optim.Adam.")


def _adam_slip(new_p, P, G, M, V, M0, V0, t, lr, b1, b2, eps, close, div0) -> str:
    """Name the mistake behind a wrong Adam parameter update (the moments M, V are torch's)."""
    if not bool(torch.isfinite(new_p).all()):
        if t == 1:
            return f"your update is not finite at t = 1: {div0}"
        return "your update is not finite (inf or nan)."

    def step(m_hat, v_hat, how="right"):
        if how == "eps inside":
            return P - lr * m_hat / torch.sqrt(v_hat + eps)
        if how == "eps outside":
            return P - lr * (m_hat / v_hat.sqrt() + eps)
        if how == "no sqrt":
            return P - lr * m_hat / (v_hat + eps)
        return P - lr * m_hat / (v_hat.sqrt() + eps)

    c1, c2 = 1 - b1**t, 1 - b2**t
    m_hat, v_hat = M / c1, V / c2
    slips = [
        (step(M, V), "the moments are right but the bias correction is missing: divide by 1 - beta**t."),
        (step(M / (1 - b1 ** (t + 1)), V / (1 - b2 ** (t + 1))), "the bias correction uses the exponent t + 1; "
         "at step t (counting from 1) divide by 1 - beta**t."),
        (step(M / (1 - b1 ** (t - 1)), V / (1 - b2 ** (t - 1))) if t > 1 else None,
         "the bias correction uses the exponent t - 1, which divides by 1 - beta**0 = 0 at t = 1; with t "
         "counting from 1, divide by 1 - beta**t."),
        (step(m_hat, V), "only m is bias-corrected; v_hat = v / (1 - beta2**t) too."),
        (step(M, v_hat), "only v is bias-corrected; m_hat = m / (1 - beta1**t) too."),
        (step(M / (1 - b2**t), V / (1 - b1**t)), "the bias corrections are swapped: m_hat = m / (1 - beta1**t), "
         "v_hat = v / (1 - beta2**t)."),
        (step(m_hat, v_hat, "eps inside"), "eps is inside the square root; Adam adds it after: "
         "m_hat / (sqrt(v_hat) + eps)."),
        (P - lr * m_hat / torch.sqrt((V + eps) / c2), "eps is added to v before the square root; Adam adds it "
         "after: m_hat / (sqrt(v_hat) + eps)."),
        (step(m_hat, v_hat, "eps outside"), "eps belongs in the denominator: m_hat / (sqrt(v_hat) + eps), not "
         "m_hat / sqrt(v_hat) + eps."),
        (P - lr * (c2**0.5 / c1) * M / (V.sqrt() + eps), "that is the paper's 'efficient' form, "
         "lr * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(v) + eps), which puts eps elsewhere than "
         "torch.optim.Adam: use m_hat / (sqrt(v_hat) + eps)."),
        (P + lr * m_hat / (v_hat.sqrt() + eps), "the step goes uphill: subtract lr * m_hat / (sqrt(v_hat) + eps)."),
        (P - m_hat / (v_hat.sqrt() + eps), "the step is missing the learning rate lr."),
        (step(m_hat, v_hat, "no sqrt"), "the denominator is sqrt(v_hat) + eps: take the square root of v_hat."),
        (step(M0 / c1, V0 / c2), "the update uses m and v from before this step; update the moments first, then "
         "use the new ones."),
        (step(G, v_hat), "the numerator is m_hat, the averaged gradient, not the gradient g itself."),
    ]
    hint = next((h for c, h in slips if close(new_p, c)), "the update should be p - lr * m_hat / (sqrt(v_hat) + eps).")
    return f"the parameters are wrong: {hint}"


# ----------------------------------------------------------------------------- chapter 7

def check_warmup(fn: Callable, *, cases: str = "all") -> CheckResult:
    """Check ``fn(step, warmup_steps) -> float``: the linear warm-up factor
    ``min(1, (step + 1) / warmup_steps)`` for 0-based steps (1 when
    ``warmup_steps == 0``), against ``torch.optim.lr_scheduler.LinearLR`` with
    ``start_factor = 1 / warmup_steps`` and ``total_iters = warmup_steps - 1``.
    Visible cases: 4, 10 and 0 (no warm-up) warm-up steps; hidden: 50 and 1."""
    all_cases = [_Case("warmup_steps = 4", 4), _Case("warmup_steps = 10", 10),
                 _Case("warmup_steps = 0 (no warm-up)", 0),
                 _Case("warmup_steps = 50", 50, visible=False), _Case("warmup_steps = 1", 1, visible=False)]
    zero = ("ZeroDivisionError", "warmup_steps = 0 means no warm-up: return 1.0 before dividing by warmup_steps.")

    def judge(fn, w):
        if w == 0:
            for step in range(4):
                got = _call(fn, step, 0, convert=_as_float, hints=(zero,))
                if not math.isclose(got, 1.0):
                    raise _Fail(f"at step {step} you returned {got:.6g}: warmup_steps = 0 means no warm-up, so "
                                "the factor is 1.")
            return
        p = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([p], lr=1.0)
        sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / w, end_factor=1.0, total_iters=w - 1)
        steps = range(2 * w + 3)
        refs, gots = [], []
        for step in steps:
            refs.append(opt.param_groups[0]["lr"])
            gots.append(_call(fn, step, w, convert=_as_float))
            opt.step()
            sched.step()

        def matches(values):
            return all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(gots, values))

        if matches(refs):
            return
        step = next(i for i in steps if not math.isclose(gots[i], refs[i], rel_tol=1e-9, abs_tol=1e-12))
        got, ref = gots[step], refs[step]
        slips = [
            ([min(1.0, s / w) for s in steps], "off by one: at step 0 the factor is step / warmup_steps = 0, so the "
             "first update is wasted; use (step + 1) / warmup_steps."),
            ([s / w for s in steps], "off by one: at step 0 the factor is step / warmup_steps = 0, so the first "
             "update is wasted; use (step + 1) / warmup_steps."),
            ([min(1, (s + 1) // w) for s in steps], "integer division: (step + 1) // warmup_steps stays 0 until "
             "the end of the warm-up; use /."),
            ([(s + 1) / w for s in steps], "after the warm-up the factor must stay at 1: cap it with min(1, ...)."),
            ([min(1.0, (s + 1) / (w + 1)) for s in steps], "the factor must reach 1 at step warmup_steps - 1, "
             "the last warm-up step: (step + 1) / warmup_steps."),
            ([min(1.0, s / (w - 1)) for s in steps] if w > 1 else None, "off by one: at step 0 the factor is "
             "1 / warmup_steps, not 0, or the first update is wasted; use (step + 1) / warmup_steps."),
        ]
        hint = next((h for values, h in slips if values is not None and matches(values)), None)
        if hint is not None:
            raise _Fail(hint)
        if step >= w and got > 1:
            hint = "after the warm-up the factor must stay at 1: cap it with min(1, ...)."
        else:
            hint = "the factor should grow linearly from 1 / warmup_steps to 1 and then stay at 1."
        raise _Fail(hint, f"at step {step} you returned {got:.6g}, expected {ref:.6g}")

    return _run(fn, all_cases, judge, cases,
                "your factors match torch.optim.lr_scheduler.LinearLR for 1, 4, 10 and 50 warm-up steps and "
                "none ({n} cases); the tested version is gradlab.lm.warmup_factor.")


def _as_bool(value) -> bool:
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and (value.dtype == torch.bool or
                                                                   float(value) in (0.0, 1.0)):
        return bool(value)
    raise TypeError(f"return True (skip) or False (keep), got {_describe(value)}")


def check_spike_guard(fn: Callable, *, cases: str = "all") -> CheckResult:
    """Check ``fn(history, norm, factor) -> bool``: skip the update when ``norm`` is
    not finite or exceeds ``factor`` times the median of the last 20 finite
    norms in ``history`` (never with an empty history), against
    :func:`gradlab.monitor.detect_spikes`, on seven traces at factors 10 and 4.
    Visible cases: a smooth run, one spike, a NaN and an inf; hidden: two spikes
    in a row, a slow rise, a spike in the first steps, a spike then a smaller one."""
    from gradlab.monitor import detect_spikes

    g = torch.Generator().manual_seed(0)
    base = (1.0 + 0.2 * torch.randn(60, generator=g)).abs().tolist()
    traces = [
        ("a smooth run", base, True),
        ("a spike of 50x at step 30", base[:30] + [50.0] + base[31:], True),
        ("a NaN and an inf", base[:10] + [float("nan")] + base[11:40] + [float("inf")] + base[41:], True),
        ("two spikes in a row", base[:20] + [40.0, 45.0] + base[22:], False),
        ("a slow rise by 3x", [b * (1 + 2 * i / 60) for i, b in enumerate(base)], False),
        ("a spike in the first steps", [1.0, 30.0] + base[2:], False),
        ("a spike, then a smaller one", base[:30] + [50.0] + base[31:35] + [12.0] + base[36:], False),
    ]
    all_cases = [_Case(name, values, visible) for name, values, visible in traces]

    def judge(fn, values):
        for factor in (10.0, 4.0):
            expected = set(detect_spikes(values, window=20, factor=factor))
            history: list[float] = []
            for i, v in enumerate(values):
                got = _call(fn, list(history), v, factor, convert=_as_bool)
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
                    raise _Fail(hint, f"step {i}, norm {v:.3g}, factor {factor:g}: you said "
                                      f"{'skip' if got else 'keep'}")
                if math.isfinite(v):
                    history.append(v)

    return _run(fn, all_cases, judge, cases,
                "your guard skips exactly the steps gradlab.monitor.detect_spikes flags, in {n} traces and at "
                "two factors.")


# ----------------------------------------------------------------------------- chapter 6 (bytes)

def check_payload_bytes(fn: Callable, *, cases: str = "all") -> CheckResult:
    """Check ``fn(n, m, scheme, rank, ratio) -> int``: the bytes one worker hands to
    the collective per step for one ``n x m`` float32 gradient, with ``scheme``
    ``"allreduce"`` (every entry), ``"topk"`` (``ceil(ratio * n * m)`` entries, a
    4-byte value and a 4-byte index each) or ``"powersgd"`` (``(n + m) r`` numbers
    when torch's rule ``(n + m) r * 2 < n m`` says the matrix is worth
    compressing, with ``r = min(n, m, rank)``; else every entry). The reference
    is :func:`gradlab.compress.payload_bytes` with ``min_compression_rate=2``.
    Visible cases: small matrices, one per scheme; hidden: the exercise's
    4096 x 16384 layer and matrices too small to be worth compressing."""
    from gradlab.compress import payload_bytes

    specs = [((256, 64, "powersgd", 4, 0.01), True), ((7, 13, "topk", 1, 0.1), True),
             ((64, 32, "allreduce", 4, 0.01), True),
             ((4096, 16384, "allreduce", 4, 0.01), False), ((4096, 16384, "powersgd", 4, 0.01), False),
             ((4096, 16384, "topk", 4, 0.01), False), ((10, 256, "powersgd", 8, 0.01), False),
             ((3, 3, "powersgd", 4, 0.01), False)]

    def label(n, m, scheme, rank, ratio):
        return f"a {n} x {m} matrix, scheme {scheme!r}" + (
            f", rank {rank}" if scheme == "powersgd" else f", ratio {ratio}" if scheme == "topk" else "")

    all_cases = [_Case(label(*spec), spec, visible) for spec, visible in specs]

    def judge(fn, spec):
        n, m, scheme, rank, ratio = spec
        expected = payload_bytes([(n, m)], scheme, rank=rank, ratio=ratio, min_compression_rate=2)
        raw = _call(fn, n, m, scheme, rank, ratio)
        try:
            got = _as_float(raw)
        except Exception as exc:
            raise _Fail(f"your function returned {_describe(raw)}, which is not what was asked: "
                        f"{str(exc).rstrip('.')}.") from None
        if got == expected:
            whole = isinstance(raw, numbers.Integral) or (
                isinstance(raw, torch.Tensor) and not raw.is_floating_point() and not raw.is_complex())
            if not whole:
                raise _Fail(f"the count is right, but return it as an int (you return {_describe(raw)}): bytes "
                            "are whole numbers, and the chapter prints them with the format :,d. Use integer "
                            "arithmetic (math.ceil returns an int) or int(...).")
            return
        r = min(n, m, rank)
        if got * 4 == expected:
            hint = "count bytes, not numbers: 4 bytes per float32 value."
        elif got == expected * 8:
            hint = "count bytes, not bits."
        elif scheme == "topk" and got * 2 == expected:
            hint = "each kept entry sends its value and its index: 4 + 4 bytes."
        elif scheme == "topk" and got == math.floor(ratio * n * m) * 8:
            hint = "keep ceil(ratio * n * m) entries (at least one), not the rounded-down number."
        elif scheme == "topk" and got == ratio * n * m * 8:
            hint = "a number of entries is a whole number: ceil(ratio * n * m)."
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
                    "powersgd": "(n + m) r numbers of 4 bytes if (n + m) r * 2 < n m, else n m numbers."}[scheme]
            raise _Fail(hint, f"you return {got:,.0f} bytes, expected {expected:,d}")
        raise _Fail(hint, f"you return {got:,.0f} bytes")

    return _run(fn, all_cases, judge, cases,
                "your byte counts match gradlab.compress.payload_bytes on {n} cases, including matrices too "
                "small to be worth compressing.")


# ----------------------------------------------------------------------------- chapter 2 (AGC)

def check_unitwise_norm(fn: Callable, *, cases: str = "all") -> CheckResult:
    """Check ``fn(x) -> norms``: AGC's norm per output unit for PyTorch's layouts
    (``[out, in]`` linear weights, ``[out, in, kh, kw]`` convolution kernels; a
    vector or scalar is one unit), against :func:`gradlab.clip.unitwise_norm`.
    The result may keep the reduced dimensions (``[out, 1, ...]``) or not
    (``[out]``), as long as it has one norm per unit. Visible cases: a linear
    weight and a bias; hidden: convolution kernels (2-D and 1-D), a square
    weight (where the JAX layout has the right shape), a float32 parameter that
    requires grad (the chapter's own call), a 0-d gain."""
    from gradlab.clip import unitwise_norm

    g = torch.Generator().manual_seed(3)
    all_cases = [
        _Case("a Linear(5, 3) weight [3, 5]", torch.randn(3, 5, generator=g, dtype=torch.float64)),
        _Case("a bias vector [7]", torch.randn(7, generator=g, dtype=torch.float64)),
        _Case("a Conv2d(3, 4, 2) kernel [4, 3, 2, 2]", torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64),
              visible=False),
        _Case("a square weight [6, 6]", torch.randn(6, 6, generator=g, dtype=torch.float64), visible=False),
        _Case("a Conv1d(3, 4, 5) kernel [4, 3, 5]", torch.randn(4, 3, 5, generator=g, dtype=torch.float64),
              visible=False),
        _Case("a float32 nn.Parameter [3, 5] (requires grad)", torch.nn.Parameter(torch.randn(3, 5, generator=g)),
              visible=False),
        _Case("a 0-d gain", torch.tensor(-1.7, dtype=torch.float64), visible=False),
    ]

    def judge(fn, x):
        expected = unitwise_norm(x.detach()).double()
        arg = torch.nn.Parameter(x.detach().clone()) if isinstance(x, torch.nn.Parameter) else x.clone()
        scalar = ("a scalar (a 0-d tensor, such as a learnable gain) is one unit, like a vector: return its "
                  "norm |x|.")
        try:
            got = _call(fn, arg, convert=_tensor, hints=(("", scalar),) if x.ndim == 0 else ())
        except _Fail as fail:
            if x.ndim == 0 and scalar not in fail.hint and fail.hint != NOT_WRITTEN:
                raise _Fail(f"{fail.hint} Hint: {scalar}") from None
            raise
        x = x.detach().double()
        units = 1 if x.ndim <= 1 else x.shape[0]
        rtol = 1e-10 if arg.dtype == torch.float64 else 1e-5
        if got.numel() == units and torch.allclose(got.flatten(), expected.flatten(), rtol=rtol, atol=1e-12):
            return
        if got.numel() == units and torch.allclose(got.flatten(), expected.flatten() ** 2, rtol=rtol):
            raise _Fail("you returned the squared norms; take the square root.")
        if x.ndim >= 2:
            over_dim0 = torch.linalg.vector_norm(x, dim=0)
            if got.numel() == over_dim0.numel() and torch.allclose(got.flatten(), over_dim0.flatten(), rtol=rtol):
                raise _Fail("you took the norm over dimension 0, one norm per *input* (JAX's [in, out] layout). "
                            "PyTorch stores [out, in, ...]: a unit is a slice x[i], so reduce over every "
                            "dimension except 0.")
            if x.ndim > 2:
                over_dim1 = torch.linalg.vector_norm(x, dim=1)
                if got.numel() == over_dim1.numel() and torch.allclose(got.flatten(), over_dim1.flatten(), rtol=rtol):
                    dims = ", ".join(str(d) for d in range(1, x.ndim - 1)) + f" and {x.ndim - 1}"
                    raise _Fail(f"you reduced over dimension 1 only; a convolution unit's weights are x[i, ...], "
                                f"so reduce over dimensions {dims}.")
        if got.numel() == 1 and units > 1 and math.isclose(float(got.flatten()[0]), float(torch.linalg.vector_norm(x)),
                                                          rel_tol=rtol):
            raise _Fail(f"you returned the norm of the whole tensor; AGC needs one norm per output unit "
                        f"({units} here).")
        if x.ndim <= 1:
            raise _Fail("a vector or a scalar (a bias or a gain) counts as one unit, so return its norm, one number.")
        raise _Fail(f"you returned {got.numel()} values; expected {units}, the L2 norm of each slice x[i] "
                    "(compare with gradlab.clip.unitwise_norm).")

    return _run(fn, all_cases, judge, cases,
                "one norm per output unit on all {n} cases: linear weights, convolution kernels, vectors and "
                "scalars, as gradlab.clip.unitwise_norm computes them.")
