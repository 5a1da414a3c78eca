"""What every training starts from, and the one step it repeats: train, tune and lr-find share it.

setup_training(): the data (scanned, decoded once), its split, each side as tensors (on the device
when they fit there), on the device and precision chosen. TrainingSetup.new_model() and .loss()
give the recipe's model and loss for it; optimiser_step() is the step every loop takes (autocast,
the fp16 grad scaler where fp16 is used).

With cached_features (the transfer recipe) the rows are the pretrained backbone's pooled features
instead of pixels (data/features.py), and the model trained is its head alone (FeatureHead);
TrainingSetup.backbone holds the backbone the head goes back into.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgclass import distributed, runtime
from imgclass.config import TrainConfig
from imgclass.data.augment import TrainAugment
from imgclass.data.batches import to_float
from imgclass.data.cache import CachedRows, DecodedImages, load_images
from imgclass.data.dataset import Dataset, Loader, load_dataset
from imgclass.data.features import load_features
from imgclass.data.scan import DataError, Manifest
from imgclass.data.split import Split, given_split, stratified_split
from imgclass.distributed import Context
from imgclass.models import build_model
from imgclass.models.backbones import Backbone, FeatureHead, TopStages
from imgclass.runtime import Device

log = logging.getLogger(__name__)

ACTIVATION_BATCH = 64  # images per step of with_activations' forward pass


@dataclass
class Tensors:
    """One side of the split: uint8 pixels (N, H, W, 3) or a backbone's float features
    (N, num_features), read where the cache holds them (CachedRows) or moved to a GPU; or the
    activations (N, C, H, W) under the stages being fine-tuned; and int64 labels."""

    pixels: torch.Tensor | CachedRows
    labels: torch.Tensor

    @classmethod
    def take(cls, dataset: Dataset, index: np.ndarray) -> Tensors:
        """The rows at `index`: the cache's rows are not read here (no copy), others copied."""
        pixels = dataset.pixels
        rows = (
            pixels.take(index)
            if isinstance(pixels, CachedRows)
            else torch.from_numpy(pixels[index])
        )
        return cls(rows, torch.from_numpy(dataset.labels[index]))

    @property
    def images(self) -> bool:
        """Images (augmented in training), not a backbone's features."""
        return self.pixels.dtype in (np.uint8, torch.uint8)

    def to(self, device: torch.device) -> Tensors:
        """Moved once to the device: batches are then cut and augmented there. Rows of the
        cache stay where they are on the CPU, and go to a GPU a chunk at a time."""
        if isinstance(self.pixels, CachedRows):
            if device.type != "cpu":
                self.pixels = _to_device(self.pixels, device)
        else:
            self.pixels = self.pixels.to(device)
        self.labels = self.labels.to(device)
        return self


def _to_device(rows: CachedRows, device: torch.device, chunk: int = 1024) -> torch.Tensor:
    out = torch.empty(rows.shape, dtype=torch.from_numpy(rows[:0]).dtype, device=device)
    for start in range(0, len(rows), chunk):
        out[start : start + chunk] = torch.from_numpy(rows[start : start + chunk]).to(device)
    return out


def load_data(
    data_dir: Path,
    config: TrainConfig,
    cache_dir: str | os.PathLike | None,
    load: Loader = load_images,
) -> Dataset:
    """The decoded data set at the recipe's image size (`load`: pixels, or features), its
    summary logged."""
    dataset = load_dataset(
        data_dir,
        config.image_size,
        cache_dir,
        config.keep_conflicts,
        config.max_pixels,
        load,
        every_class=True,
    )
    log.info(
        "%s: %d images in %d classes (%s), %d skipped, %d decoded now",
        data_dir,
        len(dataset.labels),
        len(dataset.classes),
        ", ".join(f"{k} {v}" for k, v in dataset.class_counts().items()),
        len(dataset.skipped),
        dataset.decoded_now,
    )
    report = dataset.report
    log.info(
        "%d groups of duplicates (copies kept on one side of the split), %d label "
        "conflicts (%s): imgclass scan lists them",
        len(report.duplicates),
        len(report.conflicts),
        "kept" if report.conflicts_kept else "left out",
    )
    return dataset


def new_model(config: TrainConfig, num_classes: int, device: Device) -> nn.Module:
    """The recipe's model (pretrained weights loaded), seeded by the `init` stream, on device."""
    torch.manual_seed(runtime.stream_seed(config.seed, "init"))
    model = build_model(
        config.model, num_classes, config.image_size, config.dropout, config.pretrained
    )
    return model.to(device.torch_device, memory_format=torch.channels_last)


