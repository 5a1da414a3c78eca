"""Zip archives and folders of labelled photos in, one folder per class out.

The class of a file is the name of the folder that holds it (`raw-img/gatto/x.jpeg` -> `gatto`),
renamed through the Animals-10 names and the user's map. Archives are read defensively: unsafe
paths, links, encrypted members, oversized members and zip bombs are refused one by one, and every
write is atomic, so an interrupted prepare can simply be run again.
"""

from __future__ import annotations

import logging
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from itertools import count
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from imgclass import atomic
from imgclass.data.walk import REASON_JUNK, REASON_LINK_OUTSIDE, Walk, is_os_junk

log = logging.getLogger(__name__)

ANIMALS10_NAMES: dict[str, str] = {
    "cane": "dog",
    "cavallo": "horse",
    "elefante": "elephant",
    "farfalla": "butterfly",
    "gallina": "chicken",
    "gatto": "cat",
    "mucca": "cow",
    "pecora": "sheep",
    "ragno": "spider",
    "scoiattolo": "squirrel",
}
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
)

_NESTED = "nested archive: not extracted"
_SEPARATORS = re.compile(r"[\\/]")  # zips written on Windows may use backslashes
_DRIVE = re.compile(r"[A-Za-z]:")
_BOMB_MIN_BYTES = 2**20  # small members may compress well for honest reasons


class UnsafeArchiveError(ValueError):
    """A member would be written outside the output folder."""


@dataclass(frozen=True)
class SkippedFile:
    source: str  # the archive or folder given by the user
    member: str  # path inside it
    reason: str


@dataclass(frozen=True)
class LeftOut:
    source: str
    reason: str


@dataclass
class PrepareReport:
    out_dir: Path
    counts: dict[str, int]  # class -> image files in out_dir/<class> after prepare
    written: int  # files newly written by this call
    skipped: list[SkippedFile]
    left_out: list[LeftOut]
    renamed: dict[str, str]  # source class name -> final class name, only those renamed


@dataclass(frozen=True)
class _Limits:
    max_member_bytes: int
    max_total_bytes: int  # per source
    max_ratio: float  # uncompressed / compressed size


class _Refused(Exception):
    """A member that cannot be read safely; the message is the reason."""


@dataclass(frozen=True)
class _Candidate:
    member: str
    source_class: str
    class_name: str
    file_name: str
    read: Callable[[], bytes]  # raises _Refused


@dataclass
class _Source:
    label: str
    candidates: list[_Candidate] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    problem: str | None = None  # the whole source is unreadable
    archives: int = 0  # archives found inside a folder, reported as sources of their own

    def skip(self, member: str, reason: str, warn: bool = False) -> None:
        self.skipped.append(_skipped(self.label, member, reason, warn))


def _skipped(source: str, member: str, reason: str, warn: bool = False) -> SkippedFile:
    """Log a skipped file (a warning when it was refused for safety) and return its record."""
    (log.warning if warn else log.debug)("%s: skipped %s: %s", source, member, reason)
    return SkippedFile(source, member, reason)


def parse_name_map(pairs: Sequence[str]) -> dict[str, str]:
    """Turn `["gatto=cat", ...]` into `{"gatto": "cat", ...}`."""
    mapping = {}
    for pair in pairs:
        source, sep, target = (part.strip() for part in pair.partition("="))
        if not sep or not source or _bad_name(target):
            raise ValueError(f"bad class mapping {pair!r}: expected SOURCE=TARGET, e.g. gatto=cat")
        mapping[source] = target
    return mapping


