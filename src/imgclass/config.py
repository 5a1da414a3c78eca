"""TrainConfig and the named recipes.

A recipe is data: every hyperparameter in one place, with its unit. The `seed` recipe is the
reference system exactly (a Keras CNN, six Animals-10 classes at 64x64, 70.4 % validation
accuracy; docs/recipes.md has its table, docs/architecture.md how it is built).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclass import atomic
from imgclass.data.images import DEFAULT_MAX_PIXELS

# the values each option takes: checked here, offered by the CLI
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "onecycle", "cosine")
LR_SCALINGS = ("none", "linear", "sqrt")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CLASS_WEIGHTS = ("none", "auto")
SAMPLERS = ("shuffle", "balanced")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-only augmentation in Keras conventions (the reference used Keras layers)."""

    hflip: bool = True  # RandomFlip("horizontal"): probability 0.5
    rotation: float = 0.1  # RandomRotation(0.1): fraction of a full turn, so +/-36 degrees
    zoom: float = 0.1  # RandomZoom(0.1): +/-10 % of the image side, same factor for both axes
    translate: float = 0.0  # RandomTranslation: up to this fraction of the side, each axis
    # Beyond the reference (all off in the seed recipe):
    trivial_augment: bool = False  # TrivialAugment Wide: one random photometric/geometric op
    random_erasing: float = 0.0  # probability of erasing one random rectangle per image
    mixup: float = 0.0  # MixUp Beta(alpha, alpha) concentration; 0 = off
    cutmix: float = 0.0  # CutMix Beta(alpha, alpha) concentration; 0 = off (both on: one per batch)