def class_weights(
    labels: torch.Tensor, num_classes: int, config: TrainConfig, device: Device
) -> torch.Tensor | None:
    """class_weights "auto": n / (classes x count) per class, scikit-learn's "balanced" rule, so
    every class weighs as much in the loss as if the classes were equally frequent."""
    if config.class_weights == "none":
        return None
    counts = torch.bincount(labels.cpu(), minlength=num_classes).float()
    weights = len(labels) / (num_classes * counts.clamp_min(1))
    log.info("class weights: %s", ", ".join(f"{w:.3f}" for w in weights.tolist()))
    return weights.to(device.torch_device)


def training_loss(
    config: TrainConfig, labels: torch.Tensor, num_classes: int, device: Device
) -> nn.Module:
    """The recipe's training loss: cross-entropy with its class weights and label smoothing."""
    return nn.CrossEntropyLoss(
        weight=class_weights(labels, num_classes, config, device),
        label_smoothing=config.label_smoothing,
    )


def augmentation(
    config: TrainConfig, generator: torch.Generator, num_classes: int, data: Tensors
) -> TrainAugment | None:
    """The recipe's training augmentation of images; None on cached features (used as is)."""
    return TrainAugment(config.augment, generator, num_classes) if data.images else None


def optimiser_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: Device,
    scaler: torch.amp.GradScaler,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step -> (loss, logits), detached: the forward pass under the device's
    autocast, the loss in fp32 (y: labels, or probabilities under MixUp/CutMix), the backward
    pass through the grad scaler (fp16 loss scaling; a no-op in other precisions), the step."""
    with device.autocast():
        logits = model(x)
        loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


@dataclass
class TrainingSetup:
    config: TrainConfig
    dataset: Dataset  # its pixels are released: `train` and `val` hold them
    split: Split
    device: Device
    train: Tensors
    val: Tensors
    test: Tensors | None = None  # data split already, with a test folder: reported at the end
    backbone: Backbone | None = None  # cached_features: the backbone of the features
    data_dir: Path | None = None  # where the data came from, and its cache (with_images)
    cache_dir: str | os.PathLike | None = None

    @property
    def num_classes(self) -> int:
        return len(self.dataset.classes)

    def new_model(self, config: TrainConfig | None = None) -> nn.Module:
        """The recipe's model (or another config's: a tune trial), seeded, on the device; on
        cached features the backbone's head alone (a new one, seeded as the backbone's)."""
        config = config or self.config
        if self.backbone is None:
            return new_model(config, self.num_classes, self.device)
        dropout = (
            config.dropout
            if config.dropout is not None
            else getattr(self.backbone.net, "drop_rate", 0.0)
        )
        return FeatureHead(self.backbone, dropout).to(self.device.torch_device)

    def with_images(self) -> TrainingSetup:
        """The same data and split as decoded images, for fine-tuning after a head on cached
        features (the pixel cache holds them: the features were extracted from them)."""
        dataset = load_data(self.data_dir, self.config, self.cache_dir)
        if dataset.sha256 != self.dataset.sha256:
            raise DataError(
                f"{self.data_dir}: its images changed while training (not those "
                "whose features the head was trained on)"
            )
        train_data, val_data, test_data, on_device = _tensors(dataset, self.split, self.device)
        log.info("fine-tuning on the images, %s", _where(self.device, on_device, train_data))
        return dataclasses.replace(
            self, dataset=dataset, train=train_data, val=val_data, test=test_data, backbone=None
        )

    def with_activations(self, backbone: Backbone, stages: int) -> tuple[TrainingSetup, TopStages]:
        """The same data and split as the activations that the backbone's last `stages` stages
        take (computed once from the pixel cache, kept in the training precision), each
        training image's mirror beside it; and those stages as the model that trains on them
        (in place, in the backbone)."""
        top = TopStages(backbone, stages)
        images = self.with_images()
        started = time.perf_counter()

        def activations(side: Tensors, mirrored: bool) -> torch.Tensor:
            out = []
            for i in range(0, len(side.labels), ACTIVATION_BATCH):
                batch = to_float(torch.as_tensor(side.pixels[i : i + ACTIVATION_BATCH]))
                with self.device.autocast():
                    out.append(
                        top.below(backbone, batch.flip(3) if mirrored else batch).to(
                            self.device.amp or torch.float32
                        )
                    )
            return torch.cat(out)

        train = Tensors(
            torch.cat([activations(images.train, False), activations(images.train, True)]),
            images.train.labels.repeat(2),
        )
        val = Tensors(activations(images.val, False), images.val.labels)
        test = (
            Tensors(activations(images.test, False), images.test.labels)
            if images.test is not None
            else None
        )
        log.info(
            "fine-tuning the last %d stages on the activations below them: %d training "
            "rows (each image and its mirror), %d validation, %s each, in %.1f s",
            stages,
            len(train.labels),
            len(val.labels),
            "x".join(map(str, val.pixels.shape[1:])),
            time.perf_counter() - started,
        )
        return dataclasses.replace(self, train=train, val=val, test=test, backbone=backbone), top

    def model_to_save(self, trained: nn.Module) -> nn.Module:
        """What the run keeps: the trained model, or on cached features or activations the
        backbone with the trained layers put back (one model from pixels to classes)."""
        if self.backbone is None:
            return trained
        trained.install(self.backbone)
        return self.backbone

    def loss(self, config: TrainConfig | None = None) -> nn.Module:
        return training_loss(
            config or self.config, self.train.labels, self.num_classes, self.device
        )


def setup_training(
    data_dir: Path,
    config: TrainConfig,
    cache_dir: str | os.PathLike | None,
    device: Device,
    *,
    ranks: Context = distributed.SINGLE,
    split: Callable[[Dataset], Split] | None = None,
    progress: bool = False,
) -> TrainingSetup:
    """The data of `data_dir` decoded at the recipe's size, split (the recipe's seeded,
    duplicate-aware stratified split, or `split(dataset)`: a resumed run's), as tensors on the
    device where they take at most its share of free memory (streamed from host memory else).
    Under torchrun each machine's local rank 0 decodes into its cache first, the other ranks
    read it. cached_features: the pretrained backbone is built (once the classes are known) and
    its features loaded."""
    backbones: list[Backbone] = []
    load: Loader = load_images
    if config.cached_features:

        def load(
            manifest: Manifest, size: int, cache: str | os.PathLike | None, max_pixels: int
        ) -> DecodedImages:
            backbones.append(new_model(config, len(manifest.classes), device))
            return load_features(
                manifest,
                size,
                cache,
                max_pixels,
                model=backbones[-1],
                device=device,
                progress=progress and ranks.is_main,
            )

    with ranks.local_main_first():
        dataset = load_data(data_dir, config, cache_dir, load)
    _check_same_data(dataset, ranks)
    if split is not None:
        chosen = split(dataset)
    elif dataset.sides:  # split already: its folders are the sides (val_split is not used)
        chosen = given_split(dataset)
    else:
        chosen = stratified_split(
            dataset.labels,
            config.val_split,
            config.seed,
            groups=dataset.sha256,
            classes=dataset.classes,
        )
    train_data, val_data, test_data, on_device = _tensors(dataset, chosen, device)
    processes = f", {ranks.world_size} processes" if ranks.world_size > 1 else ""
    log.info(
        "training on %d images, validating on %d%s; %s, %s, %d threads%s; %s %s",
        len(chosen.train),
        len(chosen.val),
        f", testing on {len(chosen.test)} at the end" if len(chosen.test) else "",
        device.torch_device,
        device.precision,
        torch.get_num_threads(),
        processes,
        "images" if train_data.images else "features",
        _where(device, on_device, train_data),
    )
    return TrainingSetup(
        config,
        dataset,
        chosen,
        device,
        train_data,
        val_data,
        test=test_data,
        backbone=backbones[-1] if backbones else None,
        data_dir=data_dir,
        cache_dir=cache_dir,
    )


def _check_same_data(dataset: Dataset, ranks: Context) -> None:
    """DataError on every rank when any rank loaded other data than rank 0 (other classes,
    files or contents, in another order): without a shared disk each machine reads its own copy,
    and the ranks would split, shuffle and batch different images under the same indices."""
    if not ranks.active:
        return
    hashed = hashlib.sha256(dataset.labels.tobytes())
    for texts in (dataset.classes, dataset.paths, dataset.sha256):  # streamed: no copy of them
        for text in texts:  # (a path may hold a lone surrogate: a name that is not UTF-8)
            hashed.update(text.encode("utf-8", "surrogatepass") + b"\0")
        hashed.update(b"\1")
    digest = hashed.hexdigest()
    differs = ranks.on_main(lambda: digest) != digest
    mismatched = int(ranks.sum([differs])[0])
    if mismatched:
        raise DataError(
            f"{dataset.root}: {mismatched} of {ranks.world_size} processes loaded other data than "
            f"rank 0 (other classes, files or contents{'; this one among them' if differs else ''})"
            ": every machine needs the same files at this path (copy them, or share a disk)"
        )


def _tensors(
    dataset: Dataset, split: Split, device: Device
) -> tuple[Tensors, Tensors, Tensors | None, bool]:
    """The sides of the split as tensors (test: None when the data has none), on the device
    where they take at most its share of free memory (True), else in host memory; the
    dataset's own array is released."""
    sides = [Tensors.take(dataset, index) for _, index in split.sides()]
    dataset.pixels = dataset.pixels[:0]  # the sides hold what they need: not kept twice
    on_device = device.holds(sum(side.pixels.nbytes for side in sides))
    if on_device:
        sides = [side.to(device.torch_device) for side in sides]
    return sides[0], sides[1], sides[2] if len(sides) > 2 else None, on_device


def _where(device: Device, on_device: bool, data: Tensors) -> str:
    if isinstance(data.pixels, CachedRows):
        return "read from the cache (memory-mapped)"
    return f"kept on {device.torch_device}" if on_device else "streamed from host memory"
