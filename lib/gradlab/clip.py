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

All functions work in place on ``p.grad`` for parameters that have one, group
tensors by device and dtype (so mixed CPU/CUDA and float32/float64 lists
work), and validate their arguments with messages that say what to do.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterable

import torch

__all__ = ["clip_grad_norm_", "clip_grad_value_", "adaptive_clip_grad_", "unitwise_norm",
           "AdaptiveClipper"]

_Params = torch.Tensor | Iterable[torch.Tensor]


def _grads(parameters: _Params) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def _check_threshold(name: str, value: float) -> float:
    if isinstance(value, torch.Tensor):
        value = float(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} must be a finite number > 0, got {value}. Typical values are 0.1 to 10: "
            "pick one from the gradient norms you observe (e.g. their 90th percentile)."
        )
    return float(value)


def _check_norm_type(norm_type: float) -> float:
    norm_type = float(norm_type)
    if not (norm_type == math.inf or norm_type > 0):
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type}")
    return norm_type


def _group(grads: list[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = defaultdict(list)
    for g in grads:
        groups[(g.device, g.dtype)].append(g)
    return groups


def _use_foreach(foreach: bool | None, device: torch.device) -> bool:
    if foreach is None:
        return device.type in ("cpu", "cuda")
    return foreach


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
    (device, dtype) group is computed in its own dtype, as torch does.

    Raises ``ValueError`` for ``max_norm <= 0`` (where torch silently flips or
    zeroes gradients) and, with ``error_if_nonfinite=True``, ``RuntimeError``
    when the total norm is NaN or inf.
    """
    max_norm = _check_threshold("max_norm", max_norm)
    norm_type = _check_norm_type(norm_type)
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    first_device = grads[0].device
    groups = _group(grads)
    norms: list[torch.Tensor] = []
    for (device, _), gs in groups.items():
        if _use_foreach(foreach, device):
            norms.extend(torch._foreach_norm(gs, norm_type))
        else:
            norms.extend(torch.linalg.vector_norm(g, norm_type) for g in gs)
    total = torch.linalg.vector_norm(torch.stack([n.to(first_device) for n in norms]), norm_type)
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is {total.item()}, so clipping "
            "cannot rescale them. Skip this step (zero the gradients), lower the learning rate, "
            "or find the op that overflowed with torch.autograd.set_detect_anomaly(True); "
            "pass error_if_nonfinite=False to clip anyway (the gradients become 0 or NaN)."
        )
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for (device, _), gs in groups.items():
        c = coef.to(device)
        if _use_foreach(foreach, device):
            torch._foreach_mul_(gs, c)
        else:
            for g in gs:
                g.mul_(c)
    return total


def clip_grad_value_(parameters: _Params, clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every gradient entry to ``[-clip_value, clip_value]``, in place.

    Unlike norm clipping this changes the direction of the update: a gradient
    ``(100, 1)`` clipped at 1 becomes ``(1, 1)``.
    """
    clip_value = _check_threshold("clip_value", clip_value)
    grads = _grads(parameters)
    for (device, _), gs in _group(grads).items():
        if _use_foreach(foreach, device):
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
    clipping = _check_threshold("clipping", clipping)
    eps = _check_threshold("eps", eps)
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
    ``factor * quantile(history, q)`` once ``warmup`` norms have been seen (at
    ``initial`` before that; ``inf`` means no clipping during warm-up), and
    appends the *unclipped* norm to a window of the last ``window`` norms. A
    quantile (not the mean or maximum) keeps one spike from raising the
    threshold much. Usage::

        clipper = AdaptiveClipper(quantile=0.9, window=200)
        loss.backward()
        norm, threshold = clipper(model.parameters())
        optimizer.step()
    """

    def __init__(self, quantile: float = 0.9, window: int = 200, factor: float = 1.0,
                 warmup: int = 20, norm_type: float = 2.0, initial: float = math.inf) -> None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        if not isinstance(warmup, int) or not 1 <= warmup <= window:
            raise ValueError(f"warmup must be an int in [1, window={window}], got {warmup!r}")
        self.quantile = quantile
        self.window = window
        self.factor = _check_threshold("factor", factor)
        self.warmup = warmup
        self.norm_type = _check_norm_type(norm_type)
        self.initial = math.inf if initial == math.inf else _check_threshold("initial", initial)
        self.history: deque[float] = deque(maxlen=window)

    def threshold(self) -> float:
        """The current threshold (``initial`` during warm-up)."""
        finite = [h for h in self.history if math.isfinite(h)]
        if len(finite) < self.warmup:
            return self.initial
        ordered = sorted(finite)
        idx = min(len(ordered) - 1, max(0, math.ceil(self.quantile * len(ordered)) - 1))
        return self.factor * ordered[idx]

    def __call__(self, parameters: _Params) -> tuple[float, float]:
        """Clip in place; return ``(norm before clipping, threshold used)``."""
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        limit = self.threshold()
        if math.isinf(limit):
            grads = _grads(params)
            norm = float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g, self.norm_type).double() for g in grads]),
                self.norm_type)) if grads else 0.0
        else:
            norm = float(clip_grad_norm_(params, limit, self.norm_type))
        self.history.append(norm)
        return norm, limit

    def state_dict(self) -> dict:
        return {"history": list(self.history), "quantile": self.quantile, "window": self.window,
                "factor": self.factor, "warmup": self.warmup, "norm_type": self.norm_type,
                "initial": self.initial}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(state["quantile"], state["window"], state["factor"], state["warmup"],
                      state["norm_type"], state.get("initial", math.inf))
        self.history.extend(state["history"])
