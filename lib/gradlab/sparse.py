"""Sparse gradients and sparse updates: the optimizers of the sparse chapter.

* :class:`SparseAdam`: a drop-in for :class:`torch.optim.SparseAdam` (same
  arguments, same results), implemented row-wise with gathers and
  ``index_copy_`` instead of sparse-tensor arithmetic.
* :class:`LazyAdam` and :class:`LazySGD`: row-wise ("lazy") optimizers that
  touch only the rows a sparse gradient names. ``LazyAdam`` keeps a step count
  per row, so every row behaves as an independent Adam over its own gradients;
  with ``catch_up=True`` it instead applies the decays a row missed, so that
  its moments equal dense Adam's whenever the row is touched.
* :func:`density`: the fraction of stored (or non-zero) entries.

Neighbours: sparsifying gradients for communication (top-k, random-k, error
feedback, DGC) lives in :mod:`gradlab.compress`, with PowerSGD; sparse
*weights* (the L1 proximal step, magnitude pruning) in :mod:`gradlab.prune`.

Sparse gradients must have the sparse COO layout (what
``nn.Embedding(sparse=True)`` produces); the lazy optimizers also accept dense
gradients, which they treat as touching every row. Parameters may have any
strides (a transposed weight, ``Parameter(x.t())``); only the touched rows are
read and written either way. All code is device-agnostic torch: it runs on CPU
and CUDA tensors, in float32 and float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from gradlab import _validate
from gradlab._tensors import evaluate_closure

__all__ = [
    "SparseAdam",
    "LazyAdam",
    "LazySGD",
    "density",
]


# ----------------------------------------------------------------------------- helpers


# torch.optim's own words come first in these messages (torch_says), for readers who search for them


def _check_lr(lr: float | torch.Tensor, *, strict: bool) -> None:
    """A number or 1-element tensor, > 0 (``strict``, torch.optim.SparseAdam) or >= 0 (torch.optim.SGD)."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element; pass a float or a 1-element tensor")
    check = _validate.positive if strict else _validate.nonneg
    check("lr", lr, torch_says="Invalid learning rate")


def _check_adam_args(lr: float, betas: tuple[float, float], eps: float) -> None:
    _check_lr(lr, strict=True)
    _validate.positive("eps", eps, hint="1e-8 is the usual guard", torch_says="Invalid epsilon value")
    betas = _validate.pair("betas", betas, "(beta1, beta2)")
    for i, b in enumerate(betas):
        _validate.unit(f"betas[{i}]", b, torch_says=f"Invalid beta parameter at index {i}")


def _check_dense_real(optimizer: torch.optim.Optimizer, name: str) -> None:
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            if p.is_sparse:
                raise ValueError(f"Sparse params at indices [{gi}, {pi}]: {name} requires dense "
                                 "parameter tensors (sparse gradients are fine)")
            if p.is_complex():
                raise ValueError(f"Complex params at indices [{gi}, {pi}]: {name} does not support "
                                 "complex parameters")
            _validate.floating_param(f"gradlab.sparse.{name}", p)


class _Rows:
    """The rows of a parameter that one gradient touches, and row-wise access to
    any tensor of the parameter's shape (the parameter, its optimizer state).

    ``shape`` is the 2-D shape ``[rows, rest]``; ``flat`` holds the unique
    touched row numbers (``None``: all rows); ``index`` the same rows as one
    index tensor per leading dimension. Contiguous tensors are accessed through
    a 2-D view with ``index_select`` / ``index_copy_`` (the fast path); other
    layouts (a transposed weight, ``Parameter(x.t())``) through advanced
    indexing and ``index_put_``, which works for any strides and, like the fast
    path, touches only the named rows."""

    def __init__(self, shape: tuple[int, int], flat: torch.Tensor | None,
                 index: tuple[torch.Tensor, ...] = (), unsqueeze: bool = False) -> None:
        self.shape, self.flat, self.index, self.unsqueeze = shape, flat, index, unsqueeze
        self.n_rows = shape[0]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """The touched rows of ``t`` as a ``[touched, rest]`` tensor."""
        if self.flat is None:
            return t.reshape(self.shape)
        if t.is_contiguous():
            return t.view(self.shape).index_select(0, self.flat)
        src = t.unsqueeze(0) if self.unsqueeze else t
        return src[self.index].reshape(self.flat.numel(), self.shape[1])

    def scatter_(self, t: torch.Tensor, rows: torch.Tensor) -> None:
        """Write ``rows`` (``[touched, rest]``) into the touched rows of ``t``, in place."""
        if self.flat is None:
            t.copy_(rows.reshape(t.shape))
        elif t.is_contiguous():
            t.view(self.shape).index_copy_(0, self.flat, rows)
        else:
            dst = t.unsqueeze(0) if self.unsqueeze else t
            dst.index_put_(self.index, rows.reshape(self.flat.numel(), *dst.shape[len(self.index):]))


