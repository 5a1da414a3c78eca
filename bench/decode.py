"""Decoding speed on flowers5, and time to the first training batch, cold and warm.

Decode + resize to 64x64: imgclass's decoder (JPEG draft, all colour modes, guards) against the
naive `Image.open(p).convert("RGB").resize((64, 64))`, on one core and on all cores (threads;
Pillow releases the GIL). Interleaved repetitions, median [min-max]. Then the time from
`load_dataset` to the first training batch with an empty cache (cold) and a filled one (warm).

    python bench/decode.py [--data ../shared/datasets/flowers5] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from imgclass import runtime
from imgclass.data.images import decode_image
from imgclass.runtime import usable_cores

SIZE = 64


def naive(path: str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((SIZE, SIZE)))


def imgclass_decoder(path: str) -> np.ndarray:
    return decode_image(path, (SIZE, SIZE))


def images_per_second(decode, paths: list[str], workers: int) -> float:
    start = time.perf_counter()
    if workers == 1:
        for p in paths:
            decode(p)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(decode, paths))
    return len(paths) / (time.perf_counter() - start)


def first_batch_seconds(data: Path, cache: Path) -> float:
    import torch

    from imgclass.data.batches import epoch_order, iterate_batches
    from imgclass.data.dataset import load_dataset
    from imgclass.data.split import stratified_split

    start = time.perf_counter()
    dataset = load_dataset(data, SIZE, cache)
    split = stratified_split(dataset.labels, 0.2, 0)
    pixels = torch.from_numpy(dataset.pixels[split.train])
    labels = torch.from_numpy(dataset.labels[split.train])
    order = epoch_order(labels, torch.Generator().manual_seed(0))
    next(iterate_batches(pixels, labels, 32, order=order))
    return time.perf_counter() - start


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers5"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: not found (flowers5 lives in ../shared/datasets)")
    print(runtime.describe_cpu())  # the figures below are for this CPU, bf16 answer and load
    paths = sorted(str(p) for p in args.data.rglob("*") if p.is_file())
    cores = usable_cores()
    rows = {(name, w): [] for name in ("naive PIL", "imgclass") for w in (1, cores)}
    for _ in range(args.reps):
        for (name, workers), values in rows.items():
            decode = naive if name == "naive PIL" else imgclass_decoder
            values.append(images_per_second(decode, paths, workers))
    print(
        f"decode + resize to {SIZE}x{SIZE}, {len(paths)} files of {args.data}; "
        f"median of {args.reps} [min-max]"
    )
    print(f"{'decoder':<12}{'workers':>8}{'images/s':>12}{'range':>18}{'per core':>10}")
    for (name, workers), values in rows.items():
        median = statistics.median(values)
        print(
            f"{name:<12}{workers:>8}{median:>12.0f}{f'[{min(values):.0f}-{max(values):.0f}]':>18}"
            f"{median / workers:>10.0f}"
        )
    ratio = statistics.median(rows[("imgclass", 1)]) / statistics.median(rows[("naive PIL", 1)])
    print(f"imgclass / naive, one core: {ratio:.2f}x")

    cold, warm = [], []
    for _ in range(args.reps):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(first_batch_seconds(args.data, Path(cache)))
            warm.append(first_batch_seconds(args.data, Path(cache)))
    print(
        f"time to the first training batch: cold {statistics.median(cold):.2f} s "
        f"[{min(cold):.2f}-{max(cold):.2f}], warm {statistics.median(warm):.2f} s "
        f"[{min(warm):.2f}-{max(warm):.2f}] (cache hit, nothing decoded)"
    )


if __name__ == "__main__":
    main()
