r"""Sparse weights: the L1 proximal step and magnitude pruning.

* :func:`soft_threshold`, :func:`prox_l1_`: the proximal operator of the L1
  penalty, the second half of an ISTA (proximal gradient) step;
* :func:`magnitude_prune_`: zero the smallest-magnitude weights, ranked
  globally across tensors, and return the masks.

These make the *weights* sparse; neither bounds the size of a gradient.
Neighbours: optimizers for sparse *gradients* are in :mod:`gradlab.sparse`,
sparsified communication in :mod:`gradlab.compress`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from gradlab import _validate

__all__ = ["soft_threshold", "prox_l1_", "magnitude_prune_"]


def soft_threshold(x: torch.Tensor, threshold: float) -> torch.Tensor:
    r"""The proximal operator of :math:`\tau\|x\|_1`:
    :math:`\operatorname{prox}(x)_j = \operatorname{sign}(x_j)\max(|x_j|-\tau, 0)`.
    One ISTA step for :math:`f(x) + \lambda\|x\|_1` is
    ``soft_threshold(x - lr * grad_f(x), lr * lam)``."""
    _validate.nonneg("threshold", threshold, hint="lr * lam for an ISTA step")
    return torch.sign(x) * torch.clamp(x.abs() - threshold, min=0)


def prox_l1_(parameters: torch.Tensor | Iterable[torch.Tensor], threshold: float) -> None:
    """Apply :func:`soft_threshold` in place to every parameter: the proximal
    half of an ISTA step, called after ``optimizer.step()`` with
    ``threshold = lr * lam``."""
    _validate.nonneg("threshold", threshold, hint="lr * lam for an ISTA step")
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    with torch.no_grad():
        for p in params:
            p.copy_(soft_threshold(p, threshold))


def magnitude_prune_(parameters: torch.Tensor | Iterable[torch.Tensor], sparsity: float
                     ) -> list[torch.Tensor]:
    """Zero the fraction ``sparsity`` of entries with the smallest magnitude,
    ranked globally across all ``parameters``, in place. Returns the boolean
    keep-masks (one per parameter), to re-apply after later updates."""
    _validate.in_range("sparsity", sparsity, 0.0, 1.0, hint="the fraction of entries set to zero")
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
