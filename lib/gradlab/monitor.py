"""Watching gradients: per-layer norms with hooks, non-finite checks, loss spikes.

The three signals a practitioner logs to catch explosion early:

1. the global gradient norm ``||g||_2 = sqrt(sum_p ||g_p||_2^2)`` and its
   per-layer parts (:func:`global_grad_norm`, :func:`grad_norms`,
   :class:`GradNormMonitor`), accumulated in float64 so that the very spikes
   they are meant to log do not overflow to ``inf``;
2. non-finite values (:func:`find_nonfinite`, :func:`assert_finite`);
3. loss spikes relative to the recent past (:func:`detect_spikes`).

Neighbours: acting on the norm (clipping) is :mod:`gradlab.clip`; the models
the first chapter watches are in :mod:`gradlab.models`; the case study's
training loop (:mod:`gradlab.lm`) logs the same signals per step.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from gradlab import _validate
from gradlab._tensors import global_norm

__all__ = [
    "NonFiniteError",
    "grad_norms",
    "global_grad_norm",
    "GradNormMonitor",
    "find_nonfinite",
    "assert_finite",
    "detect_spikes",
    "progress",
]


class NonFiniteError(FloatingPointError):
    """Raised when a gradient (or a loss) contains NaN or inf."""


def _named(params) -> list[tuple[str, torch.Tensor]]:
    if isinstance(params, nn.Module):
        return list(params.named_parameters())
    if isinstance(params, torch.Tensor):
        return [("0", params)]
    items = list(params)
    if items and isinstance(items[0], tuple):
        return items
    return [(str(i), p) for i, p in enumerate(items)]


def grad_norms(params, norm_type: float = 2.0, *, dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """``{name: ||grad||}`` for every parameter that has a gradient, accumulated in
    ``dtype`` (float64: no overflow for float32 gradients; see :func:`global_grad_norm`).

    ``params`` is a module, an iterable of tensors, or of ``(name, tensor)`` pairs.
    """
    norm_type = _validate.norm_order("norm_type", norm_type)
    return {
        name: float(global_norm([p.grad.detach()], norm_type, dtype=dtype))
        for name, p in _named(params)
        if p.grad is not None
    }


def global_grad_norm(params, norm_type: float = 2.0, *, dtype: torch.dtype = torch.float64) -> float:
    """The norm of all gradients concatenated, ``(sum_p ||g_p||^q)^(1/q)``
    (``max_p ||g_p||_inf`` for ``q = inf``), the norm ``clip_grad_norm_`` clips by.

    Accumulated in ``dtype``: the default float64 keeps float32 gradients of 1e20
    at their norm ``1e20 * sqrt(n)``, where float32 arithmetic (and torch's
    ``get_total_norm`` of float32 gradients) overflows to ``inf``; pass
    ``dtype=None`` for the gradients' own dtype, torch's result. ``params`` is a
    module, an iterable of tensors, or of ``(name, tensor)`` pairs. Returns 0.0
    when no parameter has a gradient."""
    norm_type = _validate.norm_order("norm_type", norm_type)
    grads = [p.grad.detach() for _, p in _named(params) if p.grad is not None]
    return float(global_norm(grads, norm_type, dtype=dtype)) if grads else 0.0


class GradNormMonitor:
    """Record gradient norms on every backward pass, through hooks.

    Two kinds of record, both lists with one entry per backward pass:

    * ``param[name]``: ``||dL/dtheta||`` for each parameter (tensor hooks);
    * ``output[name]``: ``||dL/dh||`` for the output ``h`` of each watched
      module (a forward hook puts a tensor hook on ``h``). This is the quantity the chain rule
      multiplies by one Jacobian per layer, so its growth across layers is the
      explosion itself.

    Use as a context manager (the hooks are removed on exit) or call
    :meth:`remove`. The monitor stores floats, not tensors, and never holds
    the graph alive.

    >>> mon = GradNormMonitor(model, modules=model.layers)
    >>> with mon:
    ...     loss = model(x).pow(2).mean(); loss.backward()
    >>> mon.output["layers.0"][-1]   # ||dL/dh_1|| on the last backward pass
    """

    def __init__(self, model: nn.Module, modules: Iterable[nn.Module] | None = None,
                 norm_type: float = 2.0) -> None:
        self.norm_type = norm_type
        self.param: dict[str, list[float]] = defaultdict(list)
        self.output: dict[str, list[float]] = defaultdict(list)
        self._handles: list = []
        names = {id(m): n for n, m in model.named_modules()}
        for name, p in model.named_parameters():
            if p.requires_grad:
                self.param[name] = []  # keys in model order, not in backward order
                self._handles.append(p.register_hook(self._param_hook(name)))
        for module in modules or ():
            name = names.get(id(module), module.__class__.__name__)
            self.output[name] = []
            self._handles.append(module.register_forward_hook(self._module_hook(name)))

    def _norm(self, t: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(t.detach(), self.norm_type))

    def _param_hook(self, name: str):
        def hook(grad: torch.Tensor) -> None:
            self.param[name].append(self._norm(grad))
        return hook

    def _module_hook(self, name: str):
        # A forward hook that puts a tensor hook on the module's output: it sees
        # dL/d(output) on the way back, also for the first layer, whose input
        # needs no gradient (where full backward hooks warn).
        def record(grad: torch.Tensor) -> None:
            self.output[name].append(self._norm(grad))

        def hook(module, inputs, output) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(record)
        return hook

    def remove(self) -> None:
        """Remove all hooks; the records stay."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> GradNormMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def latest(self, kind: str = "param") -> dict[str, float]:
        """The last recorded norm per name (``kind`` is ``"param"`` or ``"output"``)."""
        record = self.param if kind == "param" else self.output
        return {name: values[-1] for name, values in record.items() if values}

    def as_array(self, kind: str = "param") -> tuple[list[str], np.ndarray]:
        """``(names, array[steps, len(names)])`` of the recorded norms."""
        record = self.param if kind == "param" else self.output
        names = [n for n, v in record.items() if v]
        if not names:
            return names, np.zeros((0, 0))
        steps = min(len(v) for v in record.values())
        return names, np.array([[record[n][i] for n in names] for i in range(steps)])


