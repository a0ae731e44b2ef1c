r"""Gradient compression for data-parallel training: sparsification and low rank.

Sparsification (each worker sends a few entries of its gradient):

* :class:`Compressed`, :func:`topk`, :func:`randk`: a sparsified tensor as a
  worker would send it, and the two classic ways to choose its entries;
* :class:`ErrorFeedback`: keep what was not sent and add it to the next
  gradient (Seide et al. 2014; Stich, Cordonnier & Jaggi 2018; Karimireddy et
  al. 2019);
* :class:`DGC`: Deep Gradient Compression's momentum correction,
  momentum-factor masking and local clipping (Lin et al. 2018).

Low rank (PowerSGD; Vogels, Karimireddy & Jaggi 2019):

* :func:`subspace_iteration_step`: one warm-started step of subspace (power)
  iteration, ``P = orth(M Q)``, ``Q' = M^T P``, so that ``P Q'^T = P P^T M`` is
  the projection of ``M`` on a rank-``r`` subspace. Not an SVD: one matrix
  product each way per training step, warm-started from the previous ``Q``;
* :class:`PowerSGD`: the standalone compressor (rank, warm start, error
  feedback), keyed by tensor name; a non-finite gradient is passed through
  uncompressed and kept out of its state;
* :func:`best_rank_r` (the truncated-SVD reference), :func:`should_compress`
  (torch's rule for which matrices are worth it) and :func:`payload_bytes`
  (bytes per step for all-reduce, top-k and PowerSGD).

Neighbours: the DDP communication hooks and the multi-process training script
are in :mod:`gradlab.ddp`; GaLore (low-rank optimizer *state*) in
:mod:`gradlab.galore`; optimizers for sparse gradients in :mod:`gradlab.sparse`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch

from gradlab import _validate
from gradlab._tensors import global_norm
from gradlab.spectral import orthonormalize

__all__ = [
    "Compressed",
    "topk",
    "randk",
    "ErrorFeedback",
    "DGC",
    "subspace_iteration_step",
    "best_rank_r",
    "should_compress",
    "PowerSGD",
    "payload_bytes",
]

# ----------------------------------------------------------------------------- sparsification


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
    return _validate.integer("k", k, 0, n, hint=f"the number of entries to send, of the tensor's {n}")


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
            raise TypeError(f"the compressor must return a gradlab.compress.Compressed (indices, "
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

    The receiver applies the (averaged) message :math:`s` as a plain SGD step
    with learning rate :math:`\eta`, :math:`\theta \leftarrow \theta - \eta\,s`:
    the momentum already happened on the worker. Invariant: ``sent + new v == old v + new u``.
    """

    def __init__(self, k: int, momentum: float = 0.9, clip_norm: float | None = None,
                 momentum_masking: bool = True) -> None:
        _validate.integer("k", k, 1, hint="the number of entries sent per step")
        _validate.unit("momentum", momentum)
        if clip_norm is not None:
            _validate.positive("clip_norm", clip_norm, hint="or None for no local clipping")
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



# ----------------------------------------------------------------------------- low rank (PowerSGD)

AllReduce = Callable[[torch.Tensor], torch.Tensor]


def _check_rank(rank: int) -> int:
    return _validate.integer("rank", rank, 1, hint="rank 1 is the strongest compression")


def _check_world_size(world_size: int, allreduce) -> int:
    world_size = _validate.integer("world_size", world_size, 1, hint="the number of workers")
    if allreduce is None and world_size != 1:
        raise ValueError(f"world_size={world_size} without allreduce: the result would be divided by "
                         f"{world_size} with nothing summed. Pass the all-reduce that sums over the "
                         "workers, or world_size=1 for one worker")
    return world_size


