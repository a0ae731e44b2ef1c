"""Sparse gradients and sparse updates: optimizers, compressors, proximal steps.

* :class:`SparseAdam`: a drop-in for :class:`torch.optim.SparseAdam` (same
  arguments, same results), implemented row-wise with gathers and
  ``index_copy_`` instead of sparse-tensor arithmetic.
* :class:`LazyAdam` and :class:`LazySGD`: row-wise ("lazy") optimizers that
  touch only the rows a sparse gradient names. ``LazyAdam`` keeps a step count
  per row, so every row behaves as an independent Adam over its own gradients;
  with ``catch_up=True`` it instead applies the decays a row missed, so that
  its moments equal dense Adam's whenever the row is touched.
* :func:`topk`, :func:`randk` and :class:`ErrorFeedback`: gradient
  sparsification for communication with error feedback (Stich, Cordonnier &
  Jaggi 2018), and :class:`DGC`, Deep Gradient Compression's momentum
  correction, momentum-factor masking and local clipping (Lin et al. 2018).
* :func:`soft_threshold`, :func:`prox_l1_`: the proximal step of the L1
  penalty (ISTA), and :func:`magnitude_prune_`, global magnitude pruning.

Sparse gradients must have the sparse COO layout (what
``nn.Embedding(sparse=True)`` produces); the lazy optimizers also accept dense
gradients, which they treat as touching every row. Parameters may have any
strides (a transposed weight, ``Parameter(x.t())``); only the touched rows are
read and written either way. All code is device-agnostic torch: it runs on CPU
and CUDA tensors, in float32 and float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch

__all__ = [
    "SparseAdam",
    "LazyAdam",
    "LazySGD",
    "Compressed",
    "topk",
    "randk",
    "ErrorFeedback",
    "DGC",
    "soft_threshold",
    "prox_l1_",
    "magnitude_prune_",
    "density",
]


# ----------------------------------------------------------------------------- helpers


def _check_adam_args(lr: float, betas: tuple[float, float], eps: float) -> None:
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 < lr:
        raise ValueError(f"Invalid learning rate: {lr}; lr must be > 0")
    if not 0.0 < eps:
        raise ValueError(f"Invalid epsilon value: {eps}; eps must be > 0 (1e-8 is the usual guard)")
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b}; betas must lie in [0, 1)")


def _check_dense_real(optimizer: torch.optim.Optimizer, name: str) -> None:
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            if p.is_sparse:
                raise ValueError(f"Sparse params at indices [{gi}, {pi}]: {name} requires dense "
                                 "parameter tensors (sparse gradients are fine)")
            if p.is_complex():
                raise ValueError(f"Complex params at indices [{gi}, {pi}]: {name} does not support "
                                 "complex parameters")


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
        \theta \leftarrow \theta - \alpha\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
        \,\frac{m}{\sqrt{v} + \epsilon},

    where :math:`t` counts the optimizer steps of the parameter (all rows share
    it). Untouched rows keep their moments and values: unlike dense Adam
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
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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
        \theta_i \leftarrow \theta_i - \alpha\,
        \frac{m_i/(1-\beta_1^{t_i})}{\sqrt{v_i/(1-\beta_2^{t_i})}+\epsilon}.

    A rare row therefore gets a fully bias-corrected first step of size
    :math:`\alpha` (for :math:`\epsilon \ll |g|`), whereas :class:`SparseAdam`
    corrects with the global step :math:`t` and gives a row first touched at
    step :math:`t` a first step of
    :math:`\alpha\,(1-\beta_1)\sqrt{1-\beta_2^t}\,/\,\big((1-\beta_1^t)\sqrt{1-\beta_2}\big)`,
    which tends to :math:`\sqrt{1000}/10 \approx 3.2\,\alpha` for the default betas.

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
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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
        \theta_i \leftarrow \theta_i - \alpha\,(d_i + \mu b_i \text{ if Nesterov else } b_i).

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
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}; lr must be >= 0")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}; momentum must be >= 0")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}; it must be >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov,
                                  "maximize": maximize})
        _check_dense_real(self, "LazySGD")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """Perform a single optimization step (``closure`` re-evaluates the loss)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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


# ----------------------------------------------------------------------------- compression


