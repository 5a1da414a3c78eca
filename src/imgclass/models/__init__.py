"""Model registry: build_model(name, num_classes, image_size, dropout, pretrained)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from imgclass.models.backbones import Backbone, input_size, is_backbone, load_pretrained
from imgclass.models.fast import FastNet
from imgclass.models.seed import SeedCNN

# (num_classes, image_size, dropout or None for the model's default) -> a new model; any other
# name is a timm backbone (models/backbones.py)
MODELS: dict[str, Callable[[int, int, float | None], nn.Module]] = {
    "seed_cnn": lambda classes, size, dropout: (
        SeedCNN(classes, size) if dropout is None else SeedCNN(classes, size, dropout)
    ),
    "fast_resnet": lambda classes, size, dropout: FastNet(classes, dropout=dropout or 0.0),
}


def check_model_options(name: str, pretrained: str | None, freeze_epochs: int) -> None:
    """ValueError for an unknown model or backbone-only options given to another model;
    FileNotFoundError for a missing weights file: before any data is read."""
    if name in MODELS:
        if pretrained or freeze_epochs:
            raise ValueError(
                f"--pretrained and --freeze-epochs need a pretrained backbone "
                f"(a timm model such as tf_efficientnet_lite0), not {name}"
            )
    elif not is_backbone(name):
        raise ValueError(
            f"unknown model {name!r}: choose {', '.join(MODELS)}, or a timm "
            'backbone (python -c "import timm; print(timm.list_models())")'
        )
    if pretrained and pretrained != "imagenet" and not Path(pretrained).is_file():
        raise FileNotFoundError(
            f"{pretrained}: pretrained weights file not found (give a "
            ".safetensors or .pth state dict, or 'imagenet')"
        )


def default_image_size(name: str) -> int | None:
    """The input size a backbone's pretrained weights expect; None for the other models."""
    return input_size(name) if name not in MODELS and is_backbone(name) else None


def build_model(
    name: str,
    num_classes: int,
    image_size: int,
    dropout: float | None = None,
    pretrained: str | None = None,
) -> nn.Module:
    """A new model; call under the `init` random stream for reproducibility.

    pretrained: a weights file or "imagenet" for a backbone (every layer but the new head).
    """
    check_model_options(name, pretrained, 0)
    if name in MODELS:
        return MODELS[name](num_classes, image_size, dropout)
    model = Backbone(name, num_classes, dropout)
    if pretrained:
        load_pretrained(model, pretrained)
    return model