def _as_matrix(tensor: torch.Tensor, what: str = "tensor") -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(f"{what} must be a float32 or float64 tensor, got {tensor.dtype}; the QR "
                        "factorisation has no half-precision kernels, so cast with .float() first")
    if tensor.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{what} must be a float32 or float64 tensor, got {tensor.dtype}; PowerSGD "
                        "compresses real floating-point gradients: cast with .float()")
    if tensor.dim() < 2:
        raise ValueError(
            f"{what} has shape {tuple(tensor.shape)}: low-rank compression needs a matrix (2 or more "
            "dimensions, flattened to shape[0] x rest). All-reduce vectors such as biases uncompressed."
        )
    return tensor.reshape(tensor.shape[0], -1)


def _check_rate(min_compression_rate: float) -> float:
    return _validate.nonneg("min_compression_rate", min_compression_rate,
                            hint="0 compresses every matrix, torch's default 2 only those that shrink "
                                 "by more than 2x")


def _split_like(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, offset = [], 0
    for t in like:
        out.append(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def subspace_iteration_step(M: torch.Tensor, Q: torch.Tensor, allreduce: AllReduce | None = None,
                            world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One warm-started subspace iteration: returns ``(P, Q_new)`` with

    .. math:: P = \operatorname{orth}\big(\textstyle\sum_w M_w Q\big), \qquad
              Q_{\text{new}} = \tfrac{1}{N}\textstyle\sum_w M_w^\top P,

    so that ``P @ Q_new.T`` is the projection of the average ``M`` onto the
    span of ``P`` (Vogels et al. 2019, Algorithm 1). ``M`` is ``m x n``, ``Q`` is
    ``n x r`` and ``P`` is ``m x r`` (the paper and torch's hook write ``n x m``).
    ``allreduce`` sums a tensor in place across the ``N`` workers
    (``None``: one worker); ``world_size`` (``N``) divides the summed ``Q``.
    """
    world_size = _check_world_size(world_size, allreduce)
    M = _as_matrix(M, "M")
    if Q.dim() != 2 or Q.shape[0] != M.shape[1]:
        raise ValueError(f"Q must have shape ({M.shape[1]}, r) for M of shape {tuple(M.shape)}, "
                         f"got {tuple(Q.shape)}")
    P = M @ Q
    if allreduce is not None:
        P = allreduce(P)
    P = orthonormalize(P)
    Q_new = M.T @ P
    if allreduce is not None:
        Q_new = allreduce(Q_new)
    return P, Q_new / world_size


def best_rank_r(M: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``r`` approximation of ``M`` in Frobenius and spectral norm
    (Eckart-Young): the truncated SVD ``U_r diag(S_r) Vh_r``. The reference that
    PowerSGD's single power iteration approaches over steps."""
    rank = _check_rank(rank)
    A = _as_matrix(M, "M")
    if rank > min(A.shape):
        raise ValueError(f"rank {rank} is impossible for a {A.shape[0]} x {A.shape[1]} matrix; "
                         f"use at most {min(A.shape)}")
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    return ((U[:, :rank] * S[:rank]) @ Vh[:rank]).reshape(M.shape)


def should_compress(shape: Sequence[int], rank: int, min_compression_rate: float = 2.0) -> bool:
    """Whether a tensor of ``shape`` is worth compressing at ``rank``: torch's rule
    ``(m + n) * r * min_compression_rate < m * n`` for the ``m x n`` view
    (``m = shape[0]``), with ``r = min(m, n, rank)``; vectors never are."""
    rank = _check_rank(rank)
    _check_rate(min_compression_rate)
    if len(shape) < 2:
        return False
    m = int(shape[0])
    n = math.prod(int(s) for s in shape[1:])
    r = min(m, n, rank)
    return (m + n) * r * min_compression_rate < m * n


class PowerSGD:
    r"""Rank-``r`` PowerSGD compressor with warm start and error feedback.

    For each tensor (by ``key``) it keeps the error ``e`` and the last ``Q``. A
    call with gradient ``g`` forms ``M = g + e``, runs one
    :func:`subspace_iteration_step` from the previous ``Q`` (random the first time),
    returns the approximation ``\hat M = P Q^\top`` and stores
    ``e \leftarrow M - \hat M`` (Vogels, Karimireddy & Jaggi 2019). Error
    feedback re-injects what compression dropped, so nothing is lost for good;
    warm start turns the per-step power iteration into a subspace iteration
    that tracks the gradient's top singular directions across steps.

    Parameters
    ----------
    rank: the rank ``r >= 1``; capped at ``min(m, n)`` per ``m x n`` tensor like torch.
    warm_start: reuse ``Q`` from the previous step (else a fresh random ``Q``).
    error_feedback: keep and re-add the compression error.
    seed: seeds the random initial ``Q`` (identical on all workers, which
        PowerSGD needs).
    nonfinite: what to do when a gradient (plus its error) holds an ``inf`` or
        ``NaN`` on any worker. ``"skip"`` (default): return the gradients
        uncompressed (all-reduced and averaged when ``allreduce`` is given) and
        leave the errors and ``Q`` untouched, so that the caller (``GradScaler``,
        a clipping or spike guard) sees the non-finite values and skips the step,
        and the compressor's state is not poisoned for the steps after.
        ``"raise"``: raise a ``FloatingPointError``. Without this guard one
        ``inf`` enters the error buffer and every later output is ``NaN``.
        The decision is taken on the all-reduced ``P``, which is the same on
        every worker, so all workers take the same branch (and issue the same
        collectives). ``skipped`` counts the calls passed through.
    """

    def __init__(self, rank: int = 1, *, warm_start: bool = True, error_feedback: bool = True,
                 seed: int = 0, nonfinite: str = "skip") -> None:
        _validate.one_of("nonfinite", nonfinite, ("skip", "raise"),
                         hint="'skip' passes non-finite gradients through uncompressed")
        self.rank = _check_rank(rank)
        self.warm_start = bool(warm_start)
        self.error_feedback = bool(error_feedback)
        self.nonfinite = nonfinite
        self.skipped = 0
        self._gen = torch.Generator().manual_seed(int(seed))
        self.errors: dict[object, torch.Tensor] = {}
        self.qs: dict[object, torch.Tensor] = {}

    def _initial_q(self, n: int, r: int, like: torch.Tensor) -> torch.Tensor:
        q = torch.randn(n, r, generator=self._gen, dtype=torch.float64)
        return q.to(device=like.device, dtype=like.dtype)

    def compress(self, key, grad: torch.Tensor, allreduce: AllReduce | None = None,
                 world_size: int = 1) -> torch.Tensor:
        """Return the rank-``r`` approximation of ``grad + error[key]`` (averaged
        over workers when ``allreduce`` is given) and update the state. ``grad``
        is not modified; the result has ``grad``'s shape, dtype and device."""
        return self.compress_many([key], [grad], allreduce, world_size)[0]

    def compress_many(self, keys: Sequence, grads: Sequence[torch.Tensor],
                      allreduce: AllReduce | None = None, world_size: int = 1) -> list[torch.Tensor]:
        """:meth:`compress` for several tensors at once, with two all-reduces in
        all (one for every ``P`` concatenated, one for every ``Q``), as torch's
        hook does. Tensors must share a dtype and device."""
        world_size = _check_world_size(world_size, allreduce)
        if len(keys) != len(grads):
            raise ValueError(f"got {len(keys)} keys for {len(grads)} tensors")
        if not grads:
            return []
        Ms, qs = [], []
        for key, grad in zip(keys, grads):
            M = _as_matrix(grad, "grad")
            if M.dtype != grads[0].dtype or M.device != grads[0].device:
                raise ValueError("compress_many needs tensors of one dtype and device; call it per group")
            m, n = M.shape
            r = min(m, n, self.rank)
            if self.error_feedback and key in self.errors:
                err = self.errors[key]
                if err.shape != M.shape:
                    raise ValueError(f"key {key!r} was used for shape {tuple(err.shape)} before, now "
                                     f"{tuple(M.shape)}; use one key per tensor")
                M = M + err
            q = self.qs.get(key) if self.warm_start else None
            if q is None or q.shape != (n, r):
                q = self._initial_q(n, r, M)
            Ms.append(M)
            qs.append(q)
        Ps = [M @ q for M, q in zip(Ms, qs)]
        if allreduce is not None:
            Ps = _split_like(allreduce(torch.cat([P.reshape(-1) for P in Ps])), Ps)
        # An inf or NaN in any worker's M makes the summed P non-finite on every worker
        # (inf * q is inf or NaN, and sums keep it): one test, the same answer everywhere.
        if not all(bool(torch.isfinite(P).all()) for P in Ps):
            return self._pass_through(keys, grads, allreduce, world_size)
        Ps = [orthonormalize(P) for P in Ps]
        Qs = [M.T @ P for M, P in zip(Ms, Ps)]
        if allreduce is not None:
            Qs = _split_like(allreduce(torch.cat([Q.reshape(-1) for Q in Qs])), Qs)
        out = []
        for key, grad, M, P, Q in zip(keys, grads, Ms, Ps, Qs):
            Q = Q / world_size
            approx = P @ Q.T
            if self.error_feedback:
                self.errors[key] = (M - approx).detach()
            if self.warm_start:
                self.qs[key] = Q.detach()
            out.append(approx.reshape(grad.shape))
        return out

    def _pass_through(self, keys, grads, allreduce, world_size) -> list[torch.Tensor]:
        if self.nonfinite == "raise":
            raise FloatingPointError(
                f"a gradient among {list(keys)!r} (plus its error buffer) is not finite on some worker; the "
                "compressor's state was left unchanged. Skip this step (GradScaler does under AMP) or build "
                "PowerSGD(..., nonfinite='skip') to pass such gradients through uncompressed")
        self.skipped += 1
        flat = torch.cat([g.detach().reshape(-1) for g in grads])
        if allreduce is not None:
            flat = allreduce(flat) / world_size
        return [t.clone() for t in _split_like(flat, grads)]

    def error_norm(self) -> float:
        """``sqrt(sum_key ||e_key||^2)``, the norm of everything compression has
        delayed. Its size alone does not tell a too-low rank from a good one
        (see the compression chapter): compare the training loss against a
        higher rank or uncompressed all-reduce."""
        return float(global_norm(self.errors.values())) if self.errors else 0.0

    def reset(self) -> None:
        """Forget errors and warm-start matrices."""
        self.errors.clear()
        self.qs.clear()


def payload_bytes(shapes: Iterable[Sequence[int]], scheme: str, *, rank: int = 1,
                  ratio: float = 0.01, min_compression_rate: float = 2.0, element_size: int = 4,
                  index_size: int = 4) -> int:
    """Bytes one worker contributes per step for gradients of ``shapes``.

    * ``"allreduce"``: every entry, ``element_size`` bytes each;
    * ``"topk"``: the ``ceil(ratio * numel)`` largest entries of each tensor, a
      value and an index each (sparse vectors with different supports cannot be
      summed in place: they are all-gathered, so each of ``N`` workers also
      *receives* ``N - 1`` such messages);
    * ``"powersgd"``: ``(m + n) r`` numbers for each ``m x n`` matrix that passes
      :func:`should_compress` (``min_compression_rate=2`` is torch's default, as
      in :class:`PowerSGDState`), all entries of the others.
    """
    _validate.one_of("scheme", scheme, ("allreduce", "topk", "powersgd"))
    for name, value in (("element_size", element_size), ("index_size", index_size)):
        _validate.integer(name, value, 1, hint="bytes per number, 4 for float32/int32")
    shapes = [tuple(int(s) for s in shape) for shape in shapes]
    if scheme == "allreduce":
        return sum(math.prod(s) for s in shapes) * element_size
    if scheme == "topk":
        _validate.in_range("ratio", ratio, 0.0, 1.0, low_open=True, hint="the fraction of entries sent")
        return sum(math.ceil(ratio * math.prod(s)) for s in shapes) * (element_size + index_size)
    rank = _check_rank(rank)  # "powersgd"
    total = 0
    for s in shapes:
        if should_compress(s, rank, min_compression_rate):
            m, n = s[0], math.prod(s[1:])
            total += (m + n) * min(m, n, rank)
        else:
            total += math.prod(s)
    return total * element_size
