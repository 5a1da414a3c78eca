"""A class-folder tree or a CSV of path,label rows -> decoded images and labels: scan, then the
decode cache, skips reported."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclass.data.cache import DecodedImages, load_images
from imgclass.data.images import DEFAULT_MAX_PIXELS
from imgclass.data.labels_file import is_labels_file, scan_labels_file
from imgclass.data.scan import (
    Manifest,
    ScanReport,
    Skipped,
    classes_without_images,
    scan_folder,
)

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    pixels: np.ndarray  # (N, H, W, 3) uint8: only the files that decoded (or, loaded by
    #                     data/features.py, their (N, num_features) float32 backbone features)
    labels: np.ndarray  # (N,) int64
    paths: list[str]  # (N,) relative to root
    sha256: list[str]  # (N,)
    skipped: list[Skipped]  # junk, unreadable, conflicting, undecodable files, with reasons
    decoded_now: int  # 0 when everything came from the cache
    report: ScanReport  # images per class, skips, duplicates and label conflicts (scan.json)
    sides: dict[str, str] = field(default_factory=dict)  # split already: Manifest.sides

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return dict(zip(self.classes, counts.tolist()))


# (manifest, image size, cache dir, max_pixels=) -> the rows of its items: the decoded pixels
# (load_images), or a backbone's features of them (data/features.py)
Loader = Callable[..., DecodedImages]


def load_dataset(
    data_dir: str | os.PathLike,
    image_size: int,
    cache_dir: str | os.PathLike | None = None,
    keep_conflicts: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    load: Loader = load_images,
    every_class: bool = False,
) -> Dataset:
    """data_dir: a class-folder tree (maybe split already), or a .csv file of path,label rows.

    keep_conflicts: keep contents found under two classes (default: skip every copy).

    max_pixels: images with more pixels (width x height) are skipped, never decoded.
    load: what the rows are (default: the decoded pixels).
    every_class: a class without a file to use is an error before anything is decoded or
        extracted (training's rule, checked again on what decodes when the data is split).
    """
    manifest = scan_labels_file(data_dir) if is_labels_file(data_dir) else scan_folder(data_dir)
    return decode_manifest(
        manifest, image_size, cache_dir, keep_conflicts, max_pixels, load, every_class
    )


def decode_manifest(
    manifest: Manifest,
    image_size: int,
    cache_dir: str | os.PathLike | None = None,
    keep_conflicts: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    load: Loader = load_images,
    every_class: bool = False,
) -> Dataset:
    used = manifest if keep_conflicts else manifest.without_conflicts()
    used = used.within(max_pixels)
    if every_class and (empty := set(range(len(manifest.classes))) - {i.label for i in used.items}):
        raise classes_without_images([manifest.classes[c] for c in sorted(empty)])
    decoded = load(used, image_size, cache_dir, max_pixels=max_pixels)
    skipped = list(used.skipped)
    for index, reason in decoded.failures.items():
        skipped.append(Skipped(used.items[index].path, reason))
    for skip in skipped:
        log.warning("skipped %s: %s", manifest.root / skip.path, skip.reason)
    kept = [item for item, ok in zip(used.items, decoded.ok) if ok]
    return Dataset(
        root=manifest.root,
        classes=manifest.classes,
        pixels=decoded.pixels,
        labels=np.array([item.label for item in kept], dtype=np.int64),
        paths=[item.path for item in kept],
        sha256=[item.sha256 for item in kept],
        skipped=skipped,
        decoded_now=decoded.decoded_now,
        report=ScanReport.build(manifest, [item.label for item in kept], skipped, keep_conflicts),
        sides=manifest.sides,
    )
