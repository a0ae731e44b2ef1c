"""SGD and its variants, drop-in with ``torch.optim``.

:class:`SGD`, :class:`Adagrad`, :class:`RMSprop`, :class:`Adam` and
:class:`AdamW` are ``torch.optim.Optimizer`` subclasses with the constructor
arguments, defaults, parameter groups, state names (``momentum_buffer``,
``sum``, ``square_avg``, ``grad_avg``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, ``step``) and ``state_dict`` layout of their ``torch.optim``
namesakes, so a state dict saved by one loads into the other and learning-rate
schedulers work unchanged.

Each optimizer has two code paths that compute the same update:

* a readable **single-tensor** path, a Python loop over parameters
  (``foreach=False``, the default on CPU), written to be read next to the paper;
* a **foreach** path (``foreach=True``, the default when every parameter is on
  CUDA) that issues one multi-tensor kernel per arithmetic operation for all
  parameters of the same device and dtype (``torch._foreach_*``), which removes
  the per-parameter launch overhead.

``differentiable``, ``capturable`` and ``fused`` are accepted for signature
compatibility but only at their default values: for a fused CUDA kernel use
``torch.optim.Adam(fused=True)``. Complex parameters are supported as in
``torch.optim`` (Adagrad, RMSprop and Adam see them as pairs of real numbers,
``torch.view_as_real``); sparse gradients are not (see the error message for
where to go instead), nor are integer parameters.

Tensors for hyper-parameters, as in ``torch.optim`` without ``capturable``: a
1-element tensor ``lr`` works on both paths of SGD, Adagrad and RMSprop, and
on the loop path of Adam and AdamW, which refuse it with ``foreach=True`` as
torch does. Adam's ``betas`` are two numbers or two 1-element tensors (loop
path only); one of each raises, as in torch. The default ``foreach=None``
never picks the multi-tensor path when ``lr`` or ``betas`` are tensors.

:func:`adam_step_bound` gives the exact worst-case per-coordinate step of Adam.

Notation: ``g_t`` the gradient at step ``t`` (after weight decay where it is
coupled), ``lr`` the learning rate, all operations element-wise.

Neighbours: optimizers for sparse gradients (SparseAdam, lazy Adam and SGD)
are in :mod:`gradlab.sparse`, GaLore's low-rank AdamW in :mod:`gradlab.galore`;
clipping, which usually runs just before ``step()``, in :mod:`gradlab.clip`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from gradlab import _validate
from gradlab._tensors import evaluate_closure, group_by_device_dtype, use_foreach

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "adam_step_bound"]

_Closure = Callable[[], float] | None


# --------------------------------------------------------------------------- helpers
def _check_unsupported(**flags: Any) -> None:
    for name, value in flags.items():
        if value:
            raise ValueError(
                f"{name}=True is not supported by gradlab.optim; use the torch.optim optimizer "
                f"of the same name for {name}, or leave {name} at its default")


def _tensor_foreach_error(name: str, instead: str) -> ValueError:
    # torch.optim.Adam's words, and what to do instead
    return ValueError(f"{name} as a Tensor is not supported for capturable=False and foreach=True "
                      f"(torch.optim.Adam refuses it too); pass {instead}, or foreach=False")


def _check_adam_hyper(lr: float | torch.Tensor, betas, foreach: bool | None) -> None:
    """Adam's lr and betas, as torch.optim.Adam takes them (see the module docstring)."""
    _validate.nonneg("lr", lr)
    betas = _validate.pair("betas", betas, "(beta1, beta2)")
    tensors = [isinstance(b, torch.Tensor) for b in betas]
    if any(tensors) and not all(tensors):
        raise ValueError(f"betas must be two numbers or two 1-element tensors, got {betas!r}; pass "
                         "floats, e.g. betas=(0.9, 0.999) (torch.optim.Adam refuses one of each too)")
    for i, b in enumerate(betas):
        _validate.unit(f"betas[{i}]", b)
    if foreach:
        if isinstance(lr, torch.Tensor):
            raise _tensor_foreach_error("lr", "a float, e.g. lr=float(lr)")
        if all(tensors):
            raise _tensor_foreach_error("betas[0]", "floats, e.g. betas=(float(b1), float(b2))")


