"""A run's validation probabilities, kept for the report: `val_predictions.csv`, and calibration.

train writes the file at its end; for older runs `predict_validation` recomputes it from the model
on the validation split as `evaluate` loads it.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclass import atomic, rundir
from imgclass.data.labels_file import data_root

log = logging.getLogger(__name__)

VAL_PREDICTIONS = "val_predictions.csv"
CALIBRATION_BINS = 10  # equal-width confidence bins of the reliability diagram and the ECE
_FIXED_COLUMNS = ["path", "true", "predicted"]  # then one probability column per class


@dataclass
class ValPredictions:
    """The model's probabilities for each validation image, classes in label order."""

    classes: list[str]
    paths: list[str]  # relative to the data folder, as in split.json
    labels: np.ndarray  # (N,) int64: the true class
    probabilities: np.ndarray  # (N, classes) float

    def write(self, run_dir: Path) -> None:
        """val_predictions.csv: path, true and predicted class, then one column per class."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(_FIXED_COLUMNS + self.classes)
        for path, label, row in zip(self.paths, self.labels, self.probabilities):
            writer.writerow(
                [
                    path,
                    self.classes[label],
                    self.classes[int(row.argmax())],
                    *(f"{p:.6g}" for p in row),
                ]
            )
        atomic.write_text(run_dir / VAL_PREDICTIONS, buffer.getvalue())

    @classmethod
    def read(cls, path: Path, classes: list[str]) -> ValPredictions:
        """ValueError naming the file when it does not fit the model's classes."""
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0] != _FIXED_COLUMNS + classes:
            raise ValueError(f"{path}: header is not path, true, predicted, {', '.join(classes)}")
        try:
            return cls(
                classes,
                [r[0] for r in rows[1:]],
                np.array([classes.index(r[1]) for r in rows[1:]], dtype=np.int64),
                np.array([[float(p) for p in r[3:]] for r in rows[1:]], dtype=np.float64).reshape(
                    len(rows) - 1, len(classes)
                ),
            )
        except (ValueError, IndexError) as err:
            raise ValueError(f"{path}: malformed row ({err})") from err


@dataclass
class Calibration:
    ece: float  # expected calibration error: mean |accuracy - confidence|, weighted by bin size
    edges: list[float]  # bin edges over the confidence (probability of the predicted class)
    confidence: list[float]  # mean confidence per bin (0 for an empty bin)
    accuracy: list[float]  # share of correct predictions per bin (0 for an empty bin)
    count: list[int]


def calibration(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS
) -> Calibration:
    """Confidence against accuracy in equal-width bins (Guo et al. 2017)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_conf = np.bincount(which, confidence, bins) / np.maximum(count, 1)
    accuracy = np.bincount(which, correct.astype(float), bins) / np.maximum(count, 1)
    ece = float(np.sum(count * np.abs(accuracy - mean_conf)) / max(len(labels), 1))
    return Calibration(ece, edges.tolist(), mean_conf.tolist(), accuracy.tolist(), count.tolist())


def data_folder(config: dict) -> tuple[Path, str | None]:
    """The run's data folder and, when it is gone, why no image of it can be shown."""
    root = data_root(config["data_dir"])
    return root, None if root.is_dir() else f"data folder {root} not found"


def predict_validation(run_dir: Path) -> ValPredictions:
    """The model's probabilities for the validation files of split.json, as `evaluate` computes
    them (the data loaded again through the cache, the validation preprocessing exactly).

    Files missing or changed since training are left out (logged); FileNotFoundError when the
    data folder is gone.
    """
    from imgclass.checkpoint import load_model  # loads the model: only when the CSV is absent
    from imgclass.evaluation import predict_proba, validation_set
    from imgclass.runtime import Device

    config = atomic.read_json(run_dir / rundir.CONFIG)
    _, gone = data_folder(config)
    if gone:
        raise FileNotFoundError(gone)
    loaded = load_model(run_dir)
    classes = loaded.meta.classes
    dataset, subset = validation_set(run_dir, loaded.meta.image_size, classes)
    probabilities = predict_proba(
        loaded.model, dataset.pixels[subset], Device.select(), tta_flip=loaded.meta.tta_flip
    )
    return ValPredictions(
        classes,
        [dataset.paths[i] for i in subset],
        dataset.labels[subset],
        probabilities.astype(np.float64),
    )
