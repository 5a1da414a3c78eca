"""Manifest -> decoded uint8 images, decoding each (file content, image size) once.

The store is content-addressed: `<cache>/decoded/<H>x<W>/<digest>.npy` holds the pixels of some
files and `<digest>.json` their sha256 hashes (and the reasons for those that failed to decode).
A later run decodes only the contents no shard holds yet; an unchanged data set decodes nothing.

The store is also what training reads: `load_images` gives `CachedRows`, the manifest's rows in
the memory-mapped shards, and indexing them gathers a batch. No process holds a private copy of
the data set: the page cache keeps what fits, shared by every process on the machine, and the
disk serves the rest. New contents are decoded and written a shard at a time (`SHARD_BYTES`), so
decoding's own memory does not grow with the data either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
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
SHARD_BYTES = 32 * 2**20  # pixels decoded (and held, twice while stacked) at a time: one shard


def default_cache_dir() -> Path:
    """$IMGCLASS_CACHE_DIR, else $XDG_CACHE_HOME/imgclass, else ~/.cache/imgclass."""
    if os.environ.get("IMGCLASS_CACHE_DIR"):
        return Path(os.environ["IMGCLASS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgclass"


class CachedRows:
    """Rows in the cache's memory-mapped shards, read where they lie: (N, H, W, 3) uint8 images
    (or a backbone's float features, data/features.py).

    Indexing (an int, a slice, an index array or CPU tensor) gathers those rows into a new array;
    `take` is a subset without reading anything. `np.asarray(rows)` reads them all."""

    def __init__(
        self,
        arrays: list[np.ndarray],
        shard: np.ndarray,
        row: np.ndarray,
        image: tuple,
        dtype: np.dtype | type = np.uint8,
    ):
        self.arrays = arrays  # the shards' memory maps
        self.shard, self.row = shard, row  # where each row lies: arrays[shard[i]][row[i]]
        self.shape = (len(row), *image)
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return len(self.row)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def take(self, index: np.ndarray) -> CachedRows:
        index = np.asarray(index)
        return CachedRows(
            self.arrays, self.shard[index], self.row[index], self.shape[1:], self.dtype
        )

    def __getitem__(self, index) -> np.ndarray:
        index = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        if index.ndim == 0:
            return self[index[None]][0]
        out = np.empty((len(index), *self.shape[1:]), self.dtype)
        arrays = self.arrays
        # row by row: under 1 us a row wherever they lie (grouping a batch by shard cost up to
        # 3 us a row when its rows are spread over many shards, as features' are)
        for i, (shard, row) in enumerate(zip(self.shard[index].tolist(), self.row[index].tolist())):
            out[i] = arrays[shard][row]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)


@dataclass
class DecodedImages:
    pixels: CachedRows | np.ndarray  # (n_ok, H, W, 3) uint8 rows of the decodable files in
    # manifest order (features.py: (n_ok, num_features) float32 rows)
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
    """The shards of one folder, each memory-mapped (`arrays`: pixels, or features): sha256 ->
    (shard number, row), or the reason it failed to decode."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.arrays: list[np.ndarray] = []
        self.rows: dict[str, tuple[int, int]] = {}
        self.failed: dict[str, str] = {}
        for index_file in sorted(folder.glob("*.json")):
            try:
                index = json.loads(index_file.read_text())
                pixels = np.load(index_file.with_suffix(".npy"), mmap_mode="r")
            except (OSError, ValueError) as err:
                log.warning("cache shard %s unreadable (%s): ignored", index_file, err)
                continue
            self._index(index["sha256"], pixels)
            self.failed.update(index["failed"])

    def add(self, shas: list[str], pixels: np.ndarray, failed: dict[str, str]) -> None:
        """Write one new shard (pixels first; the index last, as the commit)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256("".join(sorted(shas + list(failed))).encode()).hexdigest()[:24]
        npy = self.folder / f"{digest}.npy"
        atomic.write_with(npy, lambda tmp: _write_npy(tmp, pixels))
        atomic.write_json(npy.with_suffix(".json"), {"sha256": shas, "failed": failed})
        self._index(shas, np.load(npy, mmap_mode="r"))  # read from the file now, not memory
        self.failed.update(failed)

    def _index(self, shas: list[str], array: np.ndarray) -> None:
        for row, sha in enumerate(shas):
            self.rows[sha] = (len(self.arrays), row)
        self.arrays.append(array.view(np.ndarray))  # np.memmap's indexing costs more

    def rows_of(self, shas: list[str], shape: tuple, dtype: np.dtype | type) -> CachedRows:
        """The rows of these contents (each in the store), where they lie; a row's shape and
        dtype."""
        where = np.array([self.rows[sha] for sha in shas], np.int64).reshape(-1, 2)
        return CachedRows(self.arrays, where[:, 0], where[:, 1], shape, dtype)

    def rows_held(
        self, shas: list[str], shape: tuple, dtype: np.dtype | type
    ) -> tuple[CachedRows, np.ndarray]:
        """The rows of those of these contents that the store holds, in order, and which those
        are ((len(shas),) bool)."""
        held = np.array([sha in self.rows for sha in shas], dtype=bool)
        return self.rows_of([sha for sha, h in zip(shas, held) if h], shape, dtype), held


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
    folder = Path(cache_dir or default_cache_dir()) / "decoded" / f"{size}x{size}"
    shards = Shards(folder)
    todo: dict[str, str] = {}  # sha -> one path holding that content
    for item in manifest.items:
        if item.sha256 not in shards.rows and item.sha256 not in shards.failed:
            todo.setdefault(item.sha256, str(manifest.absolute(item)))
    one = size * size * 3
    per_shard = max(1, SHARD_BYTES // one)
    workers = 1 if len(todo) < _PARALLEL_FROM else workers or usable_cores()
    _check_space(len(todo), min(len(todo), per_shard), size, folder)
    if todo:
        log.log(
            logging.INFO if announce else logging.DEBUG,
            "decoding %d images to %dx%d (cached for later runs)",
            len(todo),
            size,
            size,
        )
    pending = list(todo.items())
    for start in range(0, len(pending), per_shard):
        part = pending[start : start + per_shard]
        results = _decode_all([path for _, path in part], size, workers, max_pixels)
        good = [(sha, r) for (sha, _), r in zip(part, results) if not isinstance(r, str)]
        failed = {sha: r for (sha, _), r in zip(part, results) if isinstance(r, str)}
        too_large = {sha: r for sha, r in failed.items() if r.startswith(REASON_TOO_MANY_PIXELS)}
        remembered = {sha: r for sha, r in failed.items() if sha not in too_large}
        if good or remembered:
            pixels = (
                np.stack([r for _, r in good]) if good else np.zeros((0, size, size, 3), np.uint8)
            )
            shards.add([sha for sha, _ in good], pixels, remembered)
            del pixels, results, good  # the shard holds them now
        shards.failed.update(too_large)  # for this call only
    pixels, ok = shards.rows_held(
        [item.sha256 for item in manifest.items], (size, size, 3), np.uint8
    )
    failures = {
        index: shards.failed[item.sha256]
        for index, item in enumerate(manifest.items)
        if not ok[index]
    }
    return DecodedImages(pixels, ok, failures, len(todo))


def _check_space(new: int, at_once: int, size: int, folder: Path) -> None:
    """Before anything is decoded: OSError with the figures when the `new` images decoded at
    `size` would not fit on the cache's disk, MemoryError when the `at_once` decoded together
    (a shard, held twice while it is stacked) would not fit in the memory available."""
    one = size * size * 3
    disk = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(disk).free
    if new * one > free:
        raise OSError(  # (no errno: the CLI shows the message alone)
            f"{new} images decoded at {size}x{size} px take {new * one / 1e9:.1f} GB in the "
            f"cache ({folder}), but its disk has {free / 1e9:.1f} GB free: choose a smaller "
            "--image-size or another --cache-dir",
        )
    need = 2 * at_once * one
    available = available_memory()
    if available is not None and need > available:
        raise MemoryError(
            f"images decoded at {size}x{size} px take {one / 1e9:.1f} GB each ({need / 1e9:.1f}"
            f" GB while {at_once} are decoded together), but {available / 1e9:.1f} GB of memory "
            "is available: choose a smaller --image-size"
        )


def _decode_all(
    paths: list[str], size: int, workers: int, max_pixels: int
) -> list[np.ndarray | str]:
    if workers <= 1 or len(paths) == 1:
        return [_decode_one(p, size, max_pixels) for p in paths]
    # Threads, not processes: Pillow releases the GIL while it decodes and resizes, and threads
    # need no bootstrapping of __main__ (scripts, notebooks) nor fork a multi-threaded process.
    with ThreadPoolExecutor(workers, thread_name_prefix="imgclass-decode") as pool:
        return list(pool.map(_decode_one, paths, [size] * len(paths), [max_pixels] * len(paths)))
