"""Atomic file writes: a hidden temporary file in the same folder, fsynced, then `os.replace`.

A reader (or a rerun after a crash) sees either the old file or the new one, never half of one:
the temporary file is fsynced before the rename, so even a power loss cannot leave a renamed but
empty file. `sync_dir=True` also fsyncs the folder, so that the rename itself survives a power
loss (one more fsync, about as slow as the first: used for the per-epoch checkpoint, not for
thousands of prepared images, where a lost rename only means the file is written again).
read_json() is the reader's side: a file that is not JSON is named in its error.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

PART = ".part"  # write_with's temporary files: .NAME.RANDOM.part beside NAME


def remove_partial(folder: Path) -> list[Path]:
    """Remove the temporary files that a process killed inside write_with left in `folder`
    and below (only where no other process writes: a run folder its lock holder owns)."""
    partial = [p for p in folder.rglob(f".*{PART}") if p.is_file()]
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def write_with(
    dest: str | os.PathLike, write: Callable[[Path], object], *, sync_dir: bool = False
) -> None:
    """Let `write(path)` fill a temporary file (a library's own save_file), then commit it.

    An OSError that names no file (a library writing into a file it opened: a full disk, a
    file-size limit) is raised again naming `dest`."""
    dest = Path(dest)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=PART)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is not None:
            raise
        why = err.strerror or f"{err}: is the disk full?"
        raise OSError(err.errno, f"could not be written ({why})", str(dest)) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        _fsync_folder(dest.parent)


def write_bytes(dest: str | os.PathLike, data: bytes, *, sync_dir: bool = False) -> None:
    write_with(dest, lambda path: path.write_bytes(data), sync_dir=sync_dir)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder cannot be opened on every platform (Windows): best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(dest: str | os.PathLike, text: str, *, sync_dir: bool = False) -> None:
    write_bytes(dest, text.encode("utf-8"), sync_dir=sync_dir)


def write_json(dest: str | os.PathLike, value: Any, *, sync_dir: bool = False) -> None:
    """Streamed to the file: no copy of the whole text in memory (split.json of 200k images
    is ~25 MB of text). ASCII escapes: a path with non-UTF-8 bytes (a lone surrogate in
    Python) still writes."""

    def dump(path: Path) -> None:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            json.dump(value, f, indent=2, ensure_ascii=True)
            f.write("\n")

    write_with(dest, dump, sync_dir=sync_dir)


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; ValueError naming the file (and where) when it is not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a JSON file (not UTF-8 text)") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
