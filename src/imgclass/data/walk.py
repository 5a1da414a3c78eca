"""The one way imgclass walks a user's folder tree: the data scan, `prepare` and `predict` share it.

The rules, each skip with its reason (`Found.reason`):
- OS junk (hidden names, `__MACOSX`, `Thumbs.db`, `desktop.ini`) is skipped; a junk folder is not
  entered.
- Symbolic links are followed when their target lies inside the walked root; a link out of it, a
  broken one and a loop (a link back to a folder being walked) are skipped.
- An imgclass run directory is not entered: its plots and logs are no photos.
- What is neither a folder nor a regular file (a FIFO, a device, a socket) is skipped: reading it
  would block or mean nothing.
- Entries come in name order, depth first. Names are text that prints and goes into JSON: the
  bytes of a name that are not UTF-8 are written `\\xNN` (`Found.path` is still the file on disk);
  a name that clashes with another once written so is skipped. A folder that cannot be listed is
  skipped with the OS's reason.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from imgclass.data.images import REASON_NOT_A_FILE, unreadable
from imgclass.rundir import is_run_dir

REASON_JUNK = "OS junk file"
REASON_JUNK_FOLDER = "OS junk folder"
REASON_LINK_OUTSIDE = "symbolic link pointing outside the data root"
REASON_LINK_BROKEN = "broken symbolic link"
REASON_LINK_LOOP = "symbolic link loop"
REASON_NAME_CLASH = "name clashes with another file's once its non-UTF-8 bytes are written \\xNN"
REASON_RUN_DIR = "an imgclass run directory, not photos"

_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})


def is_os_junk(parts: Sequence[str]) -> bool:
    """Whether a path (its parts) is, or lies in, what an OS leaves beside photos."""
    hidden = any(p.startswith(".") and p not in (".", "..") for p in parts)
    return hidden or "__MACOSX" in parts or parts[-1].lower() in _JUNK_NAMES


def text_name(name: str) -> str:
    """A file name as printable, JSON-safe text: bytes that are not UTF-8 become `\\xNN`."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


@dataclass(frozen=True)
class Found:
    """A file the walk found, or an entry it skipped (`reason`)."""

    rel: str  # relative to the root, POSIX separators, as text (non-UTF-8 bytes as \xNN)
    path: Path  # on disk, to open (through the links as found)
    disk_rel: str = ""  # `rel` with the names as on disk (differs where a name is not UTF-8)
    reason: str | None = None  # why it is skipped; None: a file to read


@dataclass(frozen=True)
class Child:
    """An entry of a folder that the rules let through: its name, entry and real path."""

    name: str  # as text
    entry: os.DirEntry
    real: Path  # links resolved (inside the root)

    @property
    def is_dir(self) -> bool:
        return _is_dir(self.entry)

    @property
    def is_file(self) -> bool:
        try:
            return self.entry.is_file()  # follows links; False for FIFOs, sockets and devices
        except OSError:
            return False


class Walk:
    """The walk of one folder tree (its root: where links may point)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root_real = Path(os.path.realpath(root))

    def children(self, folder: Path, folder_real: Path, rel: str) -> Iterator[Child | Found]:
        """The entries of `folder` (known as `rel`) in name order: a Child for each one the
        rules let through, a Found with the reason for each one skipped (junk, a link out of the
        root, broken or looping, a name clash, a folder that cannot be listed)."""
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as err:
            yield Found(rel or ".", folder, reason=f"cannot read folder ({err.strerror or err})")
            return
        named: dict[str, os.DirEntry] = {}
        for entry in entries:
            name = text_name(entry.name)
            if name in named:
                clash = f"{REASON_NAME_CLASH} (on disk {os.fsencode(entry.name)!r})"
                yield Found(join(rel, name), Path(entry.path), reason=clash)
            else:
                named[name] = entry
        for name, entry in sorted(named.items()):
            child = join(rel, name)
            if is_os_junk([name]):
                junk = REASON_JUNK_FOLDER if _is_dir(entry) else REASON_JUNK
                yield Found(child, Path(entry.path), reason=junk)
                continue
            real = self._follow(entry, child, folder_real)
            yield real if isinstance(real, Found) else Child(name, entry, real)

    def _follow(self, entry: os.DirEntry, rel: str, parent_real: Path) -> Path | Found:
        """The real path of an entry, or the skip of a link not to follow."""
        try:
            if not entry.is_symlink():
                return parent_real / entry.name
            real = Path(entry.path).resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a symlink loop this way
            return Found(rel, Path(entry.path), reason=REASON_LINK_LOOP)
        except FileNotFoundError:
            return Found(rel, Path(entry.path), reason=REASON_LINK_BROKEN)
        except OSError as err:
            reason = REASON_LINK_LOOP if err.errno == errno.ELOOP else unreadable(err)
            return Found(rel, Path(entry.path), reason=reason)
        if real != self.root_real and not real.is_relative_to(self.root_real):
            return Found(rel, Path(entry.path), reason=REASON_LINK_OUTSIDE)
        return real

    def files(
        self,
        folder: Path | None = None,
        folder_real: Path | None = None,
        rel: str = "",
        disk_rel: str = "",
        ancestors: frozenset[Path] = frozenset(),
    ) -> Iterator[Found]:
        """Every file under `folder` (default: the root) and every skip, in name order, depth
        first; real folders in `ancestors` (and the one walked) are not entered again."""
        folder = self.root if folder is None else folder
        folder_real = self.root_real if folder_real is None else folder_real
        ancestors = ancestors | {folder_real}
        for child in self.children(folder, folder_real, rel):
            if isinstance(child, Found):
                yield child
                continue
            entry = child.entry
            path, disk_path = join(rel, child.name), join(disk_rel, entry.name)
            if child.is_dir:
                if child.real in ancestors:
                    yield Found(path, Path(entry.path), disk_path, REASON_LINK_LOOP)
                elif is_run_dir(child.real):
                    yield Found(path, Path(entry.path), disk_path, REASON_RUN_DIR)
                else:
                    yield from self.files(Path(entry.path), child.real, path, disk_path, ancestors)
            elif not child.is_file:
                yield Found(path, Path(entry.path), disk_path, REASON_NOT_A_FILE)
            else:
                yield Found(path, Path(entry.path), disk_path)
