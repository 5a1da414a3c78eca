"""A CSV of `path,label` rows (the layout of Kaggle's and Hugging Face's image data sets) ->
Manifest, as a class-folder tree gives one (data/scan.py): every path relative to the CSV's own
folder, classes the sorted labels, each row that cannot be used skipped with its row number and
the reason, and the same file listed under two labels a label conflict (every row of it left out).

The first row is a header when its cells name the columns (`path`/`file_name`/`image`/...,
`label`/`class`/...: any order, other columns ignored); otherwise every row is `path,label`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path, PurePosixPath

from imgclass.data.images import unreadable
from imgclass.data.scan import DataError, Manifest, ManifestItem, Skipped
from imgclass.data.walk import REASON_LINK_OUTSIDE, text_name

LABELS_FILE_SUFFIX = ".csv"
PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "image", "image_path")
LABEL_COLUMNS = ("label", "class", "category", "target")


def is_labels_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == LABELS_FILE_SUFFIX and Path(path).is_file()


def data_root(data: str | os.PathLike) -> Path:
    """The folder a data set's paths are relative to: the folder itself, or a CSV's folder
    (also when the CSV is gone)."""
    data = Path(data)
    return data.parent if data.suffix.lower() == LABELS_FILE_SUFFIX and not data.is_dir() else data


def scan_labels_file(labels_file: str | os.PathLike) -> Manifest:
    """The images a CSV of `path,label` rows lists, relative to its folder (the Manifest root)."""
    labels_file = Path(labels_file)
    name = text_name(str(labels_file))
    try:
        with open(labels_file, encoding="utf-8-sig", newline="") as stream:
            rows = list(csv.reader(stream))
    except UnicodeDecodeError as err:
        raise DataError(f"{name}: not UTF-8 text (byte {err.start})") from err
    except csv.Error as err:
        raise DataError(f"{name}: not a CSV file ({err})") from err
    path_column, label_column, first = _columns(rows[0] if rows else [])
    root = labels_file.parent
    root_real = Path(os.path.realpath(root))
    listed: dict[str, tuple[int, str]] = {}  # path -> (row number, label) of its first row
    conflicts: set[str] = set()  # paths listed under two labels: every row of them left out
    skipped: list[Skipped] = []
    for number, row in enumerate(rows[first:], start=first + 1):
        if not any(cell.strip() for cell in row):
            continue  # blank lines
        where = f"row {number} of {labels_file.name}"
        if len(row) <= max(path_column, label_column):
            skipped.append(
                Skipped(
                    f"{labels_file.name}:{number}", f"{where}: {len(row)} columns, not path,label"
                )
            )
            continue
        path, label = row[path_column].strip(), row[label_column].strip()
        reason = _unusable(path, label, root, root_real)
        if reason is None and path in listed:
            before, label_before = listed[path]
            if label == label_before:
                reason = f"listed again (row {before})"
            else:
                conflicts.add(path)
                reason = f"label conflict: {label_before!r} in row {before}, {label!r} here"
        if reason is not None:
            skipped.append(Skipped(path or f"{labels_file.name}:{number}", f"{where}: {reason}"))
        else:
            listed[path] = (number, label)
    skipped += [
        Skipped(
            path,
            f"row {number} of {labels_file.name}: label conflict: listed again with another label",
        )
        for path, (number, _) in listed.items()
        if path in conflicts
    ]
    kept = {path: row for path, row in listed.items() if path not in conflicts}
    if not kept and not skipped:
        raise DataError(
            f"{name}: no rows (expected path,label rows, paths relative to {text_name(str(root))})"
        )
    classes = sorted({label for _, label in kept.values()})
    index = {name: i for i, name in enumerate(classes)}
    items: list[ManifestItem] = []
    for path, (number, label) in kept.items():
        try:
            items.append(ManifestItem.read(root / path, path, index[label]))
        except OSError as err:
            skipped.append(Skipped(path, f"row {number} of {labels_file.name}: {unreadable(err)}"))
    if not classes:
        raise DataError(
            f"{name}: no usable row ({len(skipped)} skipped; the first: "
            f"{skipped[0].path}: {skipped[0].reason})"
        )
    return Manifest(root, classes, items, skipped)


def _columns(header: list[str]) -> tuple[int, int, int]:
    """(path column, label column, first data row): named by a header row, else 0, 1, 0."""
    names = [cell.strip().lower() for cell in header]
    path_column = next((i for i, cell in enumerate(names) if cell in PATH_COLUMNS), None)
    label_column = next((i for i, cell in enumerate(names) if cell in LABEL_COLUMNS), None)
    if path_column is None or label_column is None:
        return 0, 1, 0
    return path_column, label_column, 1


def _unusable(path: str, label: str, root: Path, root_real: Path) -> str | None:
    """Why a row's file cannot be used, or None."""
    if not path:
        return "no path"
    if not label:
        return "no label"
    parts = PurePosixPath(path.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts or Path(path).is_absolute():
        return f"a path outside the CSV's folder ({text_name(str(root))})"
    file = root / path
    if not file.is_file():
        return "no such file" if not file.exists() else "not a regular file"
    real = Path(os.path.realpath(file))
    if not real.is_relative_to(root_real):
        return REASON_LINK_OUTSIDE
    return None