def _rows(p: torch.Tensor, grad: torch.Tensor, maximize: bool) -> tuple[_Rows, torch.Tensor]:
    """``(rows, values)``: the rows of ``p`` that ``grad`` touches and their
    gradient rows, ``[touched, rest]``.

    For a sparse COO gradient with ``sparse_dim = k`` the rows are the entries of
    the first ``k`` dimensions, flattened; duplicates are summed (coalesced). A
    dense gradient touches every row of the first dimension."""
    if grad.is_sparse:
        grad = grad.coalesce()
        k = grad.sparse_dim()
        lead = p.shape[:k]
        ind = grad.indices()
        if k > 1:
            strides = torch.tensor([math.prod(lead[i + 1:]) for i in range(k)], device=ind.device)
            flat = (ind * strides[:, None]).sum(0)
        elif k == 1:
            flat = ind[0]
        else:  # no sparse dimension: the whole tensor is one row
            flat = torch.zeros(min(1, grad.values().shape[0]), dtype=torch.long, device=ind.device)
        index = tuple(ind) if k else (flat,)
        rest = math.prod(p.shape[k:])
        rows = _Rows((math.prod(lead), rest) if k else (1, rest), flat, index, unsqueeze=k == 0)
        values = grad.values().reshape(flat.numel(), rest)
    else:
        if grad.layout != torch.strided:
            raise TypeError(f"gradient layout {grad.layout} is not supported; use sparse COO "
                            "(tensor.to_sparse()) or a dense gradient")
        shape = (p.shape[0], math.prod(p.shape[1:])) if p.dim() else (1, 1)
        rows = _Rows(shape, None)
        values = grad.reshape(shape)
    if maximize:
        values = -values
    return rows, values


