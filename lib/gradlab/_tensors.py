r"""Lists of tensors: the global norm, the multi-tensor (foreach) choice, grouping.

Shared by :mod:`gradlab.clip`, :mod:`gradlab.optim`, :mod:`gradlab.monitor`,
:mod:`gradlab.compress` and :mod:`gradlab.lm`, so that each of these is
written once:

* :func:`global_norm`: the norm of several tensors taken together, the one
  function behind every global gradient norm in gradlab;
* :func:`use_foreach`: whether to use the multi-tensor ``torch._foreach_*``
  kernels;
* :func:`group_by_device_dtype`: split parallel lists of tensors by device and
  dtype, since one multi-tensor kernel takes tensors of one device and dtype.

Not public: :func:`gradlab.monitor.global_grad_norm`,
:func:`gradlab.clip.clip_grad_norm_` and the optimizers are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch

#: device types with native multi-tensor kernels (torch's list for clip_grad_norm_)
FOREACH_DEVICE_TYPES = ("cpu", "cuda", "xpu")


def evaluate_closure(closure) -> float | None:
    """The loss that an optimizer's ``step(closure)`` returns: ``closure()`` evaluated with
    gradients enabled (``step`` itself runs under ``torch.no_grad``), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def use_foreach(foreach: bool | None, devices: Iterable[torch.device], *,
                default: Iterable[str] = FOREACH_DEVICE_TYPES, strict: bool = True) -> bool:
    """Whether to take the multi-tensor path for tensors on ``devices``.

    ``foreach=None`` picks it when every device's type is in ``default``:
    ``torch.nn.utils`` does so on CPU and CUDA (the default here), while
    ``torch.optim`` only on CUDA (``default=("cuda",)``). ``foreach=True`` is
    obeyed; with ``strict=True`` (torch's clipping functions) it raises on a
    device without native multi-tensor kernels, with ``strict=False``
    (``torch.optim``) the kernels' slow fall-back runs there.
    """
    types = {torch.device(d).type for d in devices}
    if foreach is None:
        return bool(types) and types <= set(default)
    unsupported = sorted(types - set(FOREACH_DEVICE_TYPES))
    if foreach and strict and unsupported:
        raise RuntimeError(f"foreach=True was passed, but the multi-tensor kernels do not support "
                           f"{', '.join(unsupported)} tensors; pass foreach=None (or False) to use "
                           "the per-tensor loop")
    return bool(foreach)


def group_by_device_dtype(*lists: list) -> dict[tuple[torch.device, torch.dtype], list[list]]:
    """Split parallel lists by the (device, dtype) of the first list's tensors.

    Returns ``{(device, dtype): [sublist of lists[0], sublist of lists[1], ...]}``
    with groups in order of first appearance and each sublist in the input's
    order (other lists may hold anything: state tensors, indices, ``None``)."""
    out: dict[tuple, list[list]] = defaultdict(lambda: [[] for _ in lists])
    for i, t in enumerate(lists[0]):
        bucket = out[(t.device, t.dtype)]
        for k, lst in enumerate(lists):
            bucket[k].append(lst[i])
    return dict(out)


def _accumulation_dtype(tensor_dtype: torch.dtype, dtype: torch.dtype | None) -> torch.dtype | None:
    # vector_norm wants a complex dtype for complex input (the norm itself is real)
    if dtype is not None and tensor_dtype.is_complex and not dtype.is_complex:
        return torch.complex128 if dtype == torch.float64 else torch.complex64
    return dtype


def global_norm(tensors: Iterable[torch.Tensor], norm_type: float = 2.0, *,
                dtype: torch.dtype | None = torch.float64, foreach: bool | None = None,
                device: torch.device | None = None) -> torch.Tensor:
    r"""The ``norm_type``-norm of all ``tensors`` concatenated, as a 0-dim tensor:

    .. math:: \|g\|_q = \Big(\sum_t \|g_t\|_q^q\Big)^{1/q}
              \quad(\max_t \max_i |g_{t,i}| \text{ for } q = \infty),

    computed as the norm of the per-tensor norms (what
    ``torch.nn.utils.get_total_norm`` does), on ``device`` (default: the first
    tensor's).

    ``dtype`` is the accumulation dtype. The default, float64, is overflow-safe
    for float32, float16 and bfloat16 tensors: the squares of float32 entries of
    1e20 overflow float32 (whose largest value is 3.4e38), so their norm
    computed in float32 is ``inf``, while in float64 it is ``1e20 * sqrt(n)``.
    ``dtype=None`` computes each (device, dtype) group in its own dtype, as
    torch does: the clipping functions pass it, for results identical to
    torch's. ``foreach``: see :func:`use_foreach` (``None``: multi-tensor kernels
    on CPU and CUDA). No tensors: a zero.
    """
    tensors = list(tensors)
    if not tensors:
        return torch.zeros((), dtype=dtype or torch.get_default_dtype(), device=device)
    out = tensors[0].device if device is None else device
    norms: list[torch.Tensor] = []
    for (dev, tensor_dtype), (group,) in group_by_device_dtype(tensors).items():
        acc = _accumulation_dtype(tensor_dtype, dtype)
        if use_foreach(foreach, [dev]):
            norms.extend(torch._foreach_norm(group, norm_type, dtype=acc))
        else:
            norms.extend(torch.linalg.vector_norm(t, norm_type, dtype=acc) for t in group)
    return torch.linalg.vector_norm(torch.stack([n.to(out) for n in norms]), norm_type)
