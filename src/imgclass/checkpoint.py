"""Save and load a trained model: safetensors weights (never pickle) + JSON metadata.

`model.json` holds everything needed to rebuild the model and to preprocess images exactly as in
validation: the class names in label order, image size, normalisation, architecture, versions.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from imgclass import atomic
from imgclass.models import build_model

WEIGHTS = "model.safetensors"
METADATA = "model.json"


class CheckpointError(ValueError):
    """A model file that is missing, truncated, tampered with or from an unknown architecture."""


@dataclass(frozen=True)
class ModelMeta:
    classes: list[str]
    image_size: int
    architecture: str
    # input = pixels (uint8, RGB, HxW squashed) * scale, then (x - mean) / std per channel
    normalisation: dict = field(default_factory=lambda: {
        "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]})
    resize: str = "squash to image_size x image_size, bilinear (no crop)"
    tta_flip: bool = False  # predictions average the image and its mirror
    num_parameters: int = 0
    versions: dict = field(default_factory=dict)

    @classmethod
    def describe(cls, model: nn.Module, classes: list[str], image_size: int,
                 architecture: str, tta_flip: bool = False) -> ModelMeta:
        return cls(list(classes), image_size, architecture, tta_flip=tta_flip,
                   num_parameters=count_parameters(model), versions=_versions())


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on the CPU
    meta: ModelMeta


def count_parameters(model: nn.Module) -> int:
    """Keras' count: weights plus BatchNorm running statistics (not PyTorch's batch counter)."""
    buffers = sum(b.numel() for name, b in model.named_buffers()
                  if not name.endswith("num_batches_tracked"))
    return sum(p.numel() for p in model.parameters()) + buffers


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("imgclass", "torch", "torchvision"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def save_model(folder: str | os.PathLike, model: nn.Module, meta: ModelMeta) -> None:
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic.write_bytes(folder / WEIGHTS, save_safetensors(state, metadata={"format": "pt"}))
    atomic.write_json(folder / METADATA, asdict(meta))


def load_model(run: str | os.PathLike) -> LoadedModel:
    """The model of a run directory (or a folder holding model.safetensors + model.json)."""
    folder = Path(run)
    weights, meta_file = folder / WEIGHTS, folder / METADATA
    for path in (weights, meta_file):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (is {folder} a finished imgclass run?)")
    try:
        meta = ModelMeta(**json.loads(meta_file.read_text()))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{meta_file}: unreadable model metadata ({err})") from err
    try:
        model = build_model(meta.architecture, len(meta.classes), meta.image_size)
    except ValueError as err:
        raise CheckpointError(f"{meta_file}: {err}") from err
    try:
        state = load_safetensors(weights.read_bytes())
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{weights}: truncated or not matching {meta.architecture} "
                              f"({str(err).splitlines()[0]})") from err
    model.eval()
    return LoadedModel(model.to(memory_format=torch.channels_last), meta)
