"""How training's cost grows with the data: time per image and private memory against N images.

For each N (default 10k, 50k, 200k) it makes, once, a labelled set of N synthetic real-looking
JPEGs (10 classes told apart by hue and shape, on noisy gradients, 96 px; generated, never
downloaded) under --work, then runs `imgclass train` on it in a fresh process with a cold decode
cache, once per process count (1, and 2 under torchrun), and reports:

- scan: the seconds `scan_folder` takes on the set (hashing every file), measured here;
- decode: images per second of the first run's decoding (train.log's lines around it);
- epoch: microseconds per training image in the last epoch (history.csv: the training pass);
- anon / file: the peak of the resident memory of the training processes (not torchrun's
  launcher), summed over ranks at each poll (every 0.2 s, /proc/PID/status), apart: anonymous
  (private to the process: what grows with a private copy of the data) and file-backed (page
  cache mapped in: shared).

    python bench/growth.py [--sizes 10000 50000 200000] [--ranks 1 2] [--work /tmp/growth]
                           [-- TRAIN OPTIONS]

TRAIN OPTIONS default to `--recipe fast --image-size 32 --epochs 2` (the fast recipe at CIFAR's
size: the data, not the model, sets the cost). Linux only (/proc). Give the CPU flags and the
load average beside the figures (printed first).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = 10
SIZE = 96
DEFAULT_TRAIN = ["--recipe", "fast", "--image-size", "32", "--epochs", "2"]


def _image(index: int) -> tuple[int, bytes]:
    """Image `index` of the set: its class and JPEG bytes (the same for the same index)."""
    rng = np.random.default_rng(index)
    label = index % CLASSES
    hue = np.array(Image.new("HSV", (1, 1), (label * 255 // CLASSES, 180, 200)).convert("RGB"))
    ramp = np.linspace(0.4, 1.0, SIZE)[:, None, None] * rng.uniform(0.6, 1.0, (1, SIZE, 3))
    noise = rng.normal(0, 18, (SIZE, SIZE, 3))
    pixels = np.clip(ramp * hue.reshape(1, 1, 3) + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    x, y = rng.integers(8, SIZE - 40, 2)
    box = (int(x), int(y), int(x) + 32, int(y) + 32)
    shade = tuple(int(v) for v in rng.integers(0, 255, 3))
    (draw.ellipse if label % 2 else draw.rectangle)(box, fill=shade)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=int(rng.integers(70, 95)))
    return label, out.getvalue()


def _write(args: tuple[Path, int]) -> None:
    root, index = args
    label, content = _image(index)
    (root / f"class{label}" / f"{index:07d}.jpg").write_bytes(content)


def make_set(root: Path, n: int) -> Path:
    """root holds N images in class folders once this returns (made once, reused after)."""
    done = root / ".complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for label in range(CLASSES):
        (root / f"class{label}").mkdir(parents=True)
    with Pool(os.cpu_count()) as pool:
        pool.map(_write, [(root, i) for i in range(n)], chunksize=512)
    done.write_text(str(n))
    return root


def _tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _rss(pids: list[int]) -> tuple[int, int]:
    """(RssAnon, RssFile) in bytes, summed over the training processes among pids (torchrun's
    launcher left out)."""
    anon = file = 0
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if b"imgclass" not in command or b"torch.distributed.run" in command:
            continue
        anon += int(status.get("RssAnon", "0 kB").split()[0]) * 1024
        file += int(status.get("RssFile", "0 kB").split()[0]) * 1024
    return anon, file


def _log_times(log: Path) -> dict[str, float]:
    """The time of train.log's decode lines, in seconds since the epoch."""
    times = {}
    for line in log.read_text().splitlines():
        stamp = line[:23]
        if " decoding " in line and "images to" in line:
            times["decode_start"] = _seconds(stamp)
            times["decoded"] = int(line.split(" decoding ")[1].split()[0])
        elif "decoded now" in line and "decode_start" in times and "decode_end" not in times:
            times["decode_end"] = _seconds(stamp)
    return times


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run(data: Path, out: Path, cache: Path, ranks: int, options: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    if ranks == 1:
        command = [sys.executable, "-m", "imgclass"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={ranks}", "-m", "imgclass"]
    command += ["train", str(data), "--out", str(out), "--cache-dir", str(cache)]
    command += ["--no-export", "--no-report", *options]
    peak = {"anon": 0, "file": 0}
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()))
    reader.start()
    while process.poll() is None:
        anon, file = _rss(_tree(process.pid))
        peak["anon"], peak["file"] = max(peak["anon"], anon), max(peak["file"], file)
        time.sleep(0.2)
    reader.join()
    wall = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{b''.join(stderr).decode()[-3000:]}")
    with open(out / "history.csv") as f:
        last = list(csv.DictReader(f))[-1]
    metrics = json.loads((out / "metrics.json").read_text())
    times = _log_times(out / "train.log")
    return {
        "ranks": ranks,
        "wall_s": round(wall, 1),
        "decode_img_s": round(times["decoded"] / (times["decode_end"] - times["decode_start"]))
        if "decode_end" in times
        else None,
        "epoch_us_per_img": round(1e6 / float(last["images_per_s"]), 1),
        "peak_anon_mb": round(peak["anon"] / 1e6),
        "peak_file_mb": round(peak["file"] / 1e6),
        "train_images": metrics["train_images"],
        "val_accuracy": round(metrics["val_accuracy"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work", type=Path, default=Path("/tmp/growth"))
    parser.add_argument("train", nargs="*", help="options for imgclass train (after --)")
    args = parser.parse_args()
    options = args.train or DEFAULT_TRAIN
    from imgclass.runtime import describe_cpu

    print(describe_cpu())  # the CPU, its flags and the load average: the figures' context
    print(f"train options: {' '.join(options)}")
    rows = []
    for n in args.sizes:
        data = make_set(args.work / f"set-{n}", n)
        from imgclass.data.scan import scan_folder

        start = time.perf_counter()
        scan_folder(data)
        scan = time.perf_counter() - start
        for ranks in args.ranks:
            row = {"n": n, "scan_s": round(scan, 1)}
            row |= run(data, args.work / f"run-{n}-{ranks}", args.work / "cache", ranks, options)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"load average after: {os.getloadavg()}")
    (args.work / "growth.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
