"""Stratified, seeded train/validation split, saved with the run as file paths."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from imgclass.data.scan import DataError
from imgclass.runtime import stream_seed


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # indices into the decodable images, sorted
    val: np.ndarray


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> Split:
    """Each class contributes about val_fraction of its images to validation."""
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if len(present) < 2:
        raise DataError(f"need at least 2 classes with images to train, found {len(present)}")
    if present.min() < 2:
        raise DataError("every class needs at least 2 images (one for training, one for "
                        f"validation); the smallest has {present.min()}")
    indices = np.arange(len(labels))
    n_val = max(round(val_fraction * len(labels)), len(present))  # at least one per class
    train, val = train_test_split(indices, test_size=n_val, stratify=labels,
                                  random_state=stream_seed(seed, "split") % 2**32)
    return Split(np.sort(train), np.sort(val))
