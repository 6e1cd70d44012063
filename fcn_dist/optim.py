"""Optimizer and per-iteration LR schedule. Plain PyTorch (the losses are in ``fcn_dist.losses``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from fcn_dist.config import OptimConfig


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW (beta1 = momentum) over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def lr_factor(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    if cfg.schedule == "poly":
        return (1.0 - progress) ** cfg.poly_power
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """A LambdaLR stepped once per optimizer step, ``total_steps`` long."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step, total_steps))

