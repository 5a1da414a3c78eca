"""Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix of a model."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgclass import atomic, rundir
from imgclass.checkpoint import load_model
from imgclass.data.batches import iterate_batches
from imgclass.data.cache import CachedRows
from imgclass.data.dataset import Dataset, load_dataset
from imgclass.data.scan import DataError
from imgclass.data.split import saved_split
from imgclass.plots import plot_confusion
from imgclass.runtime import Device

log = logging.getLogger(__name__)


@dataclass
class ClassificationMetrics:
    classes: list[str]
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]  # class -> precision, recall, f1, support
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    count: int

    def to_dict(self) -> dict:
        return asdict(self)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is (scikit-learn's zero_division=0)."""
    out = np.zeros(len(numerator))
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]
) -> ClassificationMetrics:
    """The metrics of labels in range(len(classes)).

    The definitions are scikit-learn's (precision_recall_fscore_support with zero_division=0,
    confusion_matrix), computed from the confusion matrix with numpy: scikit-learn's import
    would add ~75 MB to every training process (tests/test_evaluation.py compares the two).
    """
    n = len(classes)
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    confusion = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    hits, predicted, support = np.diag(confusion), confusion.sum(0), confusion.sum(1)
    precision, recall = _ratio(hits, predicted), _ratio(hits, support)
    f1 = _ratio(2 * hits, predicted + support)
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support)
    }
    present = support > 0  # classes absent from this data do not drag macro-F1 down
    return ClassificationMetrics(
        classes=list(classes),
        accuracy=float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        per_class=per_class,
        confusion=confusion.tolist(),
        count=len(y_true),
    )


class Probabilities(nn.Module):
    """A model's logits -> softmax probabilities, optionally averaged with the mirror image's.

    The one definition of a prediction: predict_proba runs it, and the ONNX export is this module,
    so both give the same numbers.
    """

    def __init__(self, model: nn.Module, tta_flip: bool = False):
        super().__init__()
        self.model = model
        self.tta_flip = tta_flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(self.model(x).float(), dim=1)
        if self.tta_flip:  # the mirror image is as plausible a view: average the two
            probabilities = (probabilities + torch.softmax(self.model(x.flip(3)).float(), 1)) / 2
        return probabilities


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    pixels: np.ndarray | torch.Tensor | CachedRows,
    device: Device,
    batch_size: int = 64,
    tta_flip: bool = False,
) -> np.ndarray:
    """Softmax probabilities (N, classes) of uint8 (N, H, W, 3) images, validation preprocessing
    (the decode cache's rows read a batch at a time)."""
    model.eval()
    head = Probabilities(model, tta_flip)
    if not isinstance(pixels, CachedRows):
        pixels = torch.as_tensor(pixels)
    out = []
    for x, _ in iterate_batches(pixels, torch.zeros(len(pixels)), batch_size):
        with device.autocast():
            probabilities = head(x.to(device.torch_device))
        out.append(probabilities.cpu())
    n_classes = out[0].shape[1] if out else 0
    return torch.cat(out).numpy() if out else np.zeros((0, n_classes), np.float32)


def write_metrics(metrics: ClassificationMetrics, folder: Path, prefix: str = "") -> None:
    """`<prefix>confusion.json`, `<prefix>confusion.png` and `<prefix>evaluation.json`."""
    atomic.write_json(folder / f"{prefix}evaluation.json", metrics.to_dict())
    atomic.write_json(
        folder / f"{prefix}confusion.json",
        {"classes": metrics.classes, "matrix": metrics.confusion},
    )
    plot_confusion(np.array(metrics.confusion), metrics.classes, folder / f"{prefix}confusion.png")


def validation_set(
    run: Path, image_size: int, classes: list[str], cache_dir: str | os.PathLike | None = None
) -> tuple[Dataset, np.ndarray]:
    """A run's data loaded again (through the cache) and the indices of its validation split in
    it; files missing or changed since training are left out (logged)."""
    config = atomic.read_json(run / rundir.CONFIG)
    dataset = load_dataset(config["data_dir"], image_size, cache_dir)
    if dataset.classes != classes:
        raise DataError(
            f"{dataset.root}: classes changed since training ({dataset.classes} vs {classes})"
        )
    split, changed = saved_split(run / rundir.SPLIT, dataset)
    if changed:
        log.warning(
            "%d validation or training files of %s are missing or changed since training: left out",
            len(changed),
            dataset.root,
        )
    return dataset, split.val


def evaluate(
    run: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    tta: bool | None = None,
) -> ClassificationMetrics:
    """Metrics of a run's model on its own validation split, or on another class-folder tree.

    tta: average each image's and its mirror's probabilities (default: as the run validated).

    Writes evaluation.json, confusion.json and confusion.png into `out` (default: the run
    directory for its own split, RUN/eval-<folder name> for other data).
    """
    run = Path(run)
    loaded = load_model(run)
    classes = loaded.meta.classes
    if data_dir is None:
        dataset, subset = validation_set(run, loaded.meta.image_size, classes, cache_dir)
        pixels, labels = dataset.pixels[subset], dataset.labels[subset]
        folder = Path(out) if out else run
    else:
        dataset = load_dataset(data_dir, loaded.meta.image_size, cache_dir)
        unknown = sorted(set(dataset.classes) - set(classes))
        if unknown:
            raise DataError(
                f"{dataset.root}: classes unknown to the model: {', '.join(unknown)} "
                f"(the model knows {', '.join(classes)})"
            )
        remap = np.array([classes.index(name) for name in dataset.classes], dtype=np.int64)
        pixels, labels = dataset.pixels, remap[dataset.labels]
        folder = Path(out) if out else run / f"eval-{dataset.root.resolve().name}"
    folder.mkdir(parents=True, exist_ok=True)
    tta = loaded.meta.tta_flip if tta is None else tta
    probabilities = predict_proba(loaded.model, pixels, Device.select(), tta_flip=tta)
    metrics = classification_metrics(labels, probabilities.argmax(axis=1), classes)
    write_metrics(metrics, folder)
    return metrics