def prepare(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    *,
    classes: Sequence[str] | None = None,
    name_map: Mapping[str, str] | None = None,
    builtin_names: bool = True,
    max_member_bytes: int = 256 * 2**20,
    max_total_bytes: int = 20 * 2**30,
    max_ratio: float = 200.0,
) -> PrepareReport:
    """Copy the images of `sources` (zips and folders) into `out_dir/<class>/`.

    classes: final class names to keep; all classes found when None or empty.
    name_map: source class name -> final name; extends and overrides ANIMALS10_NAMES.
    """
    names = dict(ANIMALS10_NAMES) if builtin_names else {}
    for source_name, target in (name_map or {}).items():
        if _bad_name(target):
            raise ValueError(f"bad class mapping {source_name!r} -> {target!r}: unsafe name")
        names[source_name] = target
    limits = _Limits(max_member_bytes, max_total_bytes, max_ratio)
    out = Path(out_dir)
    report = PrepareReport(out, {}, 0, [], [], {})
    with ExitStack() as stack:
        scanned = [s for src in sources for s in _scan(Path(src), names, limits, stack)]
        found = {c.class_name for s in scanned for c in s.candidates}
        if not found:  # nothing to prepare: say why (an archive unreadable, ...)
            why = [f"{s.label}: {s.problem}" for s in scanned if s.problem]
            raise ValueError(
                f"no image files inside class folders in "
                f"{', '.join(map(str, sources))}" + "".join(f"; {w}" for w in why)
            )
        wanted = set(classes) if classes else found
        missing = sorted(wanted - found)
        if missing:
            raise ValueError(
                f"wanted classes {missing} found in no source; found: {sorted(found) or 'none'}"
            )
        out.mkdir(parents=True, exist_ok=True)
        for source in scanned:
            _copy_source(source, wanted, out, limits, report)
    report.counts = {c: _count_images(out / c) for c in sorted(wanted)}
    report.renamed = dict(sorted(report.renamed.items()))
    log.debug("prepared %s: %s, %d files written", out, report.counts, report.written)
    return report


def _copy_source(
    source: _Source, wanted: set[str], out: Path, limits: _Limits, report: PrepareReport
) -> None:
    held = sorted({c.class_name for c in source.candidates})
    reason = source.problem
    if not reason and not held and not source.archives:
        reason = "holds no image files inside class folders"
    elif not reason and held and not wanted.intersection(held):
        reason = f"holds none of the wanted classes (found: {', '.join(held)})"
    if reason:
        report.left_out.append(LeftOut(source.label, reason))
        log.debug("%s: left out: %s", source.label, reason)
        if not held:
            report.skipped += source.skipped  # they say why nothing was usable
        return
    report.skipped += source.skipped
    total = 0
    for i, cand in enumerate(source.candidates):
        if cand.class_name not in wanted:
            reason = f"class {cand.class_name!r} not wanted"
            report.skipped.append(_skipped(source.label, cand.member, reason))
            continue
        try:
            data = cand.read()
        except _Refused as err:
            report.skipped.append(_skipped(source.label, cand.member, str(err), warn=True))
            continue
        total += len(data)
        if total > limits.max_total_bytes:
            reason = f"source total over max_total_bytes ({limits.max_total_bytes}): stopped"
            log.warning("%s: %s at %s", source.label, reason, cand.member)
            rest = source.candidates[i:]
            report.skipped += [SkippedFile(source.label, c.member, reason) for c in rest]
            return
        if cand.source_class != cand.class_name:
            report.renamed[cand.source_class] = cand.class_name
        if _store(out, source.label, cand, data):
            report.written += 1
        else:
            reason = "already present with the same content"
            report.skipped.append(_skipped(source.label, cand.member, reason))


def _scan(path: Path, names: Mapping[str, str], limits: _Limits, stack: ExitStack) -> list[_Source]:
    """The sources found at a path the user gave: one per archive, one per folder."""
    if path.is_dir():
        return _scan_folder(path, names, limits, stack)
    if not path.exists():
        raise FileNotFoundError(f"source not found: {path}")
    return [_scan_zip(path, str(path), names, limits, stack)]


def _scan_zip(
    path: Path, label: str, names: Mapping[str, str], limits: _Limits, stack: ExitStack
) -> _Source:
    source = _Source(label)
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        source.problem = f"not a readable zip archive: {err}"
        return source
    for info in infos:
        if info.is_dir():
            continue
        refusal = _zip_refusal(info, limits)
        if refusal:
            source.skip(info.filename, refusal, warn=True)
            continue
        read = partial(_read_capped, partial(archive.open, info), limits.max_member_bytes)
        _add_member(source, info.filename, _SEPARATORS.split(info.filename), names, read)
    return source


