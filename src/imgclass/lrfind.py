"""lr_find(): the learning-rate range test (Leslie Smith; fastai's lr_find).

Trains the recipe's model on its training split (the data, split, model and optimiser `train`
would use) for a bounded number of steps while the learning rate grows exponentially from
start_lr to end_lr; the loss is smoothed (bias-corrected exponential moving average) and the
sweep stops once it diverges. The suggestion is the learning rate of the steepest descent of the
smoothed loss (against log10 of the learning rate); the minimum's learning rate / 10 is given
beside it. Every layer is trained (freeze_epochs does not apply). Only its own outputs are
written: lr_find.csv, lr_find.png, lr_find.json.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from imgclass import atomic, runtime
from imgclass.config import build_config
from imgclass.data.batches import epoch_order, iterate_batches
from imgclass.optim import build_optimizer
from imgclass.plots import plot_lr_find
from imgclass.runtime import Device
from imgclass.training_setup import augmentation, optimiser_step, setup_training

log = logging.getLogger(__name__)

SMOOTHING = 0.98  # weight of the running average per step (fastai's beta)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # raw, per step
    smoothed: list[float]
    suggested_lr: float  # steepest descent of the smoothed loss
    min_loss_lr_div10: float  # the learning rate of the lowest smoothed loss, / 10
    stopped: str  # why the sweep ended: "diverged" or "all steps"


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
    """(learning rate of the steepest descent, learning rate of the minimum / 10).

    The steepest descent is looked for between the first tenth of the steps (where the average
    holds too few losses to be smooth; fastai skips them too) and the minimum (past it the loss
    climbs).
    """
    lowest = int(np.argmin(smoothed))
    skip = len(lrs) // 10
    if lowest - skip < 2:  # no descent to measure
        return float(lrs[lowest]), float(lrs[lowest] / 10)
    part = slice(skip, lowest + 1)
    slope = np.gradient(smoothed[part], np.log10(lrs[part]))
    return float(lrs[skip + int(np.argmin(slope))]), float(lrs[lowest] / 10)


def lr_find(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    recipe: str | None = None,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    cache_dir: str | os.PathLike | None = None,
    **overrides,
) -> LRFindResult:
    """Sweep the learning rate over `steps` optimiser steps (fewer if the loss diverges)."""
    runtime.configure()
    if steps < 3 or not 0 < start_lr < end_lr:
        raise ValueError(
            f"need steps >= 3 and 0 < start_lr < end_lr, got {steps}, {start_lr}, {end_lr}"
        )
    config = build_config(recipe, **overrides)
    out = Path(out)
    setup = setup_training(
        Path(data_dir), config, cache_dir, Device.select(config.precision, config.device)
    )
    device = setup.device
    model = setup.new_model()
    optimizer = build_optimizer(model, config)
    pixels, labels = setup.train.pixels, setup.train.labels
    loss_fn = setup.loss()
    scaler = device.grad_scaler()
    augment = augmentation(
        config, runtime.generator(config.seed, "augment"), setup.num_classes, setup.train
    )
    shuffle = runtime.generator(config.seed, "shuffle")
    lrs = start_lr * (end_lr / start_lr) ** (np.arange(steps) / (steps - 1))
    losses: list[float] = []
    smoothed: list[float] = []
    average, stopped = 0.0, "all steps"
    model.train()
    while len(losses) < steps and stopped == "all steps":  # as many passes as the steps need
        order = epoch_order(labels.cpu(), shuffle, balanced=config.sampler == "balanced")
        for x, y in iterate_batches(
            pixels, labels, config.batch_size, order=order, augment=augment
        ):
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[len(losses)])
            x, y = x.to(device.torch_device), y.to(device.torch_device)
            loss, _ = optimiser_step(model, x, y, optimizer, loss_fn, device, scaler)
            losses.append(loss.item())
            average = SMOOTHING * average + (1 - SMOOTHING) * losses[-1]
            smoothed.append(average / (1 - SMOOTHING ** len(losses)))
            if not math.isfinite(smoothed[-1]) or smoothed[-1] > DIVERGED * min(smoothed):
                stopped = "diverged"
                break
            if len(losses) == steps:
                break
    swept = lrs[: len(losses)]
    finite = np.isfinite(smoothed)
    if not finite.any():
        raise ValueError(
            f"{data_dir}: the loss was not finite from the first step at "
            f"lr {start_lr:g}; try a lower --start-lr"
        )
    suggested, min_div10 = suggest(swept[finite], np.asarray(smoothed)[finite])
    result = LRFindResult(swept.tolist(), losses, smoothed, suggested, min_div10, stopped)
    _write(out, result, config.to_dict())
    log.info(
        "lr-find: %d steps (%s); suggested learning rate %.3g (steepest descent), "
        "minimum / 10: %.3g",
        len(losses),
        stopped,
        suggested,
        min_div10,
    )
    return result


def _write(out: Path, result: LRFindResult, config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("step", "lr", "loss", "smoothed_loss"))
    writer.writerows(zip(range(1, len(result.lrs) + 1), result.lrs, result.losses, result.smoothed))
    atomic.write_text(out / "lr_find.csv", buffer.getvalue())
    summary = {k: v for k, v in asdict(result).items() if k not in ("lrs", "losses", "smoothed")}
    atomic.write_json(out / "lr_find.json", {**summary, "steps": len(result.lrs), "config": config})
    plot_lr_find(
        result.lrs, result.losses, result.smoothed, result.suggested_lr, out / "lr_find.png"
    )
