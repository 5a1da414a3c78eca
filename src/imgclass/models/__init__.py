"""Model registry: build_model(name, num_classes, image_size)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from imgclass.models.fast import FastNet
from imgclass.models.seed import SeedCNN

MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "seed_cnn": lambda num_classes, image_size: SeedCNN(num_classes, image_size),
    "fast_resnet": lambda num_classes, image_size: FastNet(num_classes),
}


def build_model(name: str, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised model; call under the `init` random stream for reproducibility."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes, image_size)
