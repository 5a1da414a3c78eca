"""A class-folder tree -> Manifest: each file with its label and content hash, each skip explained.

Class order is the sorted class-folder names, fixed here and stored with every model; an empty
class folder keeps its place (no index shift). Files are not filtered by extension (images are
recognised by content when decoded). The tree is walked by `data/walk.py`'s rules (OS junk, links
only inside the data root, loops, run directories, names as text: the file on disk is still the
one opened, see `Manifest.absolute`).

Contents found more than once are reported (`SameContent`): copies within one class are exact
duplicates, all kept (the split keeps them on one side); one content under several classes is a
label conflict, left out by default (`Manifest.without_conflicts`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclass.data.images import header_size, too_many_pixels, unreadable
from imgclass.data.walk import REASON_LINK_LOOP, REASON_RUN_DIR, Child, Found, Walk, join, text_name
from imgclass.rundir import is_run_dir

log = logging.getLogger(__name__)

REASON_NOT_IN_CLASS = "not inside a class folder"
REASON_CONFLICT = "label conflict: same content also in class"
# a data root of these folders (train and a validation one at least), each of class folders, is
# split already (the layout of Keras, timm and Ultralytics): side -> the folder names it takes
SIDE_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


@dataclass(frozen=True)
class ManifestItem:
    path: str  # relative to the data root, POSIX separators, as text (non-UTF-8 bytes as \xNN)
    label: int  # index into Manifest.classes
    sha256: str  # of the file's bytes: the cache key, and what finds duplicates
    size: tuple[int, int] | None = None  # (width, height) from its header (None: none read)

    @classmethod
    def read(cls, file: Path, path: str, label: int) -> ManifestItem:
        """The item of `file` (known as `path`): its bytes hashed, its header's size; OSError
        when the file cannot be read."""
        content = file.read_bytes()
        return cls(path, label, hashlib.sha256(content).hexdigest(), header_size(content))


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class SameContent:
    """One content found at several paths: an exact duplicate, or a label conflict."""

    sha256: str
    paths: list[str]  # every copy, in manifest order
    classes: list[str]  # the classes holding a copy: one for a duplicate, several for a conflict


@dataclass
class Manifest:
    root: Path
    classes: list[str]
    items: list[ManifestItem]
    skipped: list[Skipped] = field(default_factory=list)
    disk_paths: dict[str, str] = field(default_factory=dict)  # item path -> name on disk, where
    #                                                         they differ (non-UTF-8 names)
    # split already: side ("train", "val", "test") -> its folder; an item's path starts with it
    sides: dict[str, str] = field(default_factory=dict)

    def absolute(self, item: ManifestItem) -> Path:
        return self.root / self.disk_paths.get(item.path, item.path)

    def same_content(self) -> list[SameContent]:
        """Every content held by two or more files, in order of first appearance."""
        by_sha: dict[str, list[ManifestItem]] = {}
        for item in self.items:
            by_sha.setdefault(item.sha256, []).append(item)
        return [
            SameContent(
                sha,
                [i.path for i in copies],
                [self.classes[label] for label in sorted({i.label for i in copies})],
            )
            for sha, copies in by_sha.items()
            if len(copies) > 1
        ]

    def within(self, max_pixels: int) -> Manifest:
        """This manifest with the images of more than max_pixels moved to skipped: the limit
        decided here from each file's header, so it gives the same data whatever a cache holds
        (decoded, or features of, images a higher limit let in)."""

        def large(item: ManifestItem) -> bool:
            return item.size is not None and item.size[0] * item.size[1] > max_pixels

        kept = [item for item in self.items if not large(item)]
        left_out = [
            Skipped(item.path, too_many_pixels(*item.size, max_pixels))
            for item in self.items
            if large(item)
        ]
        return Manifest(
            self.root, self.classes, kept, self.skipped + left_out, self.disk_paths, self.sides
        )

    def without_conflicts(self) -> Manifest:
        """This manifest with every copy of a content found under two classes moved to skipped."""
        conflicts = {
            group.sha256: group.classes for group in self.same_content() if len(group.classes) > 1
        }
        kept: list[ManifestItem] = []
        left_out: list[Skipped] = []
        for item in self.items:
            if item.sha256 in conflicts:
                others = [c for c in conflicts[item.sha256] if c != self.classes[item.label]]
                left_out.append(Skipped(item.path, f"{REASON_CONFLICT} {', '.join(others)}"))
            else:
                kept.append(item)
        return Manifest(
            self.root, self.classes, kept, self.skipped + left_out, self.disk_paths, self.sides
        )


@dataclass
class ScanReport:
    """What a data folder holds and what was left out of it, with every reason."""

    root: str
    classes: list[str]
    images: dict[str, int]  # usable images per class (decoded, conflicts applied), class order
    skipped: list[Skipped]  # every file not used, sorted by path
    duplicates: list[SameContent]  # same content, one class: all copies kept
    conflicts: list[SameContent]  # same content, several classes
    conflicts_kept: bool  # False (default): every copy of a conflicting content is skipped

    @classmethod
    def build(
        cls,
        manifest: Manifest,
        labels: Iterable[int],
        skipped: Iterable[Skipped],
        conflicts_kept: bool,
    ) -> ScanReport:
        """manifest: the scan before the conflict rule; labels: those of the images used."""
        counts = np.bincount(
            np.asarray(list(labels), dtype=np.int64), minlength=len(manifest.classes)
        )
        groups = manifest.same_content()
        return cls(
            root=text_name(str(manifest.root)),
            classes=list(manifest.classes),
            images=dict(zip(manifest.classes, counts.tolist())),
            skipped=sorted(skipped, key=lambda s: s.path),
            duplicates=[g for g in groups if len(g.classes) == 1],
            conflicts=[g for g in groups if len(g.classes) > 1],
            conflicts_kept=conflicts_kept,
        )

    @property
    def empty_classes(self) -> list[str]:
        return [name for name, count in self.images.items() if count == 0]

    def to_dict(self) -> dict:
        """The content of `scan.json`."""
        return {
            "root": self.root,
            "classes": self.classes,
            "images": self.images,
            "total_images": sum(self.images.values()),
            "empty_classes": self.empty_classes,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "duplicates": [
                {"sha256": g.sha256, "class": g.classes[0], "paths": g.paths}
                for g in self.duplicates
            ],
            "conflicts": [
                {"sha256": g.sha256, "classes": g.classes, "paths": g.paths} for g in self.conflicts
            ],
            "conflicts_kept": self.conflicts_kept,
        }


class DataError(ValueError):
    """A data folder that cannot be used as a whole (names the folder and the reason)."""


def classes_without_images(empty: list[str]) -> DataError:
    """Training's refusal of classes that no image teaches (an output nothing trains)."""
    return DataError(
        f"{'class' if len(empty) == 1 else 'classes'} without images: {', '.join(empty)}; add "
        f"images or remove the folder{'' if len(empty) == 1 else 's'} (imgclass scan lists them)"
    )


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def scan_folder(root: str | os.PathLike) -> Manifest:
    """List the images of a class-folder tree (`root/<class>/**/<file>`), or of one split
    already (`root/train/<class>/...`, `root/val/<class>/...`, maybe `root/test/<class>/...`:
    Manifest.sides; the classes are those of every side)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{text_name(str(root))}: not a folder")
    if is_run_dir(root):
        raise DataError(
            f"{text_name(str(root))}: {REASON_RUN_DIR} (give the folder of photos "
            "it was trained on)"
        )
    scan = _Scan(root)
    top = scan.folders(root, scan.root_real, "", frozenset())
    sides = _sides(top)
    if sides:
        class_dirs = {
            side: scan.folders(
                Path(top[folder].entry.path),
                top[folder].real,
                folder,
                frozenset({top[folder].real}),
            )
            for side, folder in sides.items()
        }
        classes = sorted({name for found in class_dirs.values() for name in found})
        log.info(
            "%s: split already: training on %s, validating on %s%s",
            text_name(str(root)),
            *(f"{sides[side]}/" for side in ("train", "val")),
            f", testing on {sides['test']}/" if "test" in sides else "",
        )
    else:
        class_dirs = {"": top}
        classes = list(top)
    if not classes:
        raise DataError(
            f"{text_name(str(root))}: no class folders found "
            f"(expected {text_name(str(root))}/<class>/<images>)"
        )
    for side, found in class_dirs.items():
        folder = sides.get(side, "")
        for name, child in found.items():
            scan.add_class(
                child, join(folder, name), join(folder, child.entry.name), classes.index(name)
            )
    counts = np.bincount([i.label for i in scan.items], minlength=len(classes))
    for class_name, count in zip(classes, counts):
        if count == 0:
            log.warning("%s: class folder %r holds no files", text_name(str(root)), class_name)
    return Manifest(root, classes, scan.items, scan.skipped, scan.disk_paths, sides)


def _sides(top: dict[str, Child]) -> dict[str, str]:
    """side -> folder when the root's folders are a train one, a validation one and maybe a
    test one (names as SIDE_FOLDERS, any case), and nothing else; {} for class folders."""
    sides: dict[str, str] = {}
    for name in top:
        side = next((s for s, names in SIDE_FOLDERS.items() if name.lower() in names), None)
        if side is None or side in sides:
            return {}
        sides[side] = name
    if not {"train", "val"} <= set(sides):
        return {}
    if not all(_holds_folders(top[folder].real) for folder in sides.values()):
        return {}  # a side of images directly: those are classes named train, val, ...
    return sides


def _holds_folders(folder: Path) -> bool:
    try:
        with os.scandir(folder) as listing:
            return any(entry.is_dir() for entry in listing)
    except OSError:
        return False


class _Scan(Walk):
    """One walk of a data root: what it found, what it skipped."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.items: list[ManifestItem] = []
        self.skipped: list[Skipped] = []
        self.disk_paths: dict[str, str] = {}

    def skip(self, found: Found) -> None:
        self.skipped.append(Skipped(found.rel, found.reason))

    def folders(
        self, folder: Path, folder_real: Path, rel: str, ancestors: frozenset[Path]
    ) -> dict[str, Child]:
        """The class folders directly in `folder`: name -> its Child; the files and what is no
        class there skipped with their reasons."""
        found: dict[str, Child] = {}
        for child in self.children(folder, folder_real, rel):
            if isinstance(child, Found):
                self.skip(child)
                continue
            path = join(rel, child.name)
            if child.real == self.root_real or child.real in ancestors:
                self.skip(Found(path, child.real, reason=REASON_LINK_LOOP))
            elif child.is_dir and is_run_dir(child.real):  # a run written into the data
                self.skip(Found(path, child.real, reason=REASON_RUN_DIR))
            elif child.is_dir:
                found[child.name] = child
            else:
                self.skip(Found(path, child.real, reason=REASON_NOT_IN_CLASS))
        return found

    def add_class(self, folder: Child, rel: str, disk_rel: str, label: int) -> None:
        """Add every file under a class folder; skip what the walk skips."""
        files = self.files(
            Path(folder.entry.path), folder.real, rel, disk_rel, frozenset({self.root_real})
        )
        for found in files:
            if found.reason is not None:
                self.skip(found)
                continue
            try:
                item = ManifestItem.read(found.path, found.rel, label)
            except OSError as err:
                self.skip(Found(found.rel, found.path, reason=unreadable(err)))
                continue
            if found.rel != found.disk_rel:
                self.disk_paths[found.rel] = found.disk_rel
            self.items.append(item)