def _scan_folder(
    root: Path, names: Mapping[str, str], limits: _Limits, stack: ExitStack
) -> list[_Source]:
    """A folder given to prepare, walked by data/walk.py's rules; its zips read as sources too."""
    source = _Source(str(root))
    archives = []
    for found in Walk(root).files():
        if found.reason is not None:
            source.skip(found.rel, found.reason, warn=found.reason == REASON_LINK_OUTSIDE)
            continue
        parts = found.rel.split("/")
        if _member_problem(parts) == _NESTED:
            archives.append((found.path, str(root / found.rel)))
        else:
            read = partial(_read_capped, partial(found.path.open, "rb"), limits.max_member_bytes)
            _add_member(source, found.rel, parts, names, read)
    source.archives = len(archives)
    return [source] + [_scan_zip(p, label, names, limits, stack) for p, label in archives]


def _add_member(
    source: _Source,
    member: str,
    parts: list[str],
    names: Mapping[str, str],
    read: Callable[[], bytes],
) -> None:
    problem = _member_problem(parts)
    if problem:
        source.skip(member, problem, warn=problem.endswith("refused"))
    else:
        folder = parts[-2]
        source.candidates.append(
            _Candidate(member, folder, names.get(folder, folder), parts[-1], read)
        )


def _bad_name(name: str) -> bool:
    return name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name


def _member_problem(parts: Sequence[str]) -> str | None:
    """Why the file at these path parts is not an image to copy; None when it is."""
    if is_os_junk(parts):
        return REASON_JUNK
    suffix = PurePosixPath(parts[-1]).suffix.lower()
    if suffix == ".zip":
        return _NESTED
    if suffix not in IMAGE_SUFFIXES:
        return f"not an image file extension {suffix!r}"
    if len(parts) < 2:
        return "not inside a class folder"
    bad = [p for p in parts[-2:] if _bad_name(p)]
    if bad:
        return f"unusable class or file name {bad[0]!r}: refused"
    return None


def _zip_refusal(info: zipfile.ZipInfo, limits: _Limits) -> str | None:
    """Why a zip member must not be extracted at all, judged from its header."""
    name = info.filename
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "unsafe path (absolute): refused"
    if ".." in _SEPARATORS.split(name):
        return "unsafe path (.. component): refused"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link member: refused"
    if info.flag_bits & 0x1:
        return "encrypted member: refused"
    if info.file_size > limits.max_member_bytes:
        return f"{info.file_size} bytes, over max_member_bytes ({limits.max_member_bytes}): refused"
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > _BOMB_MIN_BYTES and ratio > limits.max_ratio:
        return f"compression ratio {ratio:.0f}, over max_ratio ({limits.max_ratio:g}): refused"
    return None


def _read_capped(open_member: Callable[[], BinaryIO], cap: int) -> bytes:
    """Read at most cap bytes; a zip header's file_size may lie, so it is never trusted."""
    try:
        with open_member() as member:
            data = member.read(cap + 1)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError) as err:
        raise _Refused(f"corrupt or unreadable: {err}") from err
    if len(data) > cap:
        raise _Refused(f"larger than max_member_bytes ({cap}): refused")
    return data


def _store(out: Path, label: str, cand: _Candidate, data: bytes) -> bool:
    """Write `data` as out/<class>/<name>, or `<stem>-N<suffix>` on a clash with other content.

    Returns False when a file with the same content is already there.
    """
    name = PurePosixPath(cand.file_name)
    for n in count():
        dest = out / cand.class_name / (name.name if n == 0 else f"{name.stem}-{n}{name.suffix}")
        if not dest.resolve().is_relative_to(out.resolve()):
            raise UnsafeArchiveError(
                f"{label}: member {cand.member!r} would be written to {dest.resolve()}, "
                f"outside {out}"
            )
        dest.parent.mkdir(exist_ok=True)
        if not dest.exists() and not dest.is_symlink():
            atomic.write_bytes(dest, data)
            return True
        if dest.is_file() and dest.stat().st_size == len(data) and dest.read_bytes() == data:
            return False
    raise AssertionError("unreachable")


def _count_images(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(
        1
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
