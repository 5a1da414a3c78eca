"""torchvision backbones for fine-tuning: a new classifier head, the backbone's own normalisation.

The model takes what every imgclass model takes (RGB in [0, 1], NCHW) and normalises with the
ImageNet mean and standard deviation as its first step, so evaluation, predict and export need
nothing of their own. The head (dropout + a new linear layer for the class count) replaces the
backbone's last linear layer; its structure does not depend on the dropout value, so a run's
model.safetensors loads into a freshly built backbone without the pretrained file.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    head: str  # path of the last linear layer in the torchvision model (replaced)
    dropout: str | None  # path of torchvision's dropout before it (moved into the new head)
    default_dropout: float  # torchvision's own value (resnets have none)


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("fc", None, 0.0),
    "mobilenet_v3_small": BackboneSpec("classifier.3", "classifier.2", 0.2),
    "efficientnet_b0": BackboneSpec("classifier.1", "classifier.0", 0.2),
}


def _weights(name: str) -> WeightsEnum:
    """torchvision's default ImageNet weights entry: input size, normalisation, download URL."""
    import torchvision  # here, not at the top: ~160 MB of memory that the other models never use

    return torchvision.models.get_model_weights(name).DEFAULT


def input_size(name: str) -> int:
    """The side the backbone's ImageNet weights were trained at (torchvision's crop size)."""
    return int(_weights(name).transforms().crop_size[0])


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


class Backbone(nn.Module):
    def __init__(self, name: str, num_classes: int, dropout: float | None = None):
        super().__init__()
        import torchvision

        self.spec = BACKBONES[name]
        self.net = torchvision.models.get_model(name, weights=None)
        last = self.net.get_submodule(self.spec.head)
        p = self.spec.default_dropout if dropout is None else dropout
        if self.spec.dropout is not None:
            _replace(self.net, self.spec.dropout, nn.Identity())
        _replace(self.net, self.spec.head,
                 nn.Sequential(nn.Dropout(p), nn.Linear(last.in_features, num_classes)))
        transform = _weights(name).transforms()
        # not in the state dict: fixed by the backbone, and torchvision's keys stay as they are
        self.register_buffer("mean", torch.tensor(transform.mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(transform.std).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def freeze(self, frozen: bool) -> None:
        """Train the new head only (frozen), or every parameter.

        BatchNorm running statistics keep adapting to the new data while frozen (as fastai's
        freeze does): only the parameters stop.
        """
        head = f"{self.spec.head}."
        for name, param in self.net.named_parameters():
            param.requires_grad_(not frozen or name.startswith(head))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:  # a torchvision .pth state dict; weights_only: never run pickled code
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, EOFError,
            ValueError) as err:
        raise ValueError(f"{path}: not a readable weights file "
                         f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                         ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("net.") for k in state):  # an imgclass run's model.safetensors
        state = {k.removeprefix("net."): v for k, v in state.items()}
    return state


def _imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    weights = _weights(name)
    try:  # torch.hub: the cached file (~/.cache/torch/hub) when present, else a download
        return weights.get_state_dict(progress=False, check_hash=True)
    except OSError as err:  # URLError is an OSError: no network
        raise ValueError(f"--pretrained imagenet: cannot download {weights.url} ({err}); "
                         f"offline, download that file elsewhere and give its path: "
                         f"--pretrained FILE") from err


def load_pretrained(model: Backbone, source: str | os.PathLike, name: str) -> None:
    """Load every weight but the replaced head from a file or torchvision's hub ("imagenet")."""
    state = (_imagenet_state_dict(name) if str(source) == "imagenet"
             else _read_state_dict(Path(source)))
    head = f"{model.spec.head}."
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    own = model.net.state_dict()
    missing = sorted(k for k in own if not k.startswith(head) and k not in body)
    unexpected = sorted(k for k in body if k not in own)
    wrong = sorted(k for k in body if k in own and body[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        problems = [f"{label} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                    for label, keys in (("missing", missing), ("unexpected", unexpected),
                                        ("shape differs", wrong)) if keys]
        raise ValueError(f"{source}: not {name} weights: {'; '.join(problems)}")
    model.net.load_state_dict(body, strict=False)
    log.info("%s: loaded %d pretrained tensors from %s (new head: %d classes)", name, len(body),
             source, model.net.get_submodule(f"{model.spec.head}.1").out_features)
