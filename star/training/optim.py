"""AdamW with decay only on matrices, and the learning-rate schedule (linear warm-up, cosine decay to min_lr).

The schedule is a pure function of the step, so it has no state of its own: restoring the step restores it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from star.training.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: parameters with 2+ dims decay; norms, biases and other 1-D (or 0-D) parameters do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters; check the stage's `trainable` modules")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def lr_at(step: int, cfg: OptimConfig, decay_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based).

    warm-up:  lr * (step + 1) / warmup_steps           for step < warmup_steps
    cosine:   min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2,  t = (step - warmup) / (decay_steps - warmup) in [0, 1]
    after:    min_lr                                     for step >= decay_steps
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = decay_steps - cfg.warmup_steps
    if span <= 0:
        return cfg.lr if step < decay_steps else cfg.min_lr
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
