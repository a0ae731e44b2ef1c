"""Argument checks for every gradlab module, with one message style.

Each check returns the value (as the type it names) or raises with a message
that names the argument, shows the value it got and, where the requirement
alone does not say it, what to pass instead::

    lr must be >= 0, got -0.1
    rank must be an int >= 1, got 0; rank 1 is the strongest compression
    norm_type must be a number > 0 or inf, got 'fro'

``TypeError`` when the kind of value is wrong (a string for a number, a float
for an int), ``ValueError`` when the value is out of range. Where gradlab is a
drop-in for a torch class whose error messages users search for, ``torch_says``
puts torch's own words first (``Invalid learning rate: -1.0; lr must be > 0``).

Not public: the functions of the modules that use these checks are.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import NoReturn

import torch


def _fail(exc: type[Exception], name: str, requirement: str, got: str, hint: str = "",
          torch_says: str = "") -> NoReturn:
    message = f"{name} must be {requirement}, got {got}"
    if torch_says:
        message = f"{torch_says}: {got}; {name} must be {requirement}"
    raise exc(message + (f"; {hint}" if hint else ""))


def _shown(value) -> str:
    if isinstance(value, torch.Tensor):
        return repr(value.item()) if value.numel() == 1 else f"a tensor of shape {tuple(value.shape)}"
    return repr(value)


def real(name: str, value, *, hint: str = "") -> float:
    """``value`` as a float: a Python or NumPy real number (not a bool) or a
    one-element tensor (as torch's functions accept them)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            _fail(ValueError, name, "a number or a 1-element tensor", _shown(value), hint)
        if value.is_complex() or value.dtype == torch.bool:
            _fail(TypeError, name, "a real number", f"a {value.dtype} tensor", hint)
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(TypeError, name, "a number", f"{type(value).__name__} {value!r}", hint)
    return float(value)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def in_range(name: str, value, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False, finite: bool = False,
             hint: str = "", torch_says: str = "") -> float:
    """``value`` (see :func:`real`) as a float in the given interval; NaN never is.
    ``finite=True`` also refuses infinities."""
    x = real(name, value, hint=hint)
    ok = not math.isnan(x) and (not finite or math.isfinite(x))
    ok = ok and (low is None or (x > low if low_open else x >= low))
    ok = ok and (high is None or (x < high if high_open else x <= high))
    if not ok:
        requirement = _interval(low, high, low_open, high_open)
        _fail(ValueError, name, f"a finite number {requirement}" if finite else requirement,
              _shown(value), hint, torch_says)
    return x


def nonneg(name: str, value, *, hint: str = "", torch_says: str = "") -> float:
    """A number >= 0 (inf allowed)."""
    return in_range(name, value, 0.0, hint=hint, torch_says=torch_says)


def positive(name: str, value, *, finite: bool = False, hint: str = "", torch_says: str = "") -> float:
    """A number > 0 (finite if asked)."""
    return in_range(name, value, 0.0, low_open=True, finite=finite, hint=hint, torch_says=torch_says)


def unit(name: str, value, *, hint: str = "", torch_says: str = "") -> float:
    """A number in [0, 1): a decay rate such as a beta or a momentum."""
    return in_range(name, value, 0.0, 1.0, high_open=True, hint=hint, torch_says=torch_says)


def norm_order(name: str, value) -> float:
    """The order ``q`` of a vector norm: a number > 0 or inf, as a float (the strings
    ``"inf"`` and ``"2"`` work, as in torch; ``q = 0`` counts entries and is no norm)."""
    requirement = "a number > 0 or inf (2.0 for the Euclidean norm, float('inf') for the largest entry)"
    try:
        q = float(value)
    except (TypeError, ValueError):
        q = math.nan
    if isinstance(value, bool) or not q > 0:  # NaN fails too
        _fail(ValueError, name, requirement, _shown(value))
    return q


def integer(name: str, value, minimum: int | None = None, maximum: int | None = None, *,
            hint: str = "") -> int:
    """``value`` as an int (Python or NumPy integers, not bools) in ``[minimum, maximum]``."""
    if maximum is None:
        requirement = "an int" if minimum is None else f"an int >= {minimum}"
    else:
        requirement = f"an int in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(TypeError, name, requirement, f"{type(value).__name__} {value!r}", hint)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        _fail(ValueError, name, requirement, repr(value), hint)
    return int(value)


def one_of(name: str, value, options: Iterable, *, hint: str = ""):
    """``value`` if it is one of ``options``."""
    options = tuple(options)
    if value not in options:
        listed = [repr(o) for o in options]
        text = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " or " + listed[-1]
        _fail(ValueError, name, text, repr(value), hint)
    return value


def pair(name: str, value, what: str) -> tuple:
    """``value`` as a tuple of two items (``what`` names them, e.g. ``"(beta1, beta2)"``)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        _fail(ValueError, name, f"a pair {what}", repr(value))
    return tuple(value)


def floating_param(owner: str, p: torch.Tensor) -> None:
    """Refuse a parameter that gradient steps cannot update (an integer or bool tensor)."""
    if not (p.is_floating_point() or p.is_complex()):
        raise TypeError(f"{owner} updates floating-point parameters, got one of dtype {p.dtype}; "
                        "keep integer tensors out of the optimizer (as buffers), or convert the "
                        "model with model.float()")