def find_nonfinite(params, *, check: str = "grad") -> list[str]:
    """Names of parameters whose ``grad`` (``check="grad"``) or value
    (``check="value"``) holds NaN or inf."""
    _validate.one_of("check", check, ("grad", "value"))
    bad = []
    for name, p in _named(params):
        t = p.grad if check == "grad" else p
        if t is not None and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def assert_finite(params, *, loss: torch.Tensor | float | None = None) -> None:
    """Raise :class:`NonFiniteError` naming the culprits if the loss or any
    gradient is NaN/inf. Call it after ``backward()`` and before ``step()``."""
    if loss is not None:
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise NonFiniteError(
                f"the loss is {value}: the forward pass already overflowed. Lower the learning "
                "rate, clip gradients (gradlab.clip), or check the inputs for inf/NaN."
            )
    bad = find_nonfinite(params)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(
            f"non-finite gradients in {shown}. Skip this step (as torch.amp.GradScaler does), "
            "lower the learning rate, or clip; torch.autograd.set_detect_anomaly(True) finds the op."
        )


def detect_spikes(values: Sequence[float], window: int = 20, factor: float = 10.0) -> list[int]:
    """Indices ``i`` where ``values[i]`` exceeds ``factor`` times the median of the
    previous (up to ``window``) finite values, or is itself non-finite.

    The median (not the mean) keeps one earlier spike from hiding the next.
    """
    _validate.integer("window", window, 1)
    _validate.in_range("factor", factor, 1.0, low_open=True,
                       hint="a spike is a value this many times the recent median")
    spikes: list[int] = []
    history: list[float] = []
    for i, v in enumerate(values):
        v = float(v)
        if not math.isfinite(v):
            spikes.append(i)
            continue
        if history and v > factor * float(np.median(history[-window:])):
            spikes.append(i)
        history.append(v)
    return spikes


def progress(iterable: Iterable, *, enabled: bool = True, desc: str | None = None,
             total: int | None = None) -> Iterator:
    """A tqdm progress bar written to stdout (never stderr, which the book
    build treats as an error), or the bare iterable when ``enabled`` is False."""
    if not enabled:
        return iter(iterable)
    from tqdm.std import tqdm

    return iter(tqdm(iterable, desc=desc, total=total, file=sys.stdout, ascii=True,
                     ncols=80, mininterval=1.0))
