"""TensorBoard event files of a run (RUN/tensorboard/) when the `tensorboard` package is installed.

The CSV history is always written by training.py; this adds the same per-epoch figures as
TensorBoard scalars through fit()'s per-epoch hook.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"


@contextmanager
def tensorboard(run_dir: Path) -> Iterator[Callable[[Any], None] | None]:
    """A per-epoch hook writing EpochStats as scalars, or None without the tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing
        log.debug(
            "tensorboard is not installed: no event files (pip install imgclass[tensorboard])"
        )
        yield None
        return
    writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))

    def write(stats: Any) -> None:
        for name, value in dataclasses.asdict(stats).items():
            if name != "epoch":  # train_loss -> train/loss, images_per_s stays as it is
                writer.add_scalar(
                    name.replace("_", "/", 1) if name.startswith(("train_", "val_")) else name,
                    value,
                    stats.epoch,
                )
        writer.flush()

    try:
        yield write
    finally:
        writer.close()
