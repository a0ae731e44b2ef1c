r"""Data-parallel training with compressed communication.

* :class:`CommStats` and :func:`allreduce_hook`: plain all-reduce as a
  ``DistributedDataParallel`` communication hook that counts the bytes it sends
  (the baseline);
* :class:`PowerSGDState` and :func:`powerSGD_hook`: :class:`gradlab.compress.PowerSGD`
  as a DDP communication hook, with the argument names and defaults of
  ``torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook``. gradlab's own
  additions, which torch's hook does not have: ``max_norm`` (the local gradient
  is clipped before it is compressed), ``nonfinite`` (a bucket holding an inf or
  NaN passes through uncompressed and stays out of the state), ``scaler`` (the
  hook works in unscaled units under mixed precision's loss scaling), and the
  monitoring fields ``bytes_sent``, ``grad_norm`` and :meth:`PowerSGDState.error_norm`;
* :func:`gradlab.ddp_train.main`: the training script of the compression
  chapter, run under ``torchrun`` as ``python -m gradlab.ddp_train``.

Neighbours: the compressors themselves (PowerSGD, top-k, error feedback) are in
:mod:`gradlab.compress`; the multi-process training script that registers
these hooks is :mod:`gradlab.ddp_train`.
"""

# No `from __future__ import annotations` here: DDP checks that a hook's return annotation
# *is* torch.futures.Future[torch.Tensor], and postponed annotations would be strings.
import math
from dataclasses import dataclass

import torch

from gradlab import _validate
from gradlab.compress import PowerSGD, _check_rank, _check_rate, should_compress

__all__ = ["CommStats", "allreduce_hook", "PowerSGDState", "powerSGD_hook"]


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


def _allreduce_mean_fut(state: CommStats, buf: torch.Tensor, group, world: int,
                        rescale: float = 1.0) -> torch.futures.Future[torch.Tensor]:
    import torch.distributed as dist

    state.bytes_sent += buf.numel() * buf.element_size()
    fut = dist.all_reduce(buf, group=group, async_op=True).get_future()
    if rescale != 1.0:
        return fut.then(lambda f: f.value()[0].div_(world).mul_(rescale))
    return fut.then(lambda f: f.value()[0].div_(world))


class PowerSGDState(CommStats):
    """State of :func:`powerSGD_hook`; argument names and defaults as in
    ``torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook.PowerSGDState``.

    Note the defaults: ``start_powerSGD_iter=1000`` all-reduces uncompressed
    for the first 1000 steps, and ``min_compression_rate=2`` leaves any matrix
    (``m x n``) with ``(m + n) r * 2 >= m n`` uncompressed, so a short run of a small model
    with the defaults never compresses anything. Unlike torch's hook, errors
    are keyed by parameter, not by bucket, so ``start_powerSGD_iter`` may be
    0 or 1 (torch needs >= 2 because DDP rebuilds its buckets after step 1).

    Extra: ``max_norm`` clips this worker's gradient in each bucket *before*
    the error is added and the result compressed (clip, then compress); with
    one bucket this is the local global norm. ``bytes_sent``, ``grad_norm``
    (this worker's gradient norm at the last step, measured after clipping) and
    :meth:`error_norm` are for monitoring; ``error_norm() / grad_norm`` says how
    many steps' worth of gradient the error buffer holds back.

    ``scaler``: under mixed precision, the ``torch.amp.GradScaler`` (or any
    object with ``get_scale()``) that scales the loss. DDP runs the hook during
    ``backward()``, before ``scaler.unscale_``, so the bucket holds the gradient
    multiplied by the loss scale ``S`` (up to ``2**16`` and more). Without
    ``scaler``, ``max_norm`` then clips ``S`` times too hard and the error
    buffers are kept in the scale of the step that filled them, which is wrong
    by the ratio of the scales (2 with GradScaler's defaults) after every
    change of ``S``. With ``scaler``, the hook divides the bucket by the
    current ``S`` first, so clipping, error buffers, ``grad_norm`` and
    :meth:`error_norm` are in unscaled units, and multiplies the result by
    ``S`` again, so that ``scaler.unscale_`` finds the scaled gradient it
    expects (exactly, when ``S`` is a power of two, as GradScaler's scales
    are by default). torch's own ``PowerSGDState`` has no such argument.

    ``nonfinite`` (``"skip"`` or ``"raise"``, see :class:`PowerSGD`): a bucket
    with an ``inf`` or ``NaN`` on any worker is all-reduced uncompressed (so
    ``GradScaler`` or a norm check after ``backward()`` sees it and skips the
    step), the error buffers and ``Q`` stay as they were, and clipping leaves a
    non-finite bucket alone (scaling by ``max_norm / inf = 0`` would zero every
    finite entry and turn the ``inf`` into ``NaN``, discarding the bucket's
    information). ``skipped_steps`` counts such steps.
    """

    def __init__(self, process_group=None, matrix_approximation_rank: int = 1,
                 start_powerSGD_iter: int = 1_000, min_compression_rate: float = 2,
                 use_error_feedback: bool = True, warm_start: bool = True, random_seed: int = 0,
                 max_norm: float | None = None, nonfinite: str = "skip", scaler=None) -> None:
        super().__init__(process_group=process_group)
        _validate.integer("start_powerSGD_iter", start_powerSGD_iter, 0,
                          hint="the steps all-reduced uncompressed before PowerSGD starts")
        _check_rate(min_compression_rate)
        if max_norm is not None:
            _validate.positive("max_norm", max_norm, finite=True, hint="or None for no local clipping")
        if scaler is not None and not callable(getattr(scaler, "get_scale", None)):
            raise TypeError(f"scaler must be a torch.amp.GradScaler (anything with get_scale()) or None, "
                            f"got {type(scaler).__name__}")
        self.matrix_approximation_rank = _check_rank(matrix_approximation_rank)
        self.start_powerSGD_iter = start_powerSGD_iter
        self.min_compression_rate = float(min_compression_rate)
        self.max_norm = max_norm
        self.scaler = scaler
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
    :func:`should_compress` are compressed (for an ``m x n`` matrix, one all-reduce
    of ``m r`` numbers for ``P`` and one of ``n r`` for ``Q``), everything else is
    all-reduced as is.
    Collectives are issued in the same order on every worker, which is what
    DDP requires. With ``state.scaler`` the bucket is divided by the loss scale
    before all of this and multiplied by it again at the end.
    """
    import torch.distributed as dist

    group = state.process_group or dist.group.WORLD
    world = dist.get_world_size(group)
    buf = bucket.buffer()
    scale = 1.0 if state.scaler is None else float(state.scaler.get_scale())
    if scale != 1.0:
        buf.div_(scale)  # unscaled units for clipping, error buffers and norms
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
        return _allreduce_mean_fut(state, buf, group, world, rescale=scale)

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
    if scale != 1.0:
        buf.mul_(scale)  # back to the scaled units that GradScaler.unscale_ expects
    fut: torch.futures.Future = torch.futures.Future(devices=[buf.device] if buf.is_cuda else None)
    fut.set_result(buf)
    return fut