class Compressed(NamedTuple):
    """A sparsified tensor as a worker would send it: flat ``indices`` (int64),
    their ``values``, and the original ``shape``."""

    indices: torch.Tensor
    values: torch.Tensor
    shape: torch.Size

    def to_dense(self) -> torch.Tensor:
        """The sparse message as a dense tensor of ``shape`` (zeros elsewhere)."""
        out = torch.zeros(math.prod(self.shape), dtype=self.values.dtype, device=self.values.device)
        out.index_put_((self.indices,), self.values, accumulate=True)
        return out.view(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: the values plus 4-byte (int32) indices."""
        return self.values.numel() * self.values.element_size() + 4 * self.indices.numel()


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be between 0 and the number of entries {n}, got {k}")
    return k


def topk(x: torch.Tensor, k: int) -> Compressed:
    r"""The ``k`` entries of ``x`` with the largest magnitude:
    :math:`\mathrm{top}_k(x)_j = x_j` if :math:`|x_j|` is among the ``k``
    largest, else 0. Ties are broken by ``torch.topk``. Biased: it keeps the
    largest coordinates, which in an exploding gradient are the exploding ones.
    """
    flat = x.reshape(-1)
    k = _check_k(k, flat.numel())
    idx = torch.topk(flat.abs(), k, sorted=False).indices
    return Compressed(idx, flat[idx], x.shape)


def randk(x: torch.Tensor, k: int, *, generator: torch.Generator | None = None,
          scale: bool = False) -> Compressed:
    r"""``k`` entries of ``x`` chosen uniformly without replacement. With
    ``scale=True`` the values are multiplied by ``n/k`` so that the message is
    an unbiased estimate of ``x`` (:math:`E[\mathrm{rand}_k(x)] = x`), at the
    price of a variance ``n/k - 1`` times :math:`\|x\|^2`."""
    flat = x.reshape(-1)
    n = flat.numel()
    k = _check_k(k, n)
    perm = torch.randperm(n, generator=generator, device=generator.device if generator else "cpu")
    idx = perm[:k].to(flat.device)
    values = flat[idx]
    if scale and k > 0:
        values = values * (n / k)
    return Compressed(idx, values, x.shape)


class ErrorFeedback:
    r"""Error feedback (memory) around a compressor (Stich, Cordonnier & Jaggi 2018).

    Keeps a residual :math:`e` (zeros at first). Each call with a gradient
    :math:`g` sends :math:`c = C(g + e)` and keeps what was not sent:

    .. math:: a = g + e,\qquad c = C(a),\qquad e \leftarrow a - c,

    so that ``sent + new residual == gradient + old residual``: nothing is
    lost, only delayed. ``compressor`` maps a tensor to a :class:`Compressed`
    (e.g. ``lambda a: topk(a, k)``). One instance per tensor. A message that
    lists an index more than once means the sum of its values there (as in
    :meth:`Compressed.to_dense`), and the residual subtracts that sum, so the
    invariant holds for any compressor (exactly, in floating point, when the
    indices are distinct, as for :func:`topk` and :func:`randk`).
    """

    def __init__(self, compressor: Callable[[torch.Tensor], Compressed]) -> None:
        if not callable(compressor):
            raise TypeError("compressor must be callable, e.g. lambda a: topk(a, k)")
        self.compressor = compressor
        self.residual: torch.Tensor | None = None

    def __call__(self, grad: torch.Tensor) -> Compressed:
        """Compress ``grad`` plus the residual; update the residual; return the message."""
        if self.residual is None:
            self.residual = torch.zeros_like(grad)
        elif self.residual.shape != grad.shape:
            raise ValueError(f"gradient shape {tuple(grad.shape)} differs from the residual's "
                             f"{tuple(self.residual.shape)}; use one ErrorFeedback per tensor")
        acc = grad + self.residual
        msg = self.compressor(acc)
        if not isinstance(msg, Compressed):
            raise TypeError(f"the compressor must return a gradlab.sparse.Compressed (indices, "
                            f"values, shape), got {type(msg).__name__}")
        if msg.indices.shape != msg.values.shape or msg.indices.dim() != 1:
            raise ValueError("the compressor's message needs 1-D indices and values of the same "
                             f"length, got {tuple(msg.indices.shape)} and {tuple(msg.values.shape)}")
        flat = acc.reshape(-1).clone()
        # accumulate=True: a repeated index subtracts the sum of its values, as to_dense() adds it
        flat.index_put_((msg.indices,), -msg.values.to(flat.dtype), accumulate=True)
        self.residual = flat.view(grad.shape)
        return msg

    def reset(self) -> None:
        """Forget the residual."""
        self.residual = None


class DGC:
    r"""Deep Gradient Compression's worker side (Lin et al. 2018), for one tensor.

    With momentum :math:`\mu`, velocity :math:`u` and accumulator :math:`v`
    (both zero at first), each call with a local gradient :math:`g`:

    1. local clipping (optional): :math:`g \leftarrow g\,\min(1, c/\|g\|)`
       with :math:`c` = ``clip_norm`` (the paper uses the global threshold
       divided by :math:`\sqrt{N}` for :math:`N` workers);
    2. momentum correction: :math:`u \leftarrow \mu u + g`, :math:`v \leftarrow v + u`;
    3. send :math:`\mathrm{top}_k(v)`; zero the sent entries of :math:`v` and,
       with ``momentum_masking`` (momentum factor masking), of :math:`u`.

    The receiver applies the (averaged) message as a plain SGD step
    :math:`\theta \leftarrow \theta - \alpha\,c`: the momentum already happened
    on the worker. Invariant: ``sent + new v == old v + new u``.
    """

    def __init__(self, k: int, momentum: float = 0.9, clip_norm: float | None = None,
                 momentum_masking: bool = True) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm}")
        self.k, self.momentum, self.clip_norm = k, momentum, clip_norm
        self.momentum_masking = momentum_masking
        self.u: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __call__(self, grad: torch.Tensor) -> Compressed:
        """Process one local gradient; return the top-k message."""
        if self.u is None:
            self.u, self.v = torch.zeros_like(grad), torch.zeros_like(grad)
        elif self.u.shape != grad.shape:
            raise ValueError(f"gradient shape {tuple(grad.shape)} differs from the state's "
                             f"{tuple(self.u.shape)}; use one DGC per tensor")
        if self.clip_norm is not None:
            norm = torch.linalg.vector_norm(grad)
            grad = grad * torch.clamp(self.clip_norm / (norm + 1e-6), max=1.0)
        self.u = self.momentum * self.u + grad
        self.v = self.v + self.u
        msg = topk(self.v, min(self.k, self.v.numel()))
        self.v.view(-1)[msg.indices] = 0
        if self.momentum_masking:
            self.u.view(-1)[msg.indices] = 0
        return msg


# ----------------------------------------------------------------------------- sparse representations


def soft_threshold(x: torch.Tensor, threshold: float) -> torch.Tensor:
    r"""The proximal operator of :math:`\tau\|x\|_1`:
    :math:`\operatorname{prox}(x)_j = \operatorname{sign}(x_j)\max(|x_j|-\tau, 0)`.
    One ISTA step for :math:`f(x) + \lambda\|x\|_1` is
    ``soft_threshold(x - lr * grad_f(x), lr * lam)``."""
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    return torch.sign(x) * torch.clamp(x.abs() - threshold, min=0)


def prox_l1_(parameters: torch.Tensor | Iterable[torch.Tensor], threshold: float) -> None:
    """Apply :func:`soft_threshold` in place to every parameter: the proximal
    half of an ISTA step, called after ``optimizer.step()`` with
    ``threshold = lr * lam``."""
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    with torch.no_grad():
        for p in params:
            p.copy_(soft_threshold(p, threshold))


def magnitude_prune_(parameters: torch.Tensor | Iterable[torch.Tensor], sparsity: float
                     ) -> list[torch.Tensor]:
    """Zero the fraction ``sparsity`` of entries with the smallest magnitude,
    ranked globally across all ``parameters``, in place. Returns the boolean
    keep-masks (one per parameter), to re-apply after later updates."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    if not params:
        return []
    flat = torch.cat([p.detach().reshape(-1).abs() for p in params])
    n_prune = int(round(sparsity * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if n_prune > 0:
        keep[torch.topk(flat, n_prune, largest=False, sorted=False).indices] = False
    masks, start = [], 0
    with torch.no_grad():
        for p in params:
            mask = keep[start:start + p.numel()].view(p.shape).to(p.device)
            start += p.numel()
            p.mul_(mask)
            masks.append(mask)
    return masks
