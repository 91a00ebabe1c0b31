"""A minimal Adam for the source fit's photometric refinement.

Why not ``torch.optim.Adam``: constructing any ``torch.optim`` optimizer imports ``torch._dynamo``
(~1.3 s of CPU on the 2-core test machine, paid by the first session of every server process and
by ``jr2net reenact`` before its first output frame). This is the same update as
``torch.optim.Adam``'s default single-tensor CPU path (no weight decay, no amsgrad, no maximize),
operation for operation, so the fit's results are unchanged (``tests/test_fitting_adam.py``
compares the two).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Adam:
    """``torch.optim.Adam(groups, betas=betas, eps=eps)`` for parameter groups ``[{"params":
    [tensor, ...], "lr": float}, ...]`` (each group's own ``lr``); ``zero_grad`` and ``step``."""

    def __init__(
        self, groups: Iterable[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.groups = [{"params": list(g["params"]), "lr": float(g["lr"])} for g in groups]
        self.state: dict[int, dict] = {}
        for g in self.groups:
            for p in g["params"]:
                if g["lr"] < 0:
                    raise ValueError(f"Invalid learning rate: {g['lr']}")
                self.state[id(p)] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        beta1, beta2, eps = self.beta1, self.beta2, self.eps
        for g in self.groups:
            lr = g["lr"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[id(p)]
                if not state:
                    state["step"] = 0.0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1.0  # torch: a float32 tensor read back as a float (exact here)
                step = state["step"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
                step_size = lr / bias_correction1
                denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)
