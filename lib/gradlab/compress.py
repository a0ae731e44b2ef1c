"""Gradient compression for data-parallel training, and low-rank optimizer state.

* :func:`power_iteration`: one step of subspace (power) iteration, the core of
  PowerSGD: ``P = orth(M Q)``, ``Q' = M^T P``, so that ``P Q'^T = P P^T M`` is
  the projection of ``M`` on a rank-``r`` subspace. Not an SVD: one matrix
  product each way per training step, warm-started from the previous ``Q``.
* :class:`PowerSGD`: the standalone compressor (rank, warm start, error
  feedback) of Vogels, Karimireddy & Jaggi (2019), keyed by tensor name; a
  non-finite gradient is passed through uncompressed and kept out of its state.
* :class:`PowerSGDState` and :func:`powerSGD_hook`: the same compressor as a
  ``DistributedDataParallel`` communication hook, with the argument names and
  defaults of ``torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook``, plus
  a byte counter, the error-buffer norm and optional clipping of the local
  gradient *before* it enters the compressor.
* :class:`CommStats` and :func:`allreduce_hook`: plain all-reduce as a hook that
  counts the bytes it sends (the baseline).
* :func:`payload_bytes`: bytes one worker contributes per step for plain
  all-reduce, top-k and low-rank compression.
* :class:`GaLoreAdamW`: AdamW whose moments live in a rank-``r`` projection of
  each matrix gradient (Zhao et al. 2024), and :func:`optimizer_state_bytes`.
"""


import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "power_iteration",
    "best_rank_r",
    "should_compress",
    "PowerSGD",
    "PowerSGDState",
    "powerSGD_hook",
    "CommStats",
    "allreduce_hook",
    "payload_bytes",
    "GaLoreAdamW",
    "optimizer_state_bytes",
]

AllReduce = Callable[[torch.Tensor], torch.Tensor]


def _check_rank(rank: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int, got {type(rank).__name__}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}; rank 1 is the strongest compression")
    return rank


def _check_world_size(world_size: int, allreduce) -> int:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1 (the number of workers), got {world_size!r}")
    if allreduce is None and world_size != 1:
        raise ValueError(f"world_size={world_size} without allreduce: the result would be divided by "
                         f"{world_size} with nothing summed. Pass the all-reduce that sums over the "
                         "workers, or world_size=1 for one worker")
    return world_size


def _as_matrix(tensor: torch.Tensor, what: str = "tensor") -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{what} must be a float32 or float64 tensor, got {tensor.dtype}; the QR "
                        "factorisation has no half-precision kernels, so cast with .float() first")
    if tensor.dim() < 2:
        raise ValueError(
            f"{what} has shape {tuple(tensor.shape)}: low-rank compression needs a matrix (2 or more "
            "dimensions, flattened to shape[0] x rest). All-reduce vectors such as biases uncompressed."
        )
    return tensor.reshape(tensor.shape[0], -1)


