"""Gradient clipping, drop-in with ``torch.nn.utils`` where the two overlap.

* :func:`clip_grad_norm_`: rescale all gradients together so that their global
  norm is at most ``max_norm`` (Pascanu, Mikolov & Bengio 2013). The direction
  of the update is kept; only its length changes.
* :func:`clip_grad_value_`: clamp every gradient entry to ``[-clip_value, clip_value]``.
  This changes the direction.
* :func:`adaptive_clip_grad_`: unit-wise adaptive gradient clipping (AGC) of
  Brock, De, Smith & Simonyan (2021): each output unit's gradient is capped
  relative to the norm of that unit's weights.
* :class:`AdaptiveClipper`: a norm-clipping threshold taken from the history of
  observed gradient norms (a running quantile).
* :class:`FlatGradients`: the gradients of a model kept in one contiguous
  buffer per device and dtype, so that global-norm clipping is two passes over
  one array (a reduction, then an in-place scale) instead of one small kernel
  per tensor: the memory-speed path.

All functions work in place on ``p.grad`` for parameters that have one, group
tensors by device and dtype (so mixed CPU/CUDA and float32/float64 lists
work), and validate their arguments with messages that say what to do.

Neighbours: measuring the norm without clipping (overflow-safe, for logs) is
:func:`gradlab.monitor.global_grad_norm`, built on the same global-norm
function; the optimizers that step after clipping are in :mod:`gradlab.optim`;
clipping a worker's gradient before compression is in :mod:`gradlab.ddp` and
:class:`gradlab.compress.DGC`.
"""

from __future__ import annotations

import math
import types
import warnings
from collections import defaultdict, deque
from collections.abc import Iterable

import torch

from gradlab import _validate
from gradlab._tensors import global_norm, group_by_device_dtype, use_foreach

__all__ = ["clip_grad_norm_", "clip_grad_value_", "adaptive_clip_grad_", "unitwise_norm",
           "AdaptiveClipper", "FlatGradients"]

_Params = torch.Tensor | Iterable[torch.Tensor]


def _grads(parameters: _Params) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


_NORM_HINT = ("typical values are 0.1 to 10: pick one from the gradient norms you observe "
              "(e.g. their 90th percentile)")
_VALUE_HINT = ("it is the largest magnitude allowed for one gradient entry: pick it from the "
               "magnitudes of the entries you observe (e.g. their 99th percentile)")


def _check_threshold(name: str, value: float, hint: str = _NORM_HINT) -> float:
    """``value`` as a float, or an error saying what a valid ``name`` is.

    Python and NumPy numbers and one-element tensors are accepted (as torch's
    functions accept them); booleans, strings and non-positive or non-finite
    values are not.
    """
    return _validate.positive(name, value, finite=True, hint=hint)


def _check_norm_type(norm_type: float) -> float:
    return _validate.norm_order("norm_type", norm_type)


def _warn_if_empty_generator(parameters: _Params) -> list | _Params:
    """``parameters``, listed if it was a generator; warns, as torch does, when that generator was empty."""
    if isinstance(parameters, types.GeneratorType):
        parameters = list(parameters)
        if not parameters:
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=3)
    return parameters


def _total_norm(grads: list[torch.Tensor], norm_type: float, foreach: bool | None) -> torch.Tensor:
    """The global norm as torch computes it: each (device, dtype) group in its own dtype,
    on the first gradient's device."""
    return global_norm(grads, norm_type, dtype=None, foreach=foreach)


def _scale_to_max_norm_(grads: list[torch.Tensor], total: torch.Tensor, max_norm: float,
                        foreach: bool | None) -> None:
    """Multiply every tensor in ``grads`` in place by ``min(1, max_norm / (total + 1e-6))``
    (torch's factor), without a host synchronisation."""
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for (device, _), (gs,) in group_by_device_dtype(grads).items():
        c = coef.to(device)
        if use_foreach(foreach, [device]):
            torch._foreach_mul_(gs, c)
        else:
            for g in gs:
                g.mul_(c)


def _raise_if_nonfinite(total: torch.Tensor, norm_type: float) -> None:
    if not bool(torch.isfinite(total)):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is {total.item()}, so clipping "
            "cannot rescale them. Skip this step (zero the gradients), lower the learning rate, "
            "or find the op that overflowed with torch.autograd.set_detect_anomaly(True); "
            "pass error_if_nonfinite=False to clip anyway (the gradients become 0 or NaN)."
        )


