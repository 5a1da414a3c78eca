"""A run directory: its files, what a finished run is, what a folder must be to receive a run,
and the lock one training process holds on it.

A run is finished when metrics.json (written last) says it was not interrupted; an unfinished
run holds a checkpoint to resume from (`imgclass train --resume RUN`).

A new run goes into a folder that is absent, empty, an imgclass run (replaced only with
--overwrite), or what a run that stopped before describing itself left (its log); a folder of
anyone else's files is refused, never written into. While a process trains, it holds an OS lock
on RUN/.imgclass.lock (removed when it ends): a second process training into the same folder is
refused with one line naming the holder, and the lock dies with its process, so a killed run never
leaves the folder locked. The holder removes the temporary files of writes a killed process left
half done (atomic.remove_partial: a checkpoint's can be hundreds of MB).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from imgclass import atomic

log = logging.getLogger(__name__)
T = TypeVar("T")

# The files of a run directory (docs/architecture.md says what each holds and when it is written)
CONFIG = "config.json"  # the recipe, options, data folder, classes: written first
SPLIT = "split.json"  # which file is on which side, with its content hash
SCAN = "scan.json"  # what the data held and left out
SKIPPED = "skipped.json"
HISTORY = "history.csv"  # a row per epoch
METRICS = "metrics.json"  # written last: a run without it is unfinished (resumable)
LOG = "train.log"
WEIGHTS = "model.safetensors"
METADATA = "model.json"  # classes, input size, normalisation of the weights beside it
CHECKPOINT = "checkpoint.safetensors"  # the resume checkpoint (deleted when the run finishes)
CHECKPOINT_SUMMARY = "checkpoint.json"
FINETUNE = "finetune"  # the fine-tuning stage's checkpoint folder (transfer)
LOCK = ".imgclass.lock"
RUN_MARKERS = (CONFIG, SPLIT)  # what every imgclass run directory holds
# what a run writes before it describes itself (config.json, split.json): a run that failed that
# early leaves only these, and the folder may take a run again
_EARLY = {LOG, "tensorboard", LOCK}


def is_run_dir(folder: Path) -> bool:
    return all((folder / name).is_file() for name in RUN_MARKERS)


def metrics(run_dir: Path) -> dict | None:
    """metrics.json of a run (None while it is unfinished and never interrupted)."""
    path = run_dir / METRICS
    return atomic.read_json(path) if path.is_file() else None


def finished(run_dir: Path) -> bool:
    """Whether the run ended (metrics.json) and not by Ctrl-C: nothing is left to resume."""
    written = metrics(run_dir)
    return written is not None and not written.get("interrupted", False)


def new_run(out: Path, data_dir: Path, overwrite: bool) -> Path:
    """Make `out` ready for a new run on `data_dir`: FileExistsError when it holds another run
    (unless `overwrite`) or anyone else's files, ValueError when it is inside the data."""
    data = data_dir.resolve()
    if out.resolve() == data or out.resolve().is_relative_to(data):
        raise ValueError(
            f"--out {out} is inside the data folder {data_dir}: the run's files "
            "would be read as photos; choose a folder outside it"
        )
    _check_out_folder(out)
    if not overwrite and ((out / WEIGHTS).exists() or (out / CHECKPOINT).exists()):
        if finished(out):
            raise FileExistsError(f"{out}: holds a finished run; choose another --out or overwrite")
        raise FileExistsError(
            f"{out}: holds an unfinished run; continue it with --resume "
            f"{out}, or choose another --out or overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def stored_config(run_dir: Path, parse: Callable[[dict], T]) -> tuple[T, dict]:
    """config.json of an unfinished run, to resume it, and what `parse` makes of it (the
    TrainConfig): FileNotFoundError when it is no run, FileExistsError when it is finished,
    ValueError when the file is unreadable or `parse` refuses it."""
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (is {run_dir} an imgclass run?)")
    if finished(run_dir):
        raise FileExistsError(f"{run_dir}: finished already ({METRICS}); nothing to resume")
    try:
        stored = atomic.read_json(path)
        stored["data_dir"], stored["classes"]  # noqa: B018 - present, or the file is not a run's
        return parse(stored), stored
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable ({type(err).__name__}: {err})") from err


def remove_checkpoints(run_dir: Path) -> int:
    """Remove a run's resume checkpoints (its fine-tuning stage's too); returns their bytes."""
    files = [
        folder / name
        for folder in (run_dir, run_dir / FINETUNE)
        for name in (CHECKPOINT, CHECKPOINT_SUMMARY)
    ]
    freed = sum(path.stat().st_size for path in files if path.is_file())
    for path in files:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # removed when empty
        (run_dir / FINETUNE).rmdir()
    return freed


def clear_stale(run_dir: Path) -> None:
    """A new run into a folder that held one (--overwrite) never resumes or reports it."""
    remove_checkpoints(run_dir)
    (run_dir / METRICS).unlink(missing_ok=True)


def _check_out_folder(out: Path) -> None:
    """FileExistsError naming `out` when it holds files that are not an imgclass run's."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; choose another --out")
    if is_run_dir(out) or any((out / name).exists() for name in (WEIGHTS, CHECKPOINT)):
        return
    foreign = sorted(name for name in os.listdir(out) if name not in _EARLY)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FileExistsError(
            f"{out}: holds files that are not an imgclass run ({shown}); "
            "choose another --out (--overwrite replaces only a run)"
        )


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock while the block runs; FileExistsError naming the holder if another
    process holds it. The lock file is removed when the block ends (a killed process leaves it,
    unlocked). Where the OS has no flock (Windows), the block runs unlocked. Once held, the
    half-written files of a killed process are removed."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        _remove_partial(run_dir)
        yield
        return
    path = run_dir / LOCK
    while True:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - closed below
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise FileExistsError(
                f"{run_dir}: another imgclass process (pid {holder}) is "
                "training into it; wait for it to end, or choose another "
                "--out"
            ) from None
        try:  # the file locked is still the one at the path (not removed by a holder ending)
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        _remove_partial(run_dir)
        yield
    finally:
        path.unlink(missing_ok=True)  # removed while still held: no one locks a stale file
        handle.close()


def _remove_partial(run_dir: Path) -> None:
    for path in atomic.remove_partial(run_dir):
        log.info("removed %s: a write that a stopped process left half done", path)
