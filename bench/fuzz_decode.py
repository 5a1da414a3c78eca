"""Fuzz decode_image: random and mutated image bytes must decode or give a documented reason.

Each case is random bytes, random bytes behind a real format signature, or a real image (small
ones made here in 8 formats and colour modes, plus a few flowers5 photos when
../shared/datasets/flowers5 is present) with bytes flipped, cut off, inserted, or several of
these. The table counts the outcomes: decoded, one row per `REASON_*` of images.py, and any
exception that escaped (the exit status is then 1, and the first inputs are listed).

    python bench/fuzz_decode.py                 # 10,000 cases, seed 0
    python bench/fuzz_decode.py --cases 100000 --seed 3 --save-failures /tmp/fuzz

Result (Pillow 13, one CPU core, about 3,000 cases/s): 10,000 cases (seed 0) and 100,000
(seed 1), nothing escaped. libtiff writes a few messages of its own straight to stderr (e.g.
"More samples per pixel than can be decoded"); they are C-level output, not exceptions.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from imgclass.data import images
from imgclass.data.images import ImageDecodeError, decode_image

REASONS = {value: name for name, value in vars(images).items() if name.startswith("REASON_")}
SIGNATURES = [
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff\xe1",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
]
KINDS = ["random", "signature", "flip", "cut", "insert", "mixed"]
WEIGHTS = [5, 10, 25, 20, 15, 25]  # per cent of the cases


def synthetic_files() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    rgb = Image.fromarray(noise)
    made = []
    for label, img, fmt, params in [
        ("jpeg", rgb, "JPEG", {"quality": 85}),
        ("jpeg-progressive", rgb, "JPEG", {"progressive": True}),
        ("jpeg-L", rgb.convert("L"), "JPEG", {}),
        ("jpeg-CMYK", rgb.convert("CMYK"), "JPEG", {}),
        ("png", rgb, "PNG", {}),
        ("png-RGBA", rgb.convert("RGBA"), "PNG", {}),
        ("png-P-transparent", rgb.convert("P"), "PNG", {"transparency": 0}),
        ("png-16bit", Image.fromarray(noise[..., 0].astype(np.uint16) * 257), "PNG", {}),
        ("gif", rgb.convert("P"), "GIF", {}),
        ("bmp", rgb, "BMP", {}),
        ("tiff", rgb, "TIFF", {}),
        ("webp", rgb, "WEBP", {}),
    ]:
        buffer = io.BytesIO()
        img.save(buffer, fmt, **params)
        made.append((label, buffer.getvalue()))
    return made


def flower_files(root: Path, per_class: int) -> list[tuple[str, bytes]]:
    if not root.is_dir():
        return []
    return [
        (f"flowers5/{p.parent.name}/{p.name}", p.read_bytes())
        for folder in sorted(d for d in root.iterdir() if d.is_dir())
        for p in sorted(folder.iterdir())[:per_class]
    ]


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    steps = (
        [kind] if kind != "mixed" else rng.choices(["flip", "cut", "insert"], k=rng.randint(2, 6))
    )
    for step in steps:
        if not buffer:
            break
        if step == "flip":  # one to eight bytes, biased to the headers where parsers branch
            for _ in range(rng.randint(1, 8)):
                at = rng.randrange(min(len(buffer), rng.choice([64, 512, len(buffer)])))
                buffer[at] ^= rng.randint(1, 255)
        elif step == "cut":
            del buffer[rng.randrange(len(buffer)) :]
        else:
            at = rng.randrange(len(buffer) + 1)
            buffer[at:at] = rng.randbytes(rng.choice([1, 2, 4, 16, 256]))
    return bytes(buffer)


def make_case(kind: str, seeds: list[tuple[str, bytes]], rng: random.Random) -> tuple[str, bytes]:
    if kind == "random":
        return "-", rng.randbytes(rng.randint(0, 4096))
    if kind == "signature":
        return "-", rng.choice(SIGNATURES) + rng.randbytes(rng.randint(0, 2048))
    name, data = rng.choice(seeds)
    return name, mutate(data, kind, rng)


def outcome(data: bytes, size: int, max_pixels: int) -> tuple[str, str]:
    """(outcome class, detail): "decoded", a REASON_* name, or "escaped <Type>"."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pixels = decode_image(data, (size, size), max_pixels=max_pixels)
        if caught:
            return "escaped warning", str(caught[0].message)
        if pixels.shape != (size, size, 3) or pixels.dtype != np.uint8:
            return "escaped wrong array", f"{pixels.shape} {pixels.dtype}"
        return "decoded", ""
    except ImageDecodeError as err:
        for reason, name in REASONS.items():
            if err.reason.startswith(reason):
                return name, err.reason
        return "escaped unknown reason", err.reason
    except Exception as err:  # the failures this bench exists to find
        return f"escaped {type(err).__name__}", str(err)


def main() -> int:
    default_flowers = Path(
        os.environ.get("IMGCLASS_SHARED_DATASETS")
        or Path(__file__).resolve().parents[2] / "shared" / "datasets"
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=32, help="decoded side, pixels")
    parser.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS)
    parser.add_argument("--flowers", type=Path, default=default_flowers / "flowers5")
    parser.add_argument("--flowers-per-class", type=int, default=2)
    parser.add_argument(
        "--save-failures", type=Path, help="write each input that escaped to this folder"
    )
    args = parser.parse_args()

    seeds = synthetic_files() + flower_files(args.flowers, args.flowers_per_class)
    rng = random.Random(args.seed)
    counts: Counter[tuple[str, str]] = Counter()
    failures: list[tuple[int, str, str, str]] = []
    start = time.perf_counter()
    for case in range(args.cases):
        kind = rng.choices(KINDS, WEIGHTS)[0]
        base, data = make_case(kind, seeds, rng)
        result, detail = outcome(data, args.size, args.max_pixels)
        counts[result, kind] += 1
        if result.startswith("escaped"):
            failures.append((case, kind, base, f"{result}: {detail}"))
            if args.save_failures:
                args.save_failures.mkdir(parents=True, exist_ok=True)
                (args.save_failures / f"case{case:06d}-{kind}.bin").write_bytes(data)
    seconds = time.perf_counter() - start

    rows = [
        "decoded",
        *REASONS.values(),
        *sorted({r for r, _ in counts if r.startswith("escaped")}),
    ]
    headers = ["outcome", *KINDS, "total"]
    table = [
        [row, *(counts[row, k] for k in KINDS), sum(counts[row, k] for k in KINDS)] for row in rows
    ]
    table.append(["total", *(sum(counts[r, k] for r in rows) for k in KINDS), args.cases])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *table)]
    print(
        f"{args.cases} cases, seed {args.seed}, {len(seeds)} seed files "
        f"({len(seeds) - len(synthetic_files())} from {args.flowers}), "
        f"{seconds:.1f} s ({args.cases / seconds:.0f} cases/s)"
    )
    for line in [headers, *table]:
        print(
            "  ".join(
                str(x).rjust(w) if i else str(x).ljust(w)
                for i, (x, w) in enumerate(zip(line, widths))
            )
        )
    for case, kind, base, message in failures[:20]:
        print(f"case {case} ({kind} of {base}): {message}", file=sys.stderr)
    if failures:
        print(
            f"{len(failures)} cases escaped: decode_image must raise only ImageDecodeError",
            file=sys.stderr,
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
