"""A class-folder tree -> decoded images and labels: scan, then the decode cache, skips reported."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclass.data.cache import load_images
from imgclass.data.scan import Manifest, Skipped, scan_folder

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    pixels: np.ndarray  # (N, H, W, 3) uint8: only the files that decoded
    labels: np.ndarray  # (N,) int64
    paths: list[str]  # (N,) relative to root
    sha256: list[str]  # (N,)
    skipped: list[Skipped]  # junk, unreadable and undecodable files, each with its reason
    decoded_now: int  # 0 when everything came from the cache

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return dict(zip(self.classes, counts.tolist()))


def load_dataset(data_dir: str | os.PathLike, image_size: int,
                 cache_dir: str | os.PathLike | None = None) -> Dataset:
    manifest = scan_folder(data_dir)
    return decode_manifest(manifest, image_size, cache_dir)


def decode_manifest(manifest: Manifest, image_size: int,
                    cache_dir: str | os.PathLike | None = None) -> Dataset:
    decoded = load_images(manifest, image_size, cache_dir)
    skipped = list(manifest.skipped)
    for index, reason in decoded.failures.items():
        skipped.append(Skipped(manifest.items[index].path, reason))
    for skip in skipped:
        log.warning("skipped %s: %s", manifest.root / skip.path, skip.reason)
    kept = [item for item, ok in zip(manifest.items, decoded.ok) if ok]
    return Dataset(
        root=manifest.root,
        classes=manifest.classes,
        pixels=decoded.pixels,
        labels=np.array([item.label for item in kept], dtype=np.int64),
        paths=[item.path for item in kept],
        sha256=[item.sha256 for item in kept],
        skipped=skipped,
        decoded_now=decoded.decoded_now,
    )