def clip_grad_norm_(
    parameters: _Params,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> torch.Tensor:
    r"""Scale all gradients by ``min(1, max_norm / (||g|| + 1e-6))``, in place.

    ``||g||`` is the ``norm_type``-norm of all gradients concatenated,
    :math:`\big(\sum_p \|g_p\|_q^q\big)^{1/q}` (the maximum entry for ``inf``).
    Returns that total norm *before* clipping, as a tensor, like
    ``torch.nn.utils.clip_grad_norm_``; the 1e-6 guards the division only.

    ``foreach=None`` uses the multi-tensor (``torch._foreach_*``) kernels on
    CPU and CUDA; ``False`` is the readable per-tensor loop. The norm of each
    (device, dtype) group is computed in its own dtype, as torch does (so float32
    gradients of 1e20 give an infinite norm, as in torch; the overflow-safe norm
    for logging is :func:`gradlab.monitor.global_grad_norm`). Like torch, it warns
    when ``parameters`` is an empty generator (no clipping will occur).

    Raises ``ValueError`` for ``max_norm <= 0`` (where torch silently flips or
    zeroes gradients) and, with ``error_if_nonfinite=True``, ``RuntimeError``
    when the total norm is NaN or inf.

    Differences from torch, on purpose: ``max_norm`` must be finite and > 0, and
    ``norm_type`` must be > 0 or ``inf`` (torch also accepts 0, the count of
    non-zero entries, which is not a norm one can clip by). Like torch,
    ``foreach=True`` on a device without multi-tensor kernels raises.
    """
    max_norm = _check_threshold("max_norm", max_norm)
    norm_type = _check_norm_type(norm_type)
    grads = _grads(_warn_if_empty_generator(parameters))
    if not grads:
        return torch.tensor(0.0)
    total = _total_norm(grads, norm_type, foreach)
    if error_if_nonfinite:
        _raise_if_nonfinite(total, norm_type)
    _scale_to_max_norm_(grads, total, max_norm, foreach)
    return total


def clip_grad_value_(parameters: _Params, clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every gradient entry to ``[-clip_value, clip_value]``, in place.

    Unlike norm clipping this changes the direction of the update: a gradient
    ``(100, 1)`` clipped at 1 becomes ``(1, 1)``.
    """
    clip_value = _check_threshold("clip_value", clip_value, _VALUE_HINT)
    grads = _grads(parameters)
    for (device, _), (gs,) in group_by_device_dtype(grads).items():
        if use_foreach(foreach, [device]):
            torch._foreach_clamp_min_(gs, -clip_value)
            torch._foreach_clamp_max_(gs, clip_value)
        else:
            for g in gs:
                g.clamp_(-clip_value, clip_value)


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """Norm per output unit, broadcastable against ``x``.

    PyTorch stores a linear weight as ``[out, in]`` and a convolution kernel as
    ``[out, in, kh, kw]``: a unit is one slice along dimension 0, so the norm
    runs over all other dimensions. Vectors and scalars (biases, gains) count
    as one unit.
    """
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


def adaptive_clip_grad_(
    parameters: _Params, clipping: float = 0.01, eps: float = 1e-3
) -> torch.Tensor:
    r"""Unit-wise adaptive gradient clipping (AGC), in place.

    For each unit :math:`i` with weights :math:`W_i` and gradient :math:`G_i`
    (Brock et al. 2021, eq. 3):

    .. math::
        G_i \leftarrow \begin{cases}
        \lambda \dfrac{\max(\|W_i\|, \epsilon)}{\|G_i\|} G_i & \text{if }
        \dfrac{\|G_i\|}{\max(\|W_i\|, \epsilon)} > \lambda \\
        G_i & \text{otherwise}\end{cases}

    with ``clipping`` = :math:`\lambda` and ``eps`` = :math:`\epsilon` (which keeps
    zero-initialised weights from freezing). Units are rows of PyTorch's
    ``[out, in]`` layout (see :func:`unitwise_norm`). The paper does not clip
    the final linear layer; pass only the parameters you want clipped.

    Returns the fraction of units that were clipped (a float tensor).
    """
    clipping = _check_threshold("clipping", clipping,
                                "Brock et al. (2021) use 0.01 to 0.16: the largest allowed ratio of a "
                                "unit's gradient norm to its weight norm.")
    eps = _check_threshold("eps", eps, "The paper uses 1e-3: the weight norm assumed for units whose "
                                       "weights are (near) zero.")
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    clipped, units = 0, 0
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p.detach()).clamp(min=eps) * clipping
        grad_norm = unitwise_norm(p.grad)
        trigger = grad_norm > max_norm
        scale = torch.where(trigger, max_norm / grad_norm.clamp(min=1e-6), torch.ones_like(grad_norm))
        p.grad.mul_(scale)
        clipped += int(trigger.sum())
        units += trigger.numel()
    return torch.tensor(clipped / units if units else 0.0)


class AdaptiveClipper:
    """Norm clipping with a threshold learned from the history of gradient norms.

    Each call computes the global gradient norm, clips at
    ``factor * quantile(history, q)`` once ``warmup`` finite norms have been
    seen (at ``initial`` before that; ``inf`` means no clipping during warm-up),
    and appends the *unclipped* norm to the history: the last ``window`` norms,
    or every norm seen with ``window=None``, which with ``factor=1`` is AutoClip
    (Seetharaman et al. 2020). A quantile (not the mean or maximum) keeps one
    spike from raising the threshold much. Usage::

        clipper = AdaptiveClipper(quantile=0.9, window=200)
        loss.backward()
        norm, threshold = clipper(model.parameters())
        optimizer.step()

    A non-finite norm is never added to the history. With
    ``error_if_nonfinite=True`` it raises ``RuntimeError`` (so that the caller
    can skip the step) instead of clipping, which would turn the gradients
    into 0 or NaN.
    """

    def __init__(self, quantile: float = 0.9, window: int | None = 200, factor: float = 1.0,
                 warmup: int = 20, norm_type: float = 2.0, initial: float = math.inf,
                 error_if_nonfinite: bool = False) -> None:
        _validate.in_range("quantile", quantile, 0.0, 1.0, low_open=True,
                           hint="0.9 clips the top 10 % of norms")
        if window is not None:
            _validate.integer("window", window, 1, hint="or None for the whole history")
        _validate.integer("warmup", warmup, 1, window,
                          hint="the number of norms seen before the quantile is used")
        self.quantile = quantile
        self.window = window
        self.factor = _check_threshold("factor", factor, "1 clips at the quantile itself; 2 to 5 only "
                                                         "catches spikes well above it")
        self.warmup = warmup
        self.norm_type = _check_norm_type(norm_type)
        self.initial = math.inf if initial == math.inf else _check_threshold("initial", initial)
        self.error_if_nonfinite = bool(error_if_nonfinite)
        self.history: deque[float] = deque(maxlen=window)

    def threshold(self) -> float:
        """The current threshold (``initial`` during warm-up)."""
        if len(self.history) < self.warmup:
            return self.initial
        ordered = sorted(self.history)
        idx = min(len(ordered) - 1, max(0, math.ceil(self.quantile * len(ordered)) - 1))
        return self.factor * ordered[idx]

    def __call__(self, parameters: _Params) -> tuple[float, float]:
        """Clip in place; return ``(norm before clipping, threshold used)``."""
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        limit = self.threshold()
        if math.isinf(limit):
            grads = _grads(params)
            total = _total_norm(grads, self.norm_type, None) if grads else torch.tensor(0.0)
            if self.error_if_nonfinite:
                _raise_if_nonfinite(total, self.norm_type)
        else:
            total = clip_grad_norm_(params, limit, self.norm_type,
                                    error_if_nonfinite=self.error_if_nonfinite)
        norm = float(total)
        if math.isfinite(norm):
            self.history.append(norm)
        return norm, limit

    def state_dict(self) -> dict:
        return {"history": list(self.history), "quantile": self.quantile, "window": self.window,
                "factor": self.factor, "warmup": self.warmup, "norm_type": self.norm_type,
                "initial": self.initial, "error_if_nonfinite": self.error_if_nonfinite}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(state["quantile"], state["window"], state["factor"], state["warmup"],
                      state["norm_type"], state.get("initial", math.inf),
                      state.get("error_if_nonfinite", False))
        self.history.extend(state["history"])


class FlatGradients:
    """Keep the gradients of ``parameters`` in one contiguous buffer per (device, dtype).

    Every ``p.grad`` becomes a view into its group's buffer, and autograd keeps
    accumulating into those views in place (it adds to an existing ``.grad``).
    Clipping by the global norm is then two passes over one long array: one
    reduction for the norm and one in-place multiply, 12 bytes of memory traffic
    per float32 gradient, with no per-tensor kernels and no list of per-tensor
    norms. No standalone clipping step can do with fewer passes (a fused optimizer
    can fold the scale into its update instead), because the scale depends
    on the norm of *all* gradients. DDP's ``gradient_as_bucket_view=True`` uses
    the same trick for its buckets.

    Usage::

        flat = FlatGradients(model.parameters())
        for x, y in loader:
            flat.zero_()                      # instead of optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            norm = flat.clip_norm_(1.0)       # same result as torch.nn.utils.clip_grad_norm_
            optimizer.step()

    ``optimizer.zero_grad()`` with its default ``set_to_none=True`` replaces the
    views by ``None``; the next call of any method here notices and binds the
    views again (copying a gradient that autograd stored elsewhere meanwhile),
    so nothing is lost, but the first backward after it allocates.
    """

    #: entries per chunk of the norm's reduction (see :meth:`norm`)
    CHUNK = 2**16

    def __init__(self, parameters: _Params) -> None:
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("no parameter requires a gradient: pass model.parameters() of a model "
                             "you train (FlatGradients keeps their gradients in one buffer)")
        if any(p.is_sparse for p in self.params):
            raise ValueError("sparse parameters cannot share a dense gradient buffer; leave them out "
                             "of FlatGradients (sparse gradients of dense parameters are fine: they "
                             "are copied into the buffer densely)")
        sizes: dict[tuple, int] = defaultdict(int)
        self._slot: list[tuple[tuple, int]] = []
        for p in self.params:
            key = (p.device, p.dtype)
            self._slot.append((key, sizes[key]))
            sizes[key] += p.numel()
        self.buffers = {key: torch.zeros(n, device=key[0], dtype=key[1]) for key, n in sizes.items()}
        self._views = [self.buffers[key][start:start + p.numel()].view(p.shape)
                       for p, (key, start) in zip(self.params, self._slot)]
        self.bind_()

    def bind_(self) -> None:
        """Make every ``p.grad`` the view into the buffer again, keeping its value
        (a gradient set to ``None`` counts as zero)."""
        for p, view in zip(self.params, self._views):
            g = p.grad
            if g is not None and g.data_ptr() == view.data_ptr() and g.stride() == view.stride():
                continue
            if g is None:
                view.zero_()
            else:
                view.copy_(g.to_dense() if g.is_sparse else g)
            p.grad = view

    def zero_(self) -> None:
        """Zero all gradients: one fill per buffer."""
        self.bind_()
        for buf in self.buffers.values():
            buf.zero_()

    def norm(self, norm_type: float = 2.0) -> torch.Tensor:
        """The global ``norm_type``-norm of all gradients (a 0-dim tensor on the
        first parameter's device), without a host synchronisation."""
        norm_type = _check_norm_type(norm_type)
        self.bind_()
        # In chunks: one float32 reduction over millions of entries can lose digits
        # (a relative error of 6e-4 at 2**24 entries with torch 2.13 on a CPU); the
        # chunks' norms, combined, are as accurate as torch's per-tensor path.
        chunks = [chunk for buf in self.buffers.values() for chunk in buf.split(self.CHUNK)]
        return _total_norm(chunks, norm_type, None)

    def clip_norm_(self, max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False) -> torch.Tensor:
        """Global-norm clipping with the semantics of :func:`clip_grad_norm_`
        (scale ``min(1, max_norm / (norm + 1e-6))``; returns the norm before clipping)."""
        max_norm = _check_threshold("max_norm", max_norm)
        total = self.norm(norm_type)
        if error_if_nonfinite:
            _raise_if_nonfinite(total, norm_type)
        _scale_to_max_norm_(list(self.buffers.values()), total, max_norm, None)
        return total

    def clip_value_(self, clip_value: float) -> None:
        """Clamp every gradient entry to ``[-clip_value, clip_value]`` (one pass per buffer)."""
        clip_value = _check_threshold("clip_value", clip_value, _VALUE_HINT)
        self.bind_()
        for buf in self.buffers.values():
            buf.clamp_(-clip_value, clip_value)
