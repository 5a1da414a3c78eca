"""The transfer recipe as a user runs it: the whole `imgclass train --recipe transfer` command.

For each seed (a split of its own): a cold run (an empty --cache-dir: every image decoded and its
features extracted) and a warm run (the same cache: the head alone), each in a fresh process.
Reports the validation accuracy, the command's wall time and its peak RSS.

    python bench/transfer.py [--data ../shared/datasets/flowers5] [--seeds 0 1 2]
                             [--kinds cold warm] [-- extra options]

With fine-tuning (`-- --finetune-epochs 6`), `--kinds cold` measures the whole command once per
seed (a warm run fine-tunes again: it saves only the extraction).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgclass.runtime import describe_cpu

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers5"


def run(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one command in a fresh process (os.wait4: its own
    resource usage)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return wall, usage.ru_maxrss * 1024 / 1e9  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kinds", nargs="+", choices=["cold", "warm"], default=["cold", "warm"])
    parser.add_argument("extra", nargs="*", help="more `imgclass train` options (after --)")
    args = parser.parse_args()
    print(describe_cpu())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        for seed in args.seeds:
            cache = Path(tmp) / f"cache-{seed}"
            for kind in args.kinds:
                out = Path(tmp) / f"{kind}-{seed}"
                command = [
                    sys.executable,
                    "-m",
                    "imgclass",
                    "train",
                    str(args.data),
                    "--recipe",
                    "transfer",
                    "--seed",
                    str(seed),
                    "--out",
                    str(out),
                    "--cache-dir",
                    str(cache),
                    *args.extra,
                ]
                wall, peak = run(command)
                metrics = json.loads((out / "metrics.json").read_text())
                rows.append(
                    {
                        "seed": seed,
                        "kind": kind,
                        "wall": wall,
                        "peak_gb": peak,
                        "val_acc": metrics["val_accuracy"],
                        "epochs": metrics["final_epoch"],
                    }
                )
                print(
                    f"seed {seed} {kind}: val acc {metrics['val_accuracy']:.4f}, "
                    f"{wall:.1f} s, peak RSS {peak:.2f} GB, {metrics['final_epoch']} epochs",
                    flush=True,
                )
    for kind in args.kinds:
        part = [r for r in rows if r["kind"] == kind]
        accs, walls = [r["val_acc"] * 100 for r in part], [r["wall"] for r in part]
        spread = (lambda v: f" +/- {statistics.stdev(v):.1f}") if len(part) > 1 else (lambda v: "")
        print(
            f"{kind}: val acc {statistics.mean(accs):.1f}{spread(accs)} %, wall "
            f"{statistics.mean(walls):.1f}{spread(walls)} s (max {max(walls):.1f} s)"
        )


if __name__ == "__main__":
    main()