@dataclass(frozen=True)
class TrainConfig:
    recipe: str = "seed"
    model: str = "seed_cnn"  # seed_cnn, fast_resnet, or a timm backbone (models/backbones)
    pretrained: str | None = None  # backbone weights: a .safetensors/.pth file, or "imagenet"
    freeze_epochs: int = 0  # backbones: epochs training the new head only, the rest frozen
    # backbones with pretrained weights: the frozen backbone's pooled features of every image
    # computed once (and cached: data/features.py), the new head trained on them (augment does
    # not apply to them); the run's model is the backbone with that head
    cached_features: bool = False
    # then, when > 0, every layer trained for this many epochs on the images (the recipe's
    # augmentation, a cosine schedule warming up over `warmup`, peaking at finetune_lr, no early
    # stopping: the last epoch is kept)
    finetune_epochs: int = 0
    # which layers that stage trains: 0, every layer on the images; N, the backbone's last N
    # stages (timm's EfficientNet family) on the activations of the frozen layers below them,
    # computed once, each training image and its mirror (about 4x faster at 224 px: Lite0)
    finetune_stages: int = 0
    finetune_lr: float = 1e-4  # the new head's peak in that stage, per step of lr_batch images
    backbone_lr_scale: float = 1.0  # backbones: the pretrained layers' lr = the head's x this
    dropout: float | None = None  # before the classifier; None: the model's own default
    image_size: int = 64  # pixels, square
    val_split: float = 0.2  # fraction of each class held out for validation
    seed: int = 0
    epochs: int = 10  # maximum number of passes over the training split
    batch_size: int = 32  # images per optimiser step, all processes together (torchrun)
    optimizer: str = "adam"  # "adam", "adamw" (decoupled weight decay), "sgd" (Nesterov)
    lr: float = 5e-4  # learning rate per optimiser step (the peak of a schedule)
    lr_batch: int = 32  # the batch size `lr` is tuned for (the recipe's own)
    # how lr follows a batch size other than lr_batch: "none" (lr as given), "linear"
    # (lr x batch_size / lr_batch), "sqrt" (lr x sqrt(batch_size / lr_batch))
    lr_scaling: str = "none"
    adam_eps: float = 1e-7  # Keras' Adam epsilon (PyTorch's default is 1e-8)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # adam/sgd: L2 penalty coefficient; adamw: decoupled, per step
    schedule: str = "constant"  # "constant"; "onecycle": linear warm-up, then linear decay;
    # "cosine": linear warm-up, then cosine decay to 0
    warmup: float = 0.0  # onecycle, cosine: share of all steps spent warming up from lr / 25
    label_smoothing: float = 0.0  # share of the target spread over all classes
    class_weights: str = "none"  # "none", or "auto": loss weight n / (classes x count) per class
    sampler: str = "shuffle"  # "shuffle" (each image once per epoch), or "balanced": drawn with
    # replacement, every class equally likely
    tta_flip: bool = False  # evaluate and predict on each image and its mirror, averaged
    patience: int = 3  # epochs without a lower validation loss before stopping; 0 = never stop
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    keep_conflicts: bool = False  # keep contents found under two classes (default: leave out)
    max_pixels: int = DEFAULT_MAX_PIXELS  # width x height; larger ones skipped, never decoded
    # "auto": bf16 where the hardware computes it natively, fp16 on GPUs without bf16; or
    # "bf16", "fp16" (CUDA only, with a grad scaler), "fp32"
    precision: str = "auto"
    device: str = "auto"  # "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N", "mps"

    @property
    def step_lr(self) -> float:
        """The learning rate per optimiser step at this batch size, after lr_scaling."""
        ratio = self.batch_size / self.lr_batch
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling]

    def finetuning(self) -> TrainConfig:
        """The config of the fine-tuning stage that follows the head on cached features."""
        return dataclasses.replace(
            self,
            cached_features=False,
            epochs=self.finetune_epochs,
            lr=self.finetune_lr,
            schedule="cosine",
            patience=0,
            finetune_epochs=0,
        )

    def replace(self, **overrides: Any) -> TrainConfig:
        """Return a copy with the given fields changed (None too: `pretrained=None` clears it).

        `augment` may be a dict of AugmentConfig fields to change (e.g. {"mixup": 0.2}).
        """
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
        changes = dict(overrides)
        if isinstance(changes.get("augment"), dict):
            augment = changes["augment"]
            fields = {f.name for f in dataclasses.fields(AugmentConfig)}
            if set(augment) - fields:
                raise ValueError(
                    f"unknown AugmentConfig fields: {', '.join(sorted(set(augment) - fields))}"
                )
            changes["augment"] = dataclasses.replace(self.augment, **augment)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """From TrainConfig fields (augment: a dict of AugmentConfig fields), each checked
        against its type: ValueError naming the first unknown field (with the nearest valid
        name) or the first value of the wrong type."""
        data = dict(_checked(cls, data))
        data["augment"] = AugmentConfig(
            **_checked(AugmentConfig, data.get("augment", {}), "augment.")
        )
        return cls(**data)

    def _mixes_images(self) -> bool:
        a = self.augment
        return bool(a.mixup or a.cutmix or a.random_erasing or a.trivial_augment)

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range value."""
        checks = [
            (self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}"),
            (0.0 < self.val_split < 1.0, f"val_split must be in (0, 1), got {self.val_split}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.max_pixels >= 1, f"max_pixels must be >= 1, got {self.max_pixels}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (self.lr_batch >= 1, f"lr_batch must be >= 1, got {self.lr_batch}"),
            (
                self.lr_scaling in LR_SCALINGS,
                f"unknown lr_scaling {self.lr_scaling!r}",
            ),
            (
                self.precision in PRECISIONS,
                f"unknown precision {self.precision!r}",
            ),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}"),
            (
                self.class_weights in CLASS_WEIGHTS,
                f"class_weights must be none or auto, got {self.class_weights!r}",
            ),
            (self.sampler in SAMPLERS, f"unknown sampler {self.sampler!r}"),
            (
                0.0 <= self.augment.random_erasing <= 1.0,
                f"random_erasing must be in [0, 1], got {self.augment.random_erasing}",
            ),
            (
                self.augment.mixup >= 0 and self.augment.cutmix >= 0,
                "mixup and cutmix must be >= 0 (Beta concentrations; 0 = off)",
            ),
            (0.0 <= self.warmup < 1.0, f"warmup must be in [0, 1), got {self.warmup}"),
            (
                0.0 <= self.label_smoothing < 1.0,
                f"label_smoothing must be in [0, 1), got {self.label_smoothing}",
            ),
            (self.freeze_epochs >= 0, f"freeze_epochs must be >= 0, got {self.freeze_epochs}"),
            (
                self.dropout is None or 0.0 <= self.dropout < 1.0,
                f"dropout must be in [0, 1), got {self.dropout}",
            ),
            (
                self.finetune_epochs >= 0,
                f"finetune_epochs must be >= 0, got {self.finetune_epochs}",
            ),
            (self.finetune_lr > 0, f"finetune_lr must be > 0, got {self.finetune_lr}"),
            (
                self.finetune_stages >= 0,
                f"finetune_stages must be >= 0, got {self.finetune_stages}",
            ),
            (
                self.backbone_lr_scale > 0,
                f"backbone_lr_scale must be > 0, got {self.backbone_lr_scale}",
            ),
            (
                not self.finetune_epochs or self.cached_features,
                "finetune_epochs fine-tune after the head on cached features (cached_features)",
            ),
            (
                not self.cached_features or self.pretrained,
                "cached_features need pretrained weights: give --pretrained imagenet or FILE",
            ),
            (
                not (self.cached_features and (self.freeze_epochs or self.tta_flip)),
                "cached_features train the head alone on fixed features: no freeze_epochs, no "
                "tta_flip",
            ),
            (
                not (
                    self.cached_features
                    and self._mixes_images()
                    and not (self.finetune_epochs and self.finetune_stages == 0)
                ),
                "mixup, cutmix, random_erasing and trivial_augment act on images, but the head "
                "trains on cached features (and --finetune-stages N on cached activations): use "
                "them with --finetune-epochs N --finetune-stages 0, or --recipe fast or seed",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


RECIPES: dict[str, TrainConfig] = {
    # The reference system: Keras CNN, Adam 5e-4, batch 32, <= 10 epochs, early stopping (3).
    "seed": TrainConfig(),
    # From scratch, fast on a CPU: a small residual net, SGD-Nesterov with a one-cycle schedule,
    # label smoothing, flip test-time augmentation (docs/recipes.md has the evidence).
    "fast": TrainConfig(
        recipe="fast",
        model="fast_resnet",
        epochs=24,
        batch_size=64,
        optimizer="sgd",
        lr=0.2,  # peak, per step of 64 images
        lr_batch=64,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="onecycle",
        warmup=0.15,
        label_smoothing=0.2,
        tta_flip=True,
        patience=0,  # the schedule decides the length; the last epoch is kept
        augment=AugmentConfig(hflip=True, rotation=0.05, zoom=0.2, translate=0.1),
    ),
    # An ImageNet-pretrained EfficientNet-Lite0 (its weights are installed with imgclass): a new
    # head trained on the backbone's cached features, early stopping (docs/recipes.md has the
    # evidence).
    "transfer": TrainConfig(
        recipe="transfer",
        model="tf_efficientnet_lite0",
        pretrained="imagenet",
        cached_features=True,
        image_size=224,
        epochs=100,  # at most: early stopping ends the head's training
        batch_size=64,
        optimizer="adamw",
        lr=1e-3,
        lr_batch=64,
        weight_decay=0.05,
        dropout=0.2,
        label_smoothing=0.1,
        patience=10,
        # --finetune-epochs N: then the last 2 stages on their cached activations
        finetune_stages=2,
        finetune_lr=1e-3,
        warmup=0.1,  # that stage's cosine schedule (the head's lr is constant)
    ),
}


# What `imgclass train DATA` trains with no --recipe: the best result in about a minute on photos
# (docs/recipes.md: which recipe for which data and budget, with the evidence).
DEFAULT_RECIPE = "transfer"


def build_config(recipe: str | None = None, **overrides: Any) -> TrainConfig:
    """The recipe (default DEFAULT_RECIPE) with overrides, checked; a backbone given as an
    override without an image size takes the backbone's own input size."""
    from imgclass.models import MODELS, check_model_options, default_image_size

    config = load_recipe(recipe or DEFAULT_RECIPE).replace(**overrides)
    if "model" in overrides and "image_size" not in overrides:
        size = default_image_size(config.model)
        config = config if size is None else config.replace(image_size=size)
    config.validate()
    if config.model in MODELS and config.pretrained and "pretrained" not in overrides:
        raise ValueError(
            f"the {config.recipe} recipe{'' if recipe else ' (the default)'} starts "
            f"from pretrained weights, which {config.model} has none of: train it "
            "from scratch with --recipe fast or --recipe seed"
        )
    check_model_options(config.model, config.pretrained, config.freeze_epochs)
    return config


