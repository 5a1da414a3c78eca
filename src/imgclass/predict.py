"""Predictor: a trained run -> top-k labels with probabilities for image files, folders or arrays.

Preprocessing is the validation path exactly: decode_image (squash to the model's size) and the
batches' to_float; nothing is re-implemented here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imgclass import runtime
from imgclass.checkpoint import load_model
from imgclass.data.batches import to_float
from imgclass.data.images import ImageDecodeError, decode_image
from imgclass.data.ingest import is_os_junk
from imgclass.evaluation import predict_proba
from imgclass.runtime import Device


@dataclass
class Prediction:
    path: str
    labels: list[str] = field(default_factory=list)  # best first
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None  # why the file was skipped; labels are empty then

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None


def expand_paths(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files as given; folders walked recursively (sorted, OS junk left out)."""
    for path in map(Path, paths):
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not is_os_junk([d]))
                for name in sorted(filenames):
                    if not is_os_junk([name]):
                        yield Path(dirpath, name)
        else:
            yield path


class Predictor:
    """Load once, predict many: `Predictor("runs/x").predict(["a.jpg", "photos/"])`."""

    def __init__(self, run: str | os.PathLike, batch_size: int = 64):
        runtime.configure()
        loaded = load_model(run)
        self.model = loaded.model
        self.meta = loaded.meta
        self.classes = loaded.meta.classes
        self.batch_size = batch_size
        self.device = Device.select()
        self.model.to(self.device.torch_device)

    def load_pixels(self, path: str | os.PathLike) -> np.ndarray:
        """One file -> (H, W, 3) uint8, exactly as the training cache decodes it."""
        size = self.meta.image_size
        return decode_image(path, (size, size))

    def preprocess(self, path: str | os.PathLike) -> torch.Tensor:
        """One file -> the (1, 3, H, W) float tensor the model sees."""
        return to_float(torch.from_numpy(self.load_pixels(path))[None])

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 images of the model's size -> (N, classes) probabilities."""
        return predict_proba(self.model, pixels, self.device, self.batch_size,
                             tta_flip=self.meta.tta_flip)

    def predict(self, paths: Iterable[str | os.PathLike], top_k: int = 1) -> list[Prediction]:
        """Top-k labels for every image file (folders expanded); undecodable files carry .error."""
        top_k = max(1, min(top_k, len(self.classes)))
        results: list[Prediction] = []
        batch: list[tuple[Prediction, np.ndarray]] = []

        def flush() -> None:
            probabilities = self.predict_pixels(np.stack([pixels for _, pixels in batch]))
            for (prediction, _), row in zip(batch, probabilities):
                best = np.argsort(-row, kind="stable")[:top_k]
                prediction.labels = [self.classes[i] for i in best]
                prediction.probabilities = [float(row[i]) for i in best]
            batch.clear()

        for path in expand_paths(paths):
            prediction = Prediction(str(path))
            results.append(prediction)
            try:
                batch.append((prediction, self.load_pixels(path)))
            except ImageDecodeError as err:
                prediction.error = err.reason
            if len(batch) == self.batch_size:
                flush()
        if batch:
            flush()
        return results
