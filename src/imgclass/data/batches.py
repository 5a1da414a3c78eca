"""Decoded uint8 images -> float batches: shuffle, scale to [0, 1], augment, prefetch.

Batches are channels_last (N, 3, H, W) float32 tensors: the uint8 cache is stored (N, H, W, 3), so
the permuted view already has channels_last strides and no copy reorders it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from imgclass.data.cache import CachedRows

Batch = tuple[torch.Tensor, torch.Tensor]


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1]: the one preprocessing step. Float
    rows (a backbone's cached features, data/features.py) are a model's input already: as is."""
    if pixels.is_floating_point():
        return pixels.float()
    return pixels.permute(0, 3, 1, 2).float().div_(255)


def epoch_order(
    labels: torch.Tensor, generator: torch.Generator, balanced: bool = False
) -> torch.Tensor:
    """The training images of one epoch, as indices: a random permutation (each image once), or
    balanced: as many draws with replacement, every class equally likely (PyTorch's
    WeightedRandomSampler with weights 1 / class count)."""
    if not balanced:
        return torch.randperm(len(labels), generator=generator)
    counts = torch.bincount(labels)
    weights = 1.0 / counts[labels].double()
    return torch.multinomial(weights, len(labels), replacement=True, generator=generator)


def iterate_batches(
    pixels: torch.Tensor | CachedRows,
    labels: torch.Tensor,
    batch_size: int,
    *,
    order: torch.Tensor | None = None,
    augment: Callable[[torch.Tensor, torch.Tensor], Batch] | None = None,
    shard: Callable[[torch.Tensor, int], list[torch.Tensor]] | None = None,
) -> Iterator[Batch]:
    """Batches of the images at `order` (default: all, in order) as floats, or through
    `augment`, which takes the uint8 pixels and labels and returns the model's input and
    targets (data/augment.TrainAugment).

    shard: cuts the order into this process's index batches (distributed.Context.batches, its
    slice of each global batch); default: consecutive batches of batch_size.
    Pixels may be the decode cache's memory-mapped rows (data/cache.CachedRows), or (with the
    labels) live on a GPU, kept there when they fit: batches are then made there (CPU indices
    index a GPU tensor).
    """
    order = torch.arange(len(labels)) if order is None else order
    for index in shard(order, batch_size) if shard else order.split(batch_size):
        rows = torch.as_tensor(pixels[index])  # (the cache's rows gather into a new array)
        if augment is None:
            yield to_float(rows), labels[index]
        else:
            yield augment(rows, labels[index])


def prefetch(batches: Iterator[Batch], depth: int = 2) -> Iterator[Batch]:
    """Prepare the next `depth` batches in a background thread while the model trains."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                slots.put(batch)
            slots.put(done)
        except BaseException as err:  # handed to the consumer, raised there
            slots.put(err)

    worker = threading.Thread(target=produce, daemon=True, name="imgclass-prefetch")
    worker.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
