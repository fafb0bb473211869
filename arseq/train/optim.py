"""Optimizer and learning-rate schedule shared by the LightningModule and the benchmarks' bare loop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch


@dataclass
class OptimConfig:
    """Linear warmup then cosine decay to `min_lr` over `decay_steps` (default: trainer.max_steps).

    `name: adamw` trains every parameter with AdamW. `name: muon` trains the blocks' weight matrices with
    Muon and embeddings and norms with AdamW, from one `lr`. Weight decay applies to matrices only.
    """

    name: Literal["adamw", "muon"] = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    decay_steps: int | None = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.95  # Muon's

    def __post_init__(self) -> None:
        checks = [
            (self.lr > 0, f"optim.lr must be > 0, got {self.lr}"),
            (0 <= self.min_lr <= self.lr, f"optim.min_lr must be in [0, lr], got {self.min_lr}"),
            (self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.decay_steps is None or self.decay_steps >= 1, f"optim.decay_steps must be >= 1, got {self.decay_steps}"),
            (self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)"),
            (self.eps > 0, f"optim.eps must be > 0, got {self.eps}"),
            (0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def lr_factor(step: int, cfg: OptimConfig, decay_steps: int) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps))
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def orthogonalise(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Push g's singular values towards 1 with Muon's quintic Newton-Schulz iteration (coefficients from
    Keller Jordan's Muon). bfloat16 on GPUs as there; float32 elsewhere: CPUs without bfloat16 units ran
    it ~25x slower in bfloat16 (0.75 vs 0.03 s a step for a 4 x 128 model's matrices)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights: Nesterov momentum, orthogonalised, scaled by 0.2 * sqrt(max(rows, cols)) so its
    update RMS matches AdamW's (Moonshot's recipe) and the same `lr` and weight decay suit both.

    Written here rather than using torch.optim.Muon because that one always orthogonalises in bfloat16.
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.95, weight_decay: float = 0.0, ns_steps: int = 5):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "ns_steps": ns_steps})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalise(p.grad.lerp(buf, group["momentum"]), group["ns_steps"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * 0.2 * math.sqrt(max(p.shape)))
        return loss


class MuonAdamW(torch.optim.Optimizer):
    """Muon and AdamW stepped together, so Lightning's automatic optimization, gradient clipping and one
    LR schedule see a single optimizer; `param_groups` are the two optimizers' own group dicts."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        super().__init__(muon.param_groups + adamw.param_groups, {})  # the same dicts: LR changes reach both

    def step(self, closure: Any = None) -> Any:
        loss = self.muon.step(closure)  # runs the closure (forward + backward), if any, once
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    matrices: list[torch.nn.Parameter] = []
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() >= 2 and not name.startswith("embed."):
            (matrices if cfg.name == "muon" and name.startswith("blocks.") else decay).append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.name == "adamw":
        return adamw
    muon = Muon(matrices, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return MuonAdamW(muon, adamw)