def _orthonormalize(P: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning ``P``'s columns (reduced QR)."""
    Q, R = torch.linalg.qr(P, mode="reduced")
    # fix the signs so that the result does not depend on the QR implementation
    signs = torch.sign(torch.diagonal(R))
    signs[signs == 0] = 1
    return Q * signs


def _check_rate(min_compression_rate: float) -> float:
    if isinstance(min_compression_rate, bool) or not isinstance(min_compression_rate, (int, float)) \
            or not min_compression_rate >= 0:
        raise ValueError(f"min_compression_rate must be a number >= 0 (0 compresses every matrix, torch's "
                         f"default 2 only those that shrink by more than 2x), got {min_compression_rate!r}")
    return float(min_compression_rate)


def _split_like(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, offset = [], 0
    for t in like:
        out.append(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def power_iteration(M: torch.Tensor, Q: torch.Tensor, allreduce: AllReduce | None = None,
                    world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One warm-started subspace iteration: returns ``(P, Q_new)`` with

    .. math:: P = \operatorname{orth}\big(\textstyle\sum_w M_w Q\big), \qquad
              Q_{\text{new}} = \tfrac{1}{N}\textstyle\sum_w M_w^\top P,

    so that ``P @ Q_new.T`` is the projection of the average ``M`` onto the
    span of ``P`` (Vogels et al. 2019, Algorithm 1). ``M`` is ``n x m``, ``Q`` is
    ``m x r``. ``allreduce`` sums a tensor in place across the ``N`` workers
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
    P = _orthonormalize(P)
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
    ``(n + m) * r * min_compression_rate < n * m`` for the ``n x m`` view
    (``n = shape[0]``); vectors never are."""
    rank = _check_rank(rank)
    _check_rate(min_compression_rate)
    if len(shape) < 2:
        return False
    n = int(shape[0])
    m = math.prod(int(s) for s in shape[1:])
    r = min(n, m, rank)
    return (n + m) * r * min_compression_rate < n * m


class PowerSGD:
    r"""Rank-``r`` PowerSGD compressor with warm start and error feedback.

    For each tensor (by ``key``) it keeps the error ``e`` and the last ``Q``. A
    call with gradient ``g`` forms ``M = g + e``, runs one
    :func:`power_iteration` from the previous ``Q`` (random the first time),
    returns the approximation ``\hat M = P Q^\top`` and stores
    ``e \leftarrow M - \hat M`` (Vogels, Karimireddy & Jaggi 2019). Error
    feedback re-injects what compression dropped, so nothing is lost for good;
    warm start turns the per-step power iteration into a subspace iteration
    that tracks the gradient's top singular directions across steps.

    Parameters
    ----------
    rank: the rank ``r >= 1``; capped at ``min(n, m)`` per tensor like torch.
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
        if nonfinite not in ("skip", "raise"):
            raise ValueError(f"nonfinite must be 'skip' (pass non-finite gradients through uncompressed) "
                             f"or 'raise', got {nonfinite!r}")
        self.rank = _check_rank(rank)
        self.warm_start = bool(warm_start)
        self.error_feedback = bool(error_feedback)
        self.nonfinite = nonfinite
        self.skipped = 0
        self._gen = torch.Generator().manual_seed(int(seed))
        self.errors: dict[object, torch.Tensor] = {}
        self.qs: dict[object, torch.Tensor] = {}

    def _initial_q(self, m: int, r: int, like: torch.Tensor) -> torch.Tensor:
        q = torch.randn(m, r, generator=self._gen, dtype=torch.float64)
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
            n, m = M.shape
            r = min(n, m, self.rank)
            if self.error_feedback and key in self.errors:
                err = self.errors[key]
                if err.shape != M.shape:
                    raise ValueError(f"key {key!r} was used for shape {tuple(err.shape)} before, now "
                                     f"{tuple(M.shape)}; use one key per tensor")
                M = M + err
            q = self.qs.get(key) if self.warm_start else None
            if q is None or q.shape != (m, r):
                q = self._initial_q(m, r, M)
            Ms.append(M)
            qs.append(q)
        Ps = [M @ q for M, q in zip(Ms, qs)]
        if allreduce is not None:
            Ps = _split_like(allreduce(torch.cat([P.reshape(-1) for P in Ps])), Ps)
        # An inf or NaN in any worker's M makes the summed P non-finite on every worker
        # (inf * q is inf or NaN, and sums keep it): one test, the same answer everywhere.
        if not all(bool(torch.isfinite(P).all()) for P in Ps):
            return self._pass_through(keys, grads, allreduce, world_size)
        Ps = [_orthonormalize(P) for P in Ps]
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
        """``sqrt(sum_key ||e_key||^2)``: watch it; steady growth means the
        compressor drops more each step than it re-injects (too low a rank or
        too high a learning rate)."""
        if not self.errors:
            return 0.0
        return math.sqrt(sum(float(torch.linalg.vector_norm(e, dtype=torch.float64)) ** 2
                             for e in self.errors.values()))

    def reset(self) -> None:
        """Forget errors and warm-start matrices."""
        self.errors.clear()
        self.qs.clear()


@dataclass
class CommStats:
    """Bytes this worker passed to all-reduce (its payload per collective, summed)
    and the number of steps seen. The wire traffic of a ring all-reduce over
    ``N`` workers is about ``2 (N-1)/N`` times the payload per worker."""

    bytes_sent: int = 0
    steps: int = 0
    process_group: object = None

    def _allreduce(self, t: torch.Tensor, group) -> torch.Tensor:
        import torch.distributed as dist

        self.bytes_sent += t.numel() * t.element_size()
        dist.all_reduce(t, group=group)
        return t


def allreduce_hook(state: CommStats, bucket) -> torch.futures.Future[torch.Tensor]:
    """DDP hook: plain all-reduce of the bucket, averaged, counting bytes in
    ``state`` (what DDP does without a hook)."""
    import torch.distributed as dist

    group = state.process_group or dist.group.WORLD
    buf = bucket.buffer()
    if bucket.is_last():
        state.steps += 1
    return _allreduce_mean_fut(state, buf, group, dist.get_world_size(group))


def _allreduce_mean_fut(state: CommStats, buf: torch.Tensor, group, world: int) -> torch.futures.Future[torch.Tensor]:
    import torch.distributed as dist

    state.bytes_sent += buf.numel() * buf.element_size()
    fut = dist.all_reduce(buf, group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0].div_(world))


class PowerSGDState(CommStats):
    """State of :func:`powerSGD_hook`; argument names and defaults as in
    ``torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook.PowerSGDState``.

    Note the defaults: ``start_powerSGD_iter=1000`` all-reduces uncompressed
    for the first 1000 steps, and ``min_compression_rate=2`` leaves any matrix
    with ``(n + m) r * 2 >= n m`` uncompressed, so a short run of a small model
    with the defaults never compresses anything. Unlike torch's hook, errors
    are keyed by parameter, not by bucket, so ``start_powerSGD_iter`` may be
    0 or 1 (torch needs >= 2 because DDP rebuilds its buckets after step 1).

    Extra: ``max_norm`` clips this worker's gradient in each bucket *before*
    the error is added and the result compressed (clip, then compress); with
    one bucket this is the local global norm. ``bytes_sent``, ``grad_norm``
    (this worker's gradient norm at the last step, measured after clipping) and
    :meth:`error_norm` are for monitoring; ``error_norm() / grad_norm`` says how
    many steps' worth of gradient the error buffer holds back.

    ``nonfinite`` (``"skip"`` or ``"raise"``, see :class:`PowerSGD`): a bucket
    with an ``inf`` or ``NaN`` on any worker is all-reduced uncompressed (so
    ``GradScaler`` or a norm check after ``backward()`` sees it and skips the
    step), the error buffers and ``Q`` stay as they were, and clipping leaves a
    non-finite bucket alone (scaling by ``max_norm / inf = 0`` would turn
    ``inf`` into ``NaN`` and hide it). ``skipped_steps`` counts such steps.
    """

    def __init__(self, process_group=None, matrix_approximation_rank: int = 1,
                 start_powerSGD_iter: int = 1_000, min_compression_rate: float = 2,
                 use_error_feedback: bool = True, warm_start: bool = True, random_seed: int = 0,
                 max_norm: float | None = None, nonfinite: str = "skip") -> None:
        super().__init__(process_group=process_group)
        if isinstance(start_powerSGD_iter, bool) or not isinstance(start_powerSGD_iter, int) \
                or start_powerSGD_iter < 0:
            raise ValueError(f"start_powerSGD_iter must be an int >= 0, got {start_powerSGD_iter!r}")
        _check_rate(min_compression_rate)
        if max_norm is not None and not (math.isfinite(max_norm) and max_norm > 0):
            raise ValueError(f"max_norm must be a finite number > 0 or None, got {max_norm}")
        self.matrix_approximation_rank = _check_rank(matrix_approximation_rank)
        self.start_powerSGD_iter = start_powerSGD_iter
        self.min_compression_rate = float(min_compression_rate)
        self.max_norm = max_norm
        self.compressor = PowerSGD(matrix_approximation_rank, warm_start=warm_start,
                                   error_feedback=use_error_feedback, seed=random_seed, nonfinite=nonfinite)
        self.iter = 0
        self.compressed_steps = 0
        self.skipped_steps = 0
        self._skipped_this_step = False
        self.grad_norm = 0.0  # this worker's gradient norm (after clipping) at the last step
        self._grad_sq = 0.0

    def error_norm(self) -> float:
        return self.compressor.error_norm()


def powerSGD_hook(state: PowerSGDState, bucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook running :class:`PowerSGD` on each bucket.

    Register with ``ddp_model.register_comm_hook(state, powerSGD_hook)``. For
    the first ``state.start_powerSGD_iter`` steps it all-reduces the bucket
    unchanged. Then, per gradient in the bucket: matrices that pass
    :func:`should_compress` are compressed (one all-reduce of ``n r`` numbers for
    ``P`` and one of ``m r`` for ``Q``), everything else is all-reduced as is.
    Collectives are issued in the same order on every worker, which is what
    DDP requires.
    """
    import torch.distributed as dist

    group = state.process_group or dist.group.WORLD
    world = dist.get_world_size(group)
    buf = bucket.buffer()
    norm = torch.linalg.vector_norm(buf).item()
    if state.max_norm is not None and math.isfinite(norm) and norm > state.max_norm:
        # clip the local gradient before anything else; a non-finite bucket is left as it is,
        # for the non-finite check below and for GradScaler to see
        buf.mul_(state.max_norm / (norm + 1e-6))
        norm = torch.linalg.vector_norm(buf).item()
    state._grad_sq += norm ** 2
    if bucket.is_last():
        state.grad_norm, state._grad_sq = math.sqrt(state._grad_sq), 0.0
    if state.iter < state.start_powerSGD_iter:
        if bucket.is_last():
            state.iter += 1
            state.steps += 1
        return _allreduce_mean_fut(state, buf, group, world)

    grads = bucket.gradients()
    params = bucket.parameters()
    r = state.matrix_approximation_rank
    compress = [should_compress(g.shape, r, state.min_compression_rate) for g in grads]
    plain = [g for g, c in zip(grads, compress) if not c]
    plain_finite = True
    if plain:
        flat = torch.cat([g.reshape(-1) for g in plain])
        state._allreduce(flat, group).div_(world)
        # the reduced sum: an inf or NaN in any worker's vectors shows here on every worker alike
        plain_finite = bool(torch.isfinite(flat).all())
        offset = 0
        for g in plain:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
    pairs = [(id(p), g) for p, g, c in zip(params, grads, compress) if c]
    if pairs:
        keys, mats = zip(*pairs)
        skipped = state.compressor.skipped
        allreduce = lambda t: state._allreduce(t, group)  # noqa: E731
        if plain_finite:
            approx = state.compressor.compress_many(keys, mats, allreduce, world)
        else:  # a non-finite bias on some worker: the step will be skipped, so keep the state as it is
            approx = state.compressor._pass_through(keys, mats, allreduce, world)
        state._skipped_this_step |= state.compressor.skipped > skipped
        for g, a in zip(mats, approx):
            g.copy_(a)
    elif not plain_finite:
        state._skipped_this_step = True
    if bucket.is_last():
        state.iter += 1
        state.steps += 1
        if state._skipped_this_step:
            state.skipped_steps += 1
        else:
            state.compressed_steps += 1
        state._skipped_this_step = False
    fut: torch.futures.Future = torch.futures.Future(devices=[buf.device] if buf.is_cuda else None)
    fut.set_result(buf)
    return fut


def payload_bytes(shapes: Iterable[Sequence[int]], scheme: str, *, rank: int = 1,
                  ratio: float = 0.01, min_compression_rate: float = 2.0, element_size: int = 4,
                  index_size: int = 4) -> int:
    """Bytes one worker contributes per step for gradients of ``shapes``.

    * ``"allreduce"``: every entry, ``element_size`` bytes each;
    * ``"topk"``: the ``ceil(ratio * numel)`` largest entries of each tensor, a
      value and an index each (sparse vectors with different supports cannot be
      summed in place: they are all-gathered, so each of ``N`` workers also
      *receives* ``N - 1`` such messages);
    * ``"powersgd"``: ``(n + m) r`` numbers for each matrix that passes
      :func:`should_compress` (``min_compression_rate=2`` is torch's default, as
      in :class:`PowerSGDState`), all entries of the others.
    """
    for name, value in (("element_size", element_size), ("index_size", index_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1 (bytes per number, 4 for float32/int32), got {value!r}")
    shapes = [tuple(int(s) for s in shape) for shape in shapes]
    if scheme == "allreduce":
        return sum(math.prod(s) for s in shapes) * element_size
    if scheme == "topk":
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        return sum(math.ceil(ratio * math.prod(s)) for s in shapes) * (element_size + index_size)
    if scheme == "powersgd":
        rank = _check_rank(rank)
        total = 0
        for s in shapes:
            if should_compress(s, rank, min_compression_rate):
                n, m = s[0], math.prod(s[1:])
                total += (n + m) * min(n, m, rank)
            else:
                total += math.prod(s)
        return total * element_size
    raise ValueError(f"scheme must be 'allreduce', 'topk' or 'powersgd', got {scheme!r}")


class GaLoreAdamW(torch.optim.Optimizer):
    r"""AdamW with gradient low-rank projection (GaLore; Zhao et al. 2024).

    For parameter groups with a ``rank`` entry, each matrix ``W`` (``m x n``)
    gets a projector ``P`` from the top-``r`` singular vectors of its gradient,
    recomputed every ``update_proj_gap`` steps. With ``m >= n`` the projection is
    on the right, ``R = G P`` with ``P = V_r`` (``n x r``); otherwise on the left,
    ``R = P^T G`` with ``P = U_r``. Adam's moments live in the ``r``-dimensional
    space, and the update is projected back:

    .. math:: W \leftarrow W - \eta\,\big(\alpha\, \mathrm{back}(\hat m/(\sqrt{\hat v}+\epsilon))
              + \lambda W\big),

    where ``alpha`` is ``scale``. Optimizer state per matrix: ``2 r max(m, n)`` for
    the moments plus ``r min(m, n)`` for ``P``, against ``2 m n`` for AdamW.
    Groups without ``rank`` (biases, norms, small layers) are plain AdamW.

    Example: ``GaLoreAdamW([{"params": others}, {"params": matrices, "rank": 8,
    "update_proj_gap": 200, "scale": 0.25}], lr=1e-3)``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "rank": None, "update_proj_gap": 200, "scale": 0.25}
        super().__init__(params, defaults)  # calls add_param_group, which checks each group

    def add_param_group(self, param_group: dict) -> None:
        """``torch.optim.Optimizer.add_param_group`` plus GaLore's checks (the
        constructor's groups go through here too): a group with ``rank`` holds
        only matrices of at least that rank, ``update_proj_gap`` is an int >= 1
        and ``scale`` a finite number > 0."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    @staticmethod
    def _check_group(group: dict) -> None:
        if group["rank"] is None:
            return
        rank = _check_rank(group["rank"])
        gap = group["update_proj_gap"]
        if isinstance(gap, bool) or not isinstance(gap, int) or gap < 1:
            raise ValueError(f"update_proj_gap must be an int >= 1, got {gap!r}")
        scale = group["scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0 (the paper uses 0.25), got {scale!r}")
        for p in group["params"]:
            if p.dim() != 2:
                raise ValueError(f"GaLore projects matrices; a parameter of shape {tuple(p.shape)} is in "
                                 "a group with 'rank'. Put vectors (biases, norms) in a group without it")
            if rank > min(p.shape):
                raise ValueError(f"rank {rank} is impossible for a {p.shape[0]} x {p.shape[1]} matrix; "
                                 f"use at most {min(p.shape)} (and much less to save memory)")

    @staticmethod
    def _projector(grad: torch.Tensor, rank: int) -> torch.Tensor:
        low_precision = grad.dtype not in (torch.float32, torch.float64)
        U, _, Vh = torch.linalg.svd(grad.float() if low_precision else grad, full_matrices=False)
        if grad.shape[0] >= grad.shape[1]:
            return Vh[:rank].T.to(grad.dtype).contiguous()  # n x r, right
        return U[:, :rank].to(grad.dtype).contiguous()  # m x r, left

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("GaLoreAdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                right = p.dim() == 2 and p.shape[0] >= p.shape[1]
                if group["rank"] is not None:
                    if state["step"] % group["update_proj_gap"] == 0:
                        state["projector"] = self._projector(grad, group["rank"])
                    P = state["projector"]
                    grad = grad @ P if right else P.T @ grad
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(grad)
                    state["exp_avg_sq"] = torch.zeros_like(grad)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
                update = (m / (1 - beta1 ** t)) / denom
                if group["rank"] is not None:
                    P = state["projector"]
                    update = group["scale"] * (update @ P.T if right else P @ update)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the tensors in ``optimizer.state`` (moments, projectors;
    scalar step counters included when they are tensors)."""
    total = 0
    for st in optimizer.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
    return total