def _accepts(kind: Any, value: Any) -> bool:
    """Whether a JSON value fits a field's type: bool is not a number, an int is a float."""
    kinds = (
        typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType)
        else (kind,)
    )
    for one in kinds:
        if one is type(None) and value is None:
            return True
        if one is bool and isinstance(value, bool):
            return True
        if (
            one in (int, float)
            and not isinstance(value, bool)
            and (isinstance(value, int) or (one is float and isinstance(value, float)))
        ):
            return True
        if one is str and isinstance(value, str):
            return True
        if dataclasses.is_dataclass(one) and isinstance(value, dict):
            return True
    return False


def _type_name(kind: Any) -> str:
    kinds = typing.get_args(kind) or (kind,)
    return " or ".join(
        "null"
        if one is type(None)
        else "an object"
        if dataclasses.is_dataclass(one)
        else {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
            one, str(one)
        )
        for one in kinds
    )


def _checked(cls: type, data: Any, prefix: str = "") -> dict[str, Any]:
    """`data` as the fields of the dataclass `cls`, each of its declared type."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{prefix.rstrip('.') or 'a recipe'} must be a JSON object of "
            f"{cls.__name__} fields, got {type(data).__name__}"
        )
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in hints:
            nearest = difflib.get_close_matches(key, list(hints), n=1)
            hint = f": did you mean '{prefix}{nearest[0]}'?" if nearest else ""
            raise ValueError(f"unknown field '{prefix}{key}'{hint}")
        if not _accepts(hints[key], value):
            raise ValueError(
                f"{prefix}{key} must be {_type_name(hints[key])}, got {json.dumps(value)}"
            )
    return data


def load_recipe(name_or_path: str) -> TrainConfig:
    """A named recipe, or a JSON file of TrainConfig fields (missing ones take `seed` values,
    but lr_batch: the file's own batch_size, the batch its lr was chosen for)."""
    if name_or_path in RECIPES:
        return RECIPES[name_or_path]
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        data = atomic.read_json(path)
        try:
            _checked(TrainConfig, data)
            data.setdefault("lr_batch", data.get("batch_size", RECIPES["seed"].batch_size))
            return TrainConfig.from_dict({**RECIPES["seed"].to_dict(), **data, "recipe": path.stem})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
    raise ValueError(
        f"unknown recipe {name_or_path!r}: choose one of "
        f"{', '.join(RECIPES)} or give a .json recipe file"
    )
