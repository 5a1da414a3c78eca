"""Optimisers and learning-rate schedules from a TrainConfig."""

from __future__ import annotations

import torch
from torch import nn

from imgclass.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.step_lr, momentum=config.momentum,
                               nesterov=True, weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.step_lr, eps=config.adam_eps,
                            weight_decay=config.weight_decay)


def build_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step schedule, or None for a constant learning rate."""
    if config.schedule == "constant":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.step_lr, total_steps=config.epochs * steps_per_epoch,
        pct_start=max(config.warmup, 1e-3), anneal_strategy="linear", cycle_momentum=False,
        div_factor=25.0, final_div_factor=1e3)
