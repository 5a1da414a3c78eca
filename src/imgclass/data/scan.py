"""A class-folder tree -> Manifest: each file with its label and content hash, each skip explained.

Class order is the sorted class-folder names, fixed here and stored with every model. Files are
not filtered by extension (images are recognised by content when decoded); OS junk is skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclass.data.ingest import is_os_junk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestItem:
    path: str  # relative to the data root, POSIX separators
    label: int  # index into Manifest.classes
    sha256: str  # of the file's bytes: the cache key, and what finds duplicates


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class Manifest:
    root: Path
    classes: list[str]
    items: list[ManifestItem]
    skipped: list[Skipped] = field(default_factory=list)

    def labels(self) -> np.ndarray:
        return np.array([item.label for item in self.items], dtype=np.int64)

    def absolute(self, item: ManifestItem) -> Path:
        return self.root / item.path


class DataError(ValueError):
    """A data folder that cannot be used as a whole (names the folder and the reason)."""


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def scan_folder(root: str | os.PathLike) -> Manifest:
    """List the images of a class-folder tree (`root/<class>/**/<file>`)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    skipped: list[Skipped] = []
    class_dirs = []
    for entry in sorted(root.iterdir()):
        if is_os_junk([entry.name]):
            continue
        if entry.is_dir():
            class_dirs.append(entry)
        else:
            skipped.append(Skipped(entry.name, "not inside a class folder"))
    if not class_dirs:
        raise DataError(f"{root}: no class folders found (expected {root}/<class>/<images>)")
    classes = [d.name for d in class_dirs]
    items: list[ManifestItem] = []
    for label, class_dir in enumerate(class_dirs):
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not is_os_junk([d]))
            for name in sorted(filenames):
                path = Path(dirpath, name)
                rel = path.relative_to(root).as_posix()
                if is_os_junk([name]):
                    skipped.append(Skipped(rel, "OS junk file"))
                    continue
                try:
                    digest = file_sha256(path)
                except OSError as err:
                    skipped.append(Skipped(rel, f"cannot read file ({err.strerror or err})"))
                    continue
                items.append(ManifestItem(rel, label, digest))
    for class_name, count in zip(classes, np.bincount([i.label for i in items],
                                                      minlength=len(classes))):
        if count == 0:
            log.warning("%s: class folder %r holds no files", root, class_name)
    return Manifest(root, classes, items, skipped)
