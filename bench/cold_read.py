"""Reading training's store when the page cache does not hold it: the epoch's shuffled order
against the store's own order.

Data larger than memory is read from the disk every epoch. Training gathers each batch's rows
in the epoch's shuffled order, wherever they lie in the cache's shards (data/cache.py); this
measures what that costs against reading the shards front to back. For each image size it writes
N rows of random pixels with the cache's own writer (shards of cache.SHARD_BYTES, as decoding
writes them), then, per order, evicts the shard files from the page cache (fsync, then
posix_fadvise DONTNEED: what the pages of a set larger than memory would be) and gathers every
row in batches of --batch through CachedRows, as training does: rows/s and MB/s, cold and (the
same order again) warm.

    python bench/cold_read.py [--work /tmp/cold_read] [--sizes 32 224] [--rows 200000 20000]
                              [--batch 256]

The disk under --work is the one measured (the cache's is ~/.cache/imgclass unless
IMGCLASS_CACHE_DIR says otherwise). Linux only (posix_fadvise). Give the CPU flags, the load
average and the disk beside the figures (printed first).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from imgclass.data import cache
from imgclass.data.cache import Shards
from imgclass.runtime import describe_cpu


def write_store(folder: Path, size: int, rows: int) -> list[str]:
    """`rows` random (size, size, 3) images in shards of cache.SHARD_BYTES; their keys."""
    shutil.rmtree(folder, ignore_errors=True)
    store = Shards(folder)
    per_shard = max(1, cache.SHARD_BYTES // (size * size * 3))
    rng = np.random.default_rng(0)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(rows)]
    for start in range(0, rows, per_shard):
        chunk = keys[start : start + per_shard]
        store.add(chunk, rng.integers(0, 256, (len(chunk), size, size, 3), np.uint8), {})
    return keys


def evict(folder: Path) -> None:
    """The folder's files out of the page cache (their clean pages: written back first)."""
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def gather(folder: Path, keys: list[str], size: int, order: np.ndarray, batch: int) -> float:
    """Seconds to gather every row in `order`, `batch` rows at a time (a fresh memory map)."""
    rows = Shards(folder).rows_of(keys, (size, size, 3), np.uint8)
    start = time.perf_counter()
    for first in range(0, len(order), batch):
        rows[order[first : first + batch]]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cold_read"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 20_000])
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    if len(args.sizes) != len(args.rows):
        parser.error("give one --rows per --sizes")
    print(f"{describe_cpu()}; work {args.work}")
    for size, n in zip(args.sizes, args.rows):
        folder = args.work / f"{size}px"
        keys = write_store(folder, size, n)
        megabytes = n * size * size * 3 / 1e6
        orders = {
            "store order": np.arange(n),
            "shuffled": np.random.default_rng(1).permutation(n),
        }
        for name, order in orders.items():
            evict(folder)
            cold = gather(folder, keys, size, order, args.batch)
            warm = gather(folder, keys, size, order, args.batch)
            print(
                json.dumps(
                    {
                        "size": size,
                        "rows": n,
                        "MB": round(megabytes),
                        "order": name,
                        "cold_rows_s": round(n / cold),
                        "cold_MB_s": round(megabytes / cold),
                        "warm_rows_s": round(n / warm),
                        "warm_MB_s": round(megabytes / warm),
                    }
                ),
                flush=True,
            )
        shutil.rmtree(folder)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
