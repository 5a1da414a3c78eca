"""Manifest -> decoded uint8 images, decoding each (file content, image size) once.

The store is content-addressed: `<cache>/decoded/<H>x<W>/<digest>.npy` holds the pixels of some
files and `<digest>.json` their sha256 hashes (and the reasons for those that failed to decode).
A later run decodes only the contents no shard holds yet; an unchanged data set decodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclass import atomic
from imgclass.data.images import (
    DEFAULT_MAX_PIXELS,
    REASON_TOO_MANY_PIXELS,
    ImageDecodeError,
    decode_image,
)
from imgclass.data.scan import Manifest
from imgclass.runtime import available_memory, usable_cores

log = logging.getLogger(__name__)

_PARALLEL_FROM = 64  # fewer files than this decode in-process: a pool costs more than it saves


def default_cache_dir() -> Path:
    """$IMGCLASS_CACHE_DIR, else $XDG_CACHE_HOME/imgclass, else ~/.cache/imgclass."""
    if os.environ.get("IMGCLASS_CACHE_DIR"):
        return Path(os.environ["IMGCLASS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgclass"


@dataclass
class DecodedImages:
    pixels: np.ndarray  # (n_ok, H, W, 3) uint8, rows in manifest order of the decodable files
    ok: np.ndarray  # (n_items,) bool: which manifest items decoded
    failures: dict[int, str]  # manifest index -> reason, for the items that did not
    decoded_now: int  # how many contents this call decoded (0 on a warm cache)


def _write_npy(path: Path, pixels: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a path
        np.save(f, pixels, allow_pickle=False)


def _decode_one(path: str, size: int, max_pixels: int) -> np.ndarray | str:
    try:
        return decode_image(path, (size, size), max_pixels=max_pixels)
    except ImageDecodeError as err:
        return err.reason


class Shards:
    """The shards of one folder: sha256 -> a row (memory-mapped: pixels, or features) or the
    reason it failed to decode."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.rows: dict[str, tuple[np.ndarray, int]] = {}
        self.failed: dict[str, str] = {}
        for index_file in sorted(folder.glob("*.json")):
            try:
                index = json.loads(index_file.read_text())
                pixels = np.load(index_file.with_suffix(".npy"), mmap_mode="r")
            except (OSError, ValueError) as err:
                log.warning("cache shard %s unreadable (%s): ignored", index_file, err)
                continue
            for row, sha in enumerate(index["sha256"]):
                self.rows[sha] = (pixels, row)
            self.failed.update(index["failed"])

    def add(self, shas: list[str], pixels: np.ndarray, failed: dict[str, str]) -> None:
        """Write one new shard (pixels first; the index last, as the commit)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256("".join(sorted(shas + list(failed))).encode()).hexdigest()[:24]
        npy = self.folder / f"{digest}.npy"
        atomic.write_with(npy, lambda tmp: _write_npy(tmp, pixels))
        atomic.write_json(npy.with_suffix(".json"), {"sha256": shas, "failed": failed})
        for row, sha in enumerate(shas):
            self.rows[sha] = (pixels, row)
        self.failed.update(failed)


def load_images(
    manifest: Manifest,
    size: int,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    announce: bool = True,
) -> DecodedImages:
    """Decoded pixels of every manifest item, from the cache where it has them.

    max_pixels: larger images are skipped without being decoded; that skip depends on the
    limit, not on the content, so it is not remembered (a higher limit later decodes them).
    announce: log how many images are decoded now (a caller working in chunks says it once).
    """
    shards = Shards(Path(cache_dir or default_cache_dir()) / "decoded" / f"{size}x{size}")
    todo: dict[str, str] = {}  # sha -> one path holding that content
    for item in manifest.items:
        if item.sha256 not in shards.rows and item.sha256 not in shards.failed:
            todo.setdefault(item.sha256, str(manifest.absolute(item)))
    _check_memory(len(manifest.items), len(todo), size)
    if todo:
        log.log(
            logging.INFO if announce else logging.DEBUG,
            "decoding %d images to %dx%d (cached for later runs)",
            len(todo),
            size,
            size,
        )
        results = _decode_all(list(todo.values()), size, workers, max_pixels)
        good = [(sha, r) for sha, r in zip(todo, results) if not isinstance(r, str)]
        failed = {sha: r for sha, r in zip(todo, results) if isinstance(r, str)}
        too_large = {sha: r for sha, r in failed.items() if r.startswith(REASON_TOO_MANY_PIXELS)}
        remembered = {sha: r for sha, r in failed.items() if sha not in too_large}
        if good or remembered:
            pixels = (
                np.stack([r for _, r in good]) if good else np.zeros((0, size, size, 3), np.uint8)
            )
            shards.add([sha for sha, _ in good], pixels, remembered)
        shards.failed.update(too_large)  # for this call only
    ok = np.array([item.sha256 in shards.rows for item in manifest.items], dtype=bool)
    out = np.empty((int(ok.sum()), size, size, 3), np.uint8)
    failures: dict[int, str] = {}
    row = 0
    for index, item in enumerate(manifest.items):
        if ok[index]:
            source, source_row = shards.rows[item.sha256]
            out[row] = source[source_row]
            row += 1
        else:
            failures[index] = shards.failed[item.sha256]
    return DecodedImages(out, ok, failures, len(todo))


def _check_memory(images: int, new: int, size: int) -> None:
    """MemoryError with the figures, before anything is decoded or cached, when `images`
    decoded images at `size`, and the `new` ones among them a second time while they are
    decoded, would not fit in the memory available (training's copies come on top)."""
    one = size * size * 3
    need = (images + new) * one
    available = available_memory()
    if available is not None and need > available:
        raise MemoryError(
            f"{images} images decoded at {size}x{size} px take "
            f"{images * one / 1e9:.1f} GB ({need / 1e9:.1f} GB while {new} are "
            f"decoded), but {available / 1e9:.1f} GB of memory is available: "
            "choose a smaller --image-size"
        )


def _decode_all(
    paths: list[str], size: int, workers: int | None, max_pixels: int
) -> list[np.ndarray | str]:
    workers = workers or usable_cores()
    if workers <= 1 or len(paths) < _PARALLEL_FROM:
        return [_decode_one(p, size, max_pixels) for p in paths]
    # Threads, not processes: Pillow releases the GIL while it decodes and resizes, and threads
    # need no bootstrapping of __main__ (scripts, notebooks) nor fork a multi-threaded process.
    with ThreadPoolExecutor(workers, thread_name_prefix="imgclass-decode") as pool:
        return list(pool.map(_decode_one, paths, [size] * len(paths), [max_pixels] * len(paths)))