def _foreach_for(group: dict, params: list[torch.Tensor]) -> bool:
    """Whether ``group`` takes the multi-tensor path: ``foreach=None`` does on CUDA
    only, and never with a tensor lr or tensor betas (as torch.optim)."""
    hyper = [group["lr"], *group.get("betas", ())]
    if group["foreach"] is None and any(isinstance(h, torch.Tensor) for h in hyper):
        return False
    return use_foreach(group["foreach"], [p.device for p in params], default=("cuda",), strict=False)


def _lr_for_step(group: dict, foreach: bool) -> float:
    """The group's lr as a float (a scheduler may hold a tensor); Adam refuses a tensor
    lr or tensor betas on the multi-tensor path, as torch does."""
    lr = group["lr"]
    if foreach and "betas" in group:
        _check_adam_hyper(lr, group["betas"], foreach)
    return lr.item() if isinstance(lr, torch.Tensor) else lr


def _real(t: torch.Tensor | None) -> torch.Tensor | None:
    """A complex tensor as a real view with a trailing dimension of 2 (as torch.optim does),
    so that element-wise squares are |re|^2 and |im|^2 rather than complex squares."""
    return torch.view_as_real(t) if t is not None and torch.is_complex(t) else t


def _new_step() -> torch.Tensor:
    # torch.optim keeps the step count as a float32 scalar tensor; so do we, so that
    # state dicts are interchangeable.
    return torch.tensor(0.0, dtype=torch.float32)


def _check_param(p: torch.Tensor, name: str) -> None:
    _validate.floating_param(f"gradlab.optim.{name}", p)
    if p.grad is not None and p.grad.is_sparse:
        if name in ("SGD", "Adagrad"):
            where = f"torch.optim.{name} supports them"
        else:
            where = "use torch.optim.SparseAdam, or the lazy optimizers in gradlab.sparse"
        raise RuntimeError(f"gradlab.optim.{name} does not support sparse gradients "
                           f"(e.g. from nn.Embedding(sparse=True)); {where}")


# --------------------------------------------------------------------------- SGD
class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

    With ``g_t`` the minibatch gradient (an unbiased estimate of the full-batch
    gradient), ``\lambda`` = ``weight_decay``, ``\mu`` = ``momentum``,
    ``\tau`` = ``dampening``:

    .. math::
        g_t \leftarrow g_t + \lambda\theta_{t-1},\qquad
        b_t = \mu b_{t-1} + (1-\tau) g_t \ (b_1 = g_1),\qquad
        d_t = g_t + \mu b_t \text{ (Nesterov) or } b_t,\qquad
        \theta_t = \theta_{t-1} - \text{lr}\, d_t .

    Heavy-ball momentum (Polyak 1964) in the form used by ``torch.optim.SGD``
    (the buffer holds gradients and ``lr`` multiplies it at the step); Nesterov's
    variant as in Sutskever et al. (2013), written for the look-ahead point.
    The step is unbounded: a gradient a thousand times larger moves the
    parameters a thousand times further.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float = 0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        _validate.nonneg("lr", lr)
        _validate.nonneg("momentum", momentum)
        _validate.nonneg("weight_decay", weight_decay)
        _validate.nonneg("dampening", dampening)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0, "
                             f"got momentum={momentum}, dampening={dampening}")
        _check_unsupported(differentiable=differentiable, fused=fused)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=False, fused=None)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: _Closure = None) -> float | None:
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                _check_param(p, "SGD")
                params.append(p)
                grads.append(p.grad)
                bufs.append(self.state[p].get("momentum_buffer"))
            use_foreach = _foreach_for(group, params)
            fn = _sgd_foreach if use_foreach else _sgd_single
            fn(params, grads, bufs, lr=_lr_for_step(group, use_foreach), momentum=group["momentum"],
               dampening=group["dampening"], weight_decay=group["weight_decay"],
               nesterov=group["nesterov"], maximize=group["maximize"])
            if group["momentum"] != 0:
                for p, b in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = b
        return loss


def _sgd_single(params, grads, bufs, *, lr, momentum, dampening, weight_decay, nesterov, maximize):
    for i, p in enumerate(params):
        g = -grads[i] if maximize else grads[i]
        if weight_decay != 0:
            g = g + weight_decay * p
        if momentum != 0:
            if bufs[i] is None:                      # first step: b_1 = g_1
                bufs[i] = g.clone().detach()
            else:                                    # b_t = mu b_{t-1} + (1 - tau) g_t
                bufs[i].mul_(momentum).add_(g, alpha=1 - dampening)
            g = g.add(bufs[i], alpha=momentum) if nesterov else bufs[i]
        p.add_(g, alpha=-lr)


