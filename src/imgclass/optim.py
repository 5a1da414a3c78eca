"""Optimisers and learning-rate schedules from a TrainConfig."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import lr_scheduler

from imgclass.config import TrainConfig
from imgclass.models.backbones import Backbone, TopStages

WARMUP_START = 1 / 25  # warm-up starts at lr x this (OneCycleLR's default div_factor)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The config's optimiser, with its fused kernel where the parameters live on a CPU or GPU.

    Fused means one pass over each parameter per step instead of one per arithmetic operation:
    with the seed CNN's 8.8 M parameters on 2 CPU cores, Adam's step takes ~10 ms instead of
    ~35 ms and SGD's ~8 ms instead of ~55 ms (docs/performance.md), the same update.
    """
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    groups = parameter_groups(model, config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=config.step_lr,
            momentum=config.momentum,
            nesterov=True,
            weight_decay=config.weight_decay,
            fused=fused,
        )
    adam = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return adam(
        groups,
        lr=config.step_lr,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        fused=fused,
    )


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """One group at the config's lr; for a pretrained backbone with backbone_lr_scale != 1, the
    new head at that lr and every other layer at lr x backbone_lr_scale (a schedule scales both
    alike)."""
    if config.backbone_lr_scale == 1 or not isinstance(model, Backbone | TopStages):
        return [{"params": list(model.parameters())}]
    own = {id(p) for p in model.head.parameters()}
    return [
        {"params": [p for p in model.parameters() if id(p) in own]},
        {
            "params": [p for p in model.parameters() if id(p) not in own],
            "lr": config.step_lr * config.backbone_lr_scale,
        },
    ]


def build_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> lr_scheduler.LRScheduler | None:
    """A per-step schedule, or None for a constant learning rate."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total,
            pct_start=max(config.warmup, 1e-3),
            anneal_strategy="linear",
            cycle_momentum=False,
            div_factor=1 / WARMUP_START,
            final_div_factor=1e3,
        )
    if config.schedule == "cosine":
        warm = round(config.warmup * total)
        cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warm)
        if not warm:
            return cosine
        linear = lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START, total_iters=warm)
        return lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warm])
    return None