def _gather(t: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """Entries ``idx`` of a 1-D per-row state tensor (``None``: all of them)."""
    return t if idx is None else t.index_select(0, idx)


def _scatter_(t: torch.Tensor, idx: torch.Tensor | None, rows: torch.Tensor) -> None:
    """Write ``rows`` into entries ``idx`` of a 1-D per-row state tensor, in place."""
    if idx is None:
        t.copy_(rows)
    else:
        t.index_copy_(0, idx, rows)


def density(x: torch.Tensor) -> float:
    """Fraction of non-zero entries of ``x`` (dense or sparse); 0.0 for an empty tensor."""
    if x.numel() == 0:
        return 0.0
    if x.is_sparse:
        x = x.coalesce()
        nnz = int((x.values() != 0).sum())
        return nnz / x.numel()
    return int(torch.count_nonzero(x)) / x.numel()


# ----------------------------------------------------------------------------- SparseAdam


class SparseAdam(torch.optim.Optimizer):
    r"""Adam restricted to the entries a sparse gradient names; a drop-in for
    :class:`torch.optim.SparseAdam` (same arguments, defaults, state and results).

    For the touched rows :math:`R_t` of step :math:`t` (the coalesced indices of
    the sparse gradient :math:`g_t`), and only for them,

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1) g_t,\quad
        v \leftarrow \beta_2 v + (1-\beta_2) g_t^2,\quad
        \theta \leftarrow \theta - \eta\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
        \,\frac{m}{\sqrt{v} + \epsilon},

    with learning rate :math:`\eta`, where :math:`t` counts the optimizer steps
    of the parameter (all rows share it). Untouched rows keep their moments and values: unlike dense Adam
    (Kingma & Ba 2015) their moments do not decay and their momentum does not
    move them. The arithmetic follows torch's ``_functional.sparse_adam``
    operation for operation; the rows are gathered and written back with
    ``index_select`` / ``index_copy_`` instead of sparse additions.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, maximize: bool = False) -> None:
        _check_adam_args(lr, betas, eps)
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "maximize": maximize})
        _check_dense_real(self, "SparseAdam")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """Perform a single optimization step (``closure`` re-evaluates the loss)."""
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = float(group["lr"]), group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("SparseAdam does not support dense gradients, please consider "
                                       "Adam instead")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                rows, g = _rows(p, p.grad, group["maximize"])
                if g.numel() == 0:
                    continue
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m_old, v_old = rows.gather(m), rows.gather(v)
                # old <- b * old + (1 - b) * new, written as old + (1 - b) * (new - old), as torch does
                m_upd = (g - m_old).mul_(1 - beta1)
                v_upd = (g * g - v_old).mul_(1 - beta2)
                m_new = m_upd.add_(m_old)
                v_new = v_upd.add_(v_old)
                rows.scatter_(m, m_new)
                rows.scatter_(v, v_new)
                denom = v_new.sqrt().add_(eps)
                step = state["step"]
                step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                update = (m_new / denom).mul_(-step_size)
                rows.scatter_(p, rows.gather(p).add_(update))
        return loss


# ----------------------------------------------------------------------------- lazy optimizers


class LazyAdam(torch.optim.Optimizer):
    r"""Row-wise ("lazy") Adam for embedding-like parameters.

    Row :math:`i` is updated only at the steps that touch it. With
    ``catch_up=False`` (default) each row keeps its own step count
    :math:`t_i` and runs Adam on its own gradient sequence:

    .. math::
        t_i \leftarrow t_i+1,\;
        m_i \leftarrow \beta_1 m_i + (1-\beta_1) g_i,\;
        v_i \leftarrow \beta_2 v_i + (1-\beta_2) g_i^2,\;
        \theta_i \leftarrow \theta_i - \eta\,
        \frac{m_i/(1-\beta_1^{t_i})}{\sqrt{v_i/(1-\beta_2^{t_i})}+\epsilon},

    with learning rate :math:`\eta`. A rare row therefore gets a fully
    bias-corrected first step of size :math:`\eta` (for
    :math:`\epsilon \ll |g|`), whereas :class:`SparseAdam` corrects with the
    global step :math:`t` and gives a row first touched at step :math:`t` a
    first step of
    :math:`\eta\,(1-\beta_1)\sqrt{1-\beta_2^t}\,/\,\big((1-\beta_1^t)\sqrt{1-\beta_2}\big)`,
    which tends to :math:`\sqrt{1000}/10 \approx 3.2\,\eta` for the default betas.

    With ``catch_up=True`` a row last touched at step :math:`s` first has its
    moments decayed by :math:`\beta_1^{t-s-1}`, :math:`\beta_2^{t-s-1}`: exactly
    what dense Adam (Kingma & Ba 2015) does to them on steps with zero gradient,
    so the moments equal dense Adam's, and the global :math:`t` is used for the
    bias correction. What remains different from dense Adam are the updates
    dense Adam makes to a row *between* its touches (momentum drift).

    A dense gradient touches every row; with dense gradients at every step
    both variants reduce to :class:`torch.optim.Adam` (without weight decay).
    Rows are the first dimension (after coalescing a sparse COO gradient, the
    first ``sparse_dim`` dimensions, flattened).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, maximize: bool = False, catch_up: bool = False) -> None:
        _check_adam_args(lr, betas, eps)
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "maximize": maximize,
                                  "catch_up": bool(catch_up)})
        _check_dense_real(self, "LazyAdam")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """Perform a single optimization step (``closure`` re-evaluates the loss)."""
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, catch_up = float(group["lr"]), group["eps"], group["catch_up"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                rows, g = _rows(p, p.grad, group["maximize"])
                idx = rows.flat
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    # per row: the number of updates (catch_up=False) or the last step touched
                    state["row_step"] = torch.zeros(rows.n_rows, dtype=torch.long, device=p.device)
                state["step"] += 1
                if g.numel() == 0:
                    continue
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m_rows, v_rows = rows.gather(m), rows.gather(v)
                rs = _gather(state["row_step"], idx)
                dtype = g.dtype
                if catch_up:
                    # decay the moments by the steps the row missed, as dense Adam would have
                    missed = (t - 1 - rs).to(dtype)[:, None]
                    m_rows = m_rows * torch.pow(torch.full_like(missed, beta1), missed)
                    v_rows = v_rows * torch.pow(torch.full_like(missed, beta2), missed)
                    rs_new = torch.full_like(rs, t)
                    tr = torch.full_like(missed, float(t))
                else:
                    rs_new = rs + 1
                    tr = rs_new.to(dtype)[:, None]
                bc1 = 1 - torch.pow(torch.full_like(tr, beta1), tr)
                bc2 = 1 - torch.pow(torch.full_like(tr, beta2), tr)
                m_rows = m_rows.mul_(beta1).add_(g, alpha=1 - beta1)
                v_rows = v_rows.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                rows.scatter_(m, m_rows)
                rows.scatter_(v, v_rows)
                _scatter_(state["row_step"], idx, rs_new)
                denom = (v_rows.sqrt() / bc2.sqrt()).add_(eps)
                update = (m_rows / denom).mul_(-lr / bc1)
                rows.scatter_(p, rows.gather(p).add_(update))
        return loss


class LazySGD(torch.optim.Optimizer):
    r"""SGD with momentum whose buffers and weight decay touch only the rows a
    sparse gradient names; the arguments and defaults of :class:`torch.optim.SGD`.

    For each touched row :math:`i` (and only those), as in ``torch.optim.SGD``:

    .. math::
        d_i = g_i + \lambda\theta_i,\quad
        b_i \leftarrow \mu b_i + (1-\tau) d_i \;(b_i = d_i \text{ on the row's first touch}),\quad
        \theta_i \leftarrow \theta_i - \eta\,(d_i + \mu b_i \text{ if Nesterov else } b_i),

    with learning rate :math:`\eta`, weight decay :math:`\lambda`, momentum
    :math:`\mu` and dampening :math:`\tau`.

    With ``momentum=0`` it equals ``torch.optim.SGD`` on sparse gradients; with
    dense gradients it equals ``torch.optim.SGD`` for every setting. On sparse
    gradients with momentum the two differ on purpose: torch's momentum buffer
    keeps decaying and moving every row touched so far (as dense momentum
    would), while ``LazySGD`` moves only the rows of the current gradient
    (torch also rejects sparse gradients with weight decay). Momentum is
    Polyak's (Sutskever et al. 2013 for the Nesterov form).
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False) -> None:
        _check_lr(lr, strict=False)
        _validate.nonneg("momentum", momentum, torch_says="Invalid momentum value")
        _validate.nonneg("weight_decay", weight_decay, torch_says="Invalid weight_decay value")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov,
                                  "maximize": maximize})
        _check_dense_real(self, "LazySGD")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """Perform a single optimization step (``closure`` re-evaluates the loss)."""
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            lr, mu, tau = float(group["lr"]), group["momentum"], group["dampening"]
            wd, nesterov = group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                rows, g = _rows(p, p.grad, group["maximize"])
                if g.numel() == 0:
                    continue
                idx = rows.flat
                old = rows.gather(p)
                d = g.add(old, alpha=wd) if wd != 0 else g
                if mu != 0:
                    state = self.state[p]
                    if len(state) == 0:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                        state["touched"] = torch.zeros(rows.n_rows, dtype=torch.bool, device=p.device)
                    buf = state["momentum_buffer"]
                    seen = _gather(state["touched"], idx)[:, None]
                    b = torch.where(seen, rows.gather(buf).mul(mu).add_(d, alpha=1 - tau), d)
                    rows.scatter_(buf, b)
                    _scatter_(state["touched"], idx, torch.ones_like(seen[:, 0]))
                    d = d.add(b, alpha=mu) if nesterov else b
                rows.scatter_(p, old.add(d, alpha=-lr))
        return loss