def _sgd_foreach(params, grads, bufs, *, lr, momentum, dampening, weight_decay, nesterov, maximize):
    idx = list(range(len(params)))
    for (ps, gs, ii) in group_by_device_dtype(params, grads, idx).values():
        if maximize:
            gs = torch._foreach_neg(gs)
        if weight_decay != 0:
            gs = torch._foreach_add(gs, ps, alpha=weight_decay)
        if momentum != 0:
            bs = []
            for g, i in zip(gs, ii):
                if bufs[i] is None:
                    bufs[i] = g.clone().detach()
                    bs.append(None)
                else:
                    bs.append(bufs[i])
            old = [b for b in bs if b is not None]
            new_g = [g for g, b in zip(gs, bs) if b is not None]
            if old:
                torch._foreach_mul_(old, momentum)
                torch._foreach_add_(old, new_g, alpha=1 - dampening)
            cur = [bufs[i] for i in ii]
            gs = torch._foreach_add(gs, cur, alpha=momentum) if nesterov else cur
        torch._foreach_add_(ps, gs, alpha=-lr)


# --------------------------------------------------------------------------- Adagrad
class Adagrad(Optimizer):
    r"""Adagrad (Duchi, Hazan & Singer 2011).

    .. math::
        s_t = s_{t-1} + g_t^2,\qquad
        \theta_t = \theta_{t-1} - \frac{\text{lr}}{1+(t-1)\,\text{lr\_decay}}
        \cdot \frac{g_t}{\sqrt{s_t} + \epsilon}.

    The sum ``s`` only grows: after one gradient spike of size ``G`` in a stream of
    unit gradients, the step at step ``t`` is ``sqrt(t / (G^2 + t - 1))`` times the
    step without the spike, a slowdown whose deficit ``1 - ratio`` falls like
    ``(G^2 - 1) / (2 t)``, i.e. like ``1/t``, once ``t >> G^2``.
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0,
                 eps: float = 1e-10, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        _validate.nonneg("lr", lr)
        _validate.nonneg("lr_decay", lr_decay)
        _validate.nonneg("weight_decay", weight_decay)
        _validate.nonneg("initial_accumulator_value", initial_accumulator_value)
        _validate.nonneg("eps", eps)
        _check_unsupported(differentiable=differentiable, fused=fused)
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=False, fused=None)
        super().__init__(params, defaults)
        # like torch.optim.Adagrad, the state is created eagerly here (and lazily in step()
        # for parameter groups added later with add_param_group)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, group)

    def _init_state(self, p: torch.Tensor, group: dict) -> None:
        st = self.state[p]
        st["step"] = _new_step()
        init = group["initial_accumulator_value"]
        st["sum"] = torch.full_like(p, complex(init, init) if torch.is_complex(p) else init,
                                    memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self, closure: _Closure = None) -> float | None:
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, sums, steps = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                _check_param(p, "Adagrad")
                if "sum" not in self.state[p]:
                    self._init_state(p, group)
                st = self.state[p]
                params.append(_real(p))
                grads.append(_real(p.grad))
                sums.append(_real(st["sum"]))
                steps.append(st["step"])
            use_foreach = _foreach_for(group, params)
            fn = _adagrad_foreach if use_foreach else _adagrad_single
            fn(params, grads, sums, steps, lr=_lr_for_step(group, use_foreach), lr_decay=group["lr_decay"],
               weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"])
        return loss


def _adagrad_single(params, grads, sums, steps, *, lr, lr_decay, weight_decay, eps, maximize):
    for p, g, s, t in zip(params, grads, sums, steps):
        t += 1
        g = -g if maximize else g
        if weight_decay != 0:
            g = g + weight_decay * p
        clr = lr / (1 + (t.item() - 1) * lr_decay)
        s.addcmul_(g, g, value=1)                    # s_t = s_{t-1} + g_t^2
        std = s.sqrt().add_(eps)
        p.addcdiv_(g, std, value=-clr)


def _adagrad_foreach(params, grads, sums, steps, *, lr, lr_decay, weight_decay, eps, maximize):
    for ps, gs, ss, ts in group_by_device_dtype(params, grads, sums, steps).values():
        torch._foreach_add_(ts, 1)
        if maximize:
            gs = torch._foreach_neg(gs)
        if weight_decay != 0:
            gs = torch._foreach_add(gs, ps, alpha=weight_decay)
        torch._foreach_addcmul_(ss, gs, gs, value=1)
        std = torch._foreach_sqrt(ss)
        torch._foreach_add_(std, eps)
        clrs = [-lr / (1 + (t.item() - 1) * lr_decay) for t in ts]
        torch._foreach_addcdiv_(ps, gs, std, clrs)


# --------------------------------------------------------------------------- RMSprop
class RMSprop(Optimizer):
    r"""RMSprop (Tieleman & Hinton 2012), plain, centered and with momentum.

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2,\quad
        \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t \text{ (centered)},\quad
        d_t = \frac{g_t}{\sqrt{v_t - \bar g_t^2} + \epsilon}
        \ \Big(\text{or } \frac{g_t}{\sqrt{v_t} + \epsilon}\Big),

    then ``b_t = momentum * b_{t-1} + d_t`` and ``theta -= lr * b_t`` when
    ``momentum > 0``, else ``theta -= lr * d_t``.
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0,
                 centered: bool = False, capturable: bool = False, foreach: bool | None = None,
                 maximize: bool = False, differentiable: bool = False) -> None:
        _validate.nonneg("lr", lr)
        _validate.nonneg("eps", eps)
        _validate.nonneg("momentum", momentum)
        _validate.nonneg("weight_decay", weight_decay)
        _validate.nonneg("alpha", alpha)
        _check_unsupported(capturable=capturable, differentiable=differentiable)
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, capturable=False, foreach=foreach, maximize=maximize,
                        differentiable=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: _Closure = None) -> float | None:
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, sq, gavg, bufs, steps = [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                _check_param(p, "RMSprop")
                st = self.state[p]
                if len(st) == 0:
                    st["step"] = _new_step()
                    st["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["momentum"] > 0:
                        st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["centered"]:
                        st["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(_real(p))
                grads.append(_real(p.grad))
                sq.append(_real(st["square_avg"]))
                gavg.append(_real(st.get("grad_avg")))
                bufs.append(_real(st.get("momentum_buffer")))
                steps.append(st["step"])
            use_foreach = _foreach_for(group, params)
            fn = _rmsprop_foreach if use_foreach else _rmsprop_single
            fn(params, grads, sq, gavg, bufs, steps, lr=_lr_for_step(group, use_foreach), alpha=group["alpha"],
               eps=group["eps"], weight_decay=group["weight_decay"], momentum=group["momentum"],
               centered=group["centered"], maximize=group["maximize"])
        return loss


def _rmsprop_single(params, grads, sq, gavg, bufs, steps, *, lr, alpha, eps, weight_decay,
                    momentum, centered, maximize):
    for i, p in enumerate(params):
        steps[i] += 1
        g = -grads[i] if maximize else grads[i]
        if weight_decay != 0:
            g = g + weight_decay * p
        v = sq[i].mul_(alpha).addcmul_(g, g, value=1 - alpha)   # v_t
        if centered:
            m = gavg[i].lerp_(g, 1 - alpha)                      # running mean of g
            denom = v.addcmul(m, m, value=-1).sqrt_().add_(eps)   # sqrt(Var g) + eps
        else:
            denom = v.sqrt().add_(eps)
        if momentum > 0:
            bufs[i].mul_(momentum).addcdiv_(g, denom)
            p.add_(bufs[i], alpha=-lr)
        else:
            p.addcdiv_(g, denom, value=-lr)


def _rmsprop_foreach(params, grads, sq, gavg, bufs, steps, *, lr, alpha, eps, weight_decay,
                     momentum, centered, maximize):
    lists = (params, grads, sq, steps, gavg if centered else params,
             bufs if momentum > 0 else params)
    for ps, gs, vs, ts, ms, bs in group_by_device_dtype(*lists).values():
        torch._foreach_add_(ts, 1)
        if maximize:
            gs = torch._foreach_neg(gs)
        if weight_decay != 0:
            gs = torch._foreach_add(gs, ps, alpha=weight_decay)
        torch._foreach_mul_(vs, alpha)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - alpha)
        if centered:
            torch._foreach_lerp_(ms, gs, 1 - alpha)
            denom = torch._foreach_addcmul(vs, ms, ms, value=-1)
            torch._foreach_sqrt_(denom)
        else:
            denom = torch._foreach_sqrt(vs)
        torch._foreach_add_(denom, eps)
        if momentum > 0:
            torch._foreach_mul_(bs, momentum)
            torch._foreach_addcdiv_(bs, gs, denom)
            torch._foreach_add_(ps, bs, alpha=-lr)
        else:
            torch._foreach_addcdiv_(ps, gs, denom, value=-lr)


# --------------------------------------------------------------------------- Adam / AdamW
class Adam(Optimizer):
    r"""Adam (Kingma & Ba 2015), with AMSGrad and optional decoupled weight decay.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\\
        \hat m_t = m_t / (1-\beta_1^t),\qquad \hat v_t = v_t / (1-\beta_2^t),\qquad
        \theta_t = \theta_{t-1} - \text{lr}\,\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}.

    AMSGrad (Reddi et al. 2018) replaces ``v_t`` by its running maximum
    :math:`\max_{k \le t} v_k` and then divides that by :math:`1-\beta_2^t`, as
    ``torch.optim.Adam`` does (the paper's algorithm has no bias correction).
    Coupled weight decay adds ``weight_decay * theta`` to ``g_t``; with
    ``decoupled_weight_decay=True`` (AdamW, Loshchilov & Hutter 2019) the
    parameters are instead multiplied by ``1 - lr * weight_decay`` before the
    update, a decay that follows ``lr`` (the paper multiplies its decay rate by
    the schedule multiplier only).

    Each coordinate's step is a small multiple of ``lr`` whatever the scale of the
    gradients: exactly ``lr`` or less on the first step, about
    ``lr (1-beta1)/sqrt(1-beta2)`` (3.16 lr at the default betas) for a gradient after
    a long stretch of zero gradients (Kingma & Ba, Sec. 2.1), and never more than
    :func:`adam_step_bound` times ``lr`` (at most about 7.27 lr at the default betas).
    The whole update of ``d`` parameters is bounded only per coordinate: its norm
    can reach up to ``adam_step_bound * lr * sqrt(d)`` (about 7.3 ``lr * sqrt(d)``); on
    the first step it is about ``lr * sqrt(d)`` (less only through ``eps``).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False) -> None:
        _check_adam_hyper(lr, betas, foreach)
        _validate.nonneg("eps", eps)
        _validate.nonneg("weight_decay", weight_decay)
        _check_unsupported(capturable=capturable, differentiable=differentiable, fused=fused)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, foreach=foreach, maximize=maximize, capturable=False,
                        differentiable=False, fused=None,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("decoupled_weight_decay", isinstance(self, AdamW))

    @torch.no_grad()
    def step(self, closure: _Closure = None) -> float | None:
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params, grads, ms, vs, vmax, steps = [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                _check_param(p, type(self).__name__)
                st = self.state[p]
                if len(st) == 0:
                    st["step"] = _new_step()
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["amsgrad"]:
                        st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(_real(p))
                grads.append(_real(p.grad))
                ms.append(_real(st["exp_avg"]))
                vs.append(_real(st["exp_avg_sq"]))
                vmax.append(_real(st.get("max_exp_avg_sq")))
                steps.append(st["step"])
            use_foreach = _foreach_for(group, params)
            fn = _adam_foreach if use_foreach else _adam_single
            beta1, beta2 = group["betas"]
            fn(params, grads, ms, vs, vmax, steps, lr=_lr_for_step(group, use_foreach), beta1=beta1, beta2=beta2,
               eps=group["eps"], weight_decay=group["weight_decay"], amsgrad=group["amsgrad"],
               maximize=group["maximize"], decoupled=group["decoupled_weight_decay"])
        return loss


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay,
    ``theta <- theta (1 - lr * weight_decay)`` before the Adam update; default
    ``weight_decay=1e-2`` as in ``torch.optim.AdamW``."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, foreach=foreach, maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused, decoupled_weight_decay=True)


def _adam_single(params, grads, ms, vs, vmax, steps, *, lr, beta1, beta2, eps, weight_decay,
                 amsgrad, maximize, decoupled):
    for i, p in enumerate(params):
        steps[i] += 1
        t = steps[i].item()
        g = -grads[i] if maximize else grads[i]
        if weight_decay != 0:
            if decoupled:
                p.mul_(1 - lr * weight_decay)            # AdamW: shrink theta directly
            else:
                g = g + weight_decay * p                 # Adam: L2 term in the gradient
        ms[i].lerp_(g, 1 - beta1)                        # m_t
        vs[i].mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v_t
        bc1 = 1 - beta1 ** t
        bc2_sqrt = math.sqrt(1 - beta2 ** t)
        if amsgrad:
            torch.maximum(vmax[i], vs[i], out=vmax[i])
            denom = (vmax[i].sqrt() / bc2_sqrt).add_(eps)
        else:
            denom = (vs[i].sqrt() / bc2_sqrt).add_(eps)  # sqrt(v_hat) + eps
        p.addcdiv_(ms[i], denom, value=-lr / bc1)        # theta -= lr m_hat / (...)


def _adam_foreach(params, grads, ms, vs, vmax, steps, *, lr, beta1, beta2, eps, weight_decay,
                  amsgrad, maximize, decoupled):
    lists = (params, grads, ms, vs, steps, vmax if amsgrad else params)
    for ps, gs, mm, vv, ts, mx in group_by_device_dtype(*lists).values():
        torch._foreach_add_(ts, 1)
        if maximize:
            gs = torch._foreach_neg(gs)
        if weight_decay != 0:
            if decoupled:
                torch._foreach_mul_(ps, 1 - lr * weight_decay)
            else:
                gs = torch._foreach_add(gs, ps, alpha=weight_decay)
        torch._foreach_lerp_(mm, gs, 1 - beta1)
        torch._foreach_mul_(vv, beta2)
        torch._foreach_addcmul_(vv, gs, gs, value=1 - beta2)
        tt = [t.item() for t in ts]
        step_sizes = [-lr / (1 - beta1 ** t) for t in tt]
        bc2_sqrt = [math.sqrt(1 - beta2 ** t) for t in tt]
        if amsgrad:
            torch._foreach_maximum_(mx, vv)
            denom = torch._foreach_sqrt(mx)
        else:
            denom = torch._foreach_sqrt(vv)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(ps, mm, denom, step_sizes)


# --------------------------------------------------------------------------- Adam's step bound
def adam_step_bound(step: float, betas: tuple[float, float] = (0.9, 0.999)) -> float:
    r"""Largest possible ``|step of one coordinate| / lr`` of Adam at step number ``step``
    (1-based; ``math.inf`` for the limit of long runs), over all gradient sequences.

    With ``\gamma = \beta_1^2/\beta_2``, Cauchy-Schwarz on
    ``m_t = (1-\beta_1)\sum_k \beta_1^k g_{t-k}`` against
    ``v_t = (1-\beta_2)\sum_k \beta_2^k g_{t-k}^2`` gives

    .. math::
        \frac{|\Delta\theta_t|}{\text{lr}} \le
        \frac{1-\beta_1}{\sqrt{1-\beta_2}}\,
        \sqrt{\textstyle\sum_{k=0}^{t-1}\gamma^k}\;
        \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t},

    which is exactly 1 at ``t = 1`` and tends to
    ``(1-beta1) / sqrt((1-beta2)(1-gamma))`` when ``gamma < 1`` (about 7.27 at the
    default betas; it grows without limit when ``beta1**2 >= beta2``). Equality needs
    gradients that grow geometrically by ``beta2/beta1`` per step, so the bound is
    tight. ``eps > 0`` only shrinks the step; AMSGrad's larger denominator too. With
    weight decay the bound applies to the gradient including the coupled L2 term
    (Adam) or excludes the decoupled shrinking (AdamW).
    Kingma & Ba (2015, Sec. 2.1) give the approximate per-step forms.
    """
    beta1, beta2 = _validate.pair("betas", betas, "(beta1, beta2)")
    beta1 = _validate.unit("betas[0]", beta1)
    beta2 = _validate.unit("betas[1]", beta2)
    if not (isinstance(step, (int, float)) and step >= 1):
        raise ValueError(f"step must be a step number >= 1 (or math.inf), got {step!r}")
    if beta2 == 0.0:  # v_t = g_t^2: no memory in the denominator
        return 1.0 if beta1 == 0.0 else math.inf
    gamma = beta1**2 / beta2
    if math.isinf(step):
        return math.inf if gamma >= 1 else (1 - beta1) / math.sqrt((1 - beta2) * (1 - gamma))
    t = int(step)
    try:
        total = float(t) if gamma == 1 else (gamma**t - 1) / (gamma - 1)  # sum_{k<t} gamma^k
    except OverflowError:
        return math.inf
    return (1 - beta1) / math.sqrt(1 - beta2) * math.sqrt(total) * math.sqrt(1 - beta2**t) / (1 - beta1**t)
