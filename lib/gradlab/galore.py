r"""GaLore: Adam's state in a low-rank projection of each matrix gradient.

* :class:`GaLoreAdamW`: AdamW whose moments live in a rank-``r`` projection of
  each matrix gradient, the projector refreshed from the gradient's SVD every
  ``update_proj_gap`` steps (Zhao et al. 2024);
* :func:`optimizer_state_bytes`: the bytes an optimizer's state holds.

Neighbours: PowerSGD, which compresses what is *sent* rather than what is
*stored*, is in :mod:`gradlab.compress`; the plain optimizers in
:mod:`gradlab.optim`.
"""

from __future__ import annotations

import torch

from gradlab import _validate
from gradlab._tensors import evaluate_closure
from gradlab.compress import _check_rank

__all__ = ["GaLoreAdamW", "optimizer_state_bytes"]


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
        _validate.nonneg("lr", lr)
        for i, b in enumerate(_validate.pair("betas", betas, "(beta1, beta2)")):
            _validate.unit(f"betas[{i}]", b)
        _validate.nonneg("eps", eps)
        _validate.nonneg("weight_decay", weight_decay)
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
        _validate.integer("update_proj_gap", group["update_proj_gap"], 1,
                          hint="the steps between two SVDs of the gradient (the paper uses 200)")
        _validate.positive("scale", group["scale"], finite=True, hint="the paper uses 0.25")
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
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                _validate.floating_param("gradlab.galore.GaLoreAdamW", p)
                if grad.is_sparse:
                    raise RuntimeError("GaLoreAdamW does not support sparse gradients; use "
                                       "torch.optim.SparseAdam or the optimizers in gradlab.sparse")
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
