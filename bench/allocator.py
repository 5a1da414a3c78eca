"""The allocator setting of `imgclass.runtime.configure()`: training speed and memory against
glibc's defaults, on the seed CNN (64x64, batch 32, channels_last, fused Adam: imgclass's path).

Configurations, each in a fresh process (the setting is process-wide), interleaved:
- glibc: glibc's defaults. Blocks of 128 KiB and more are mmap'ed, and every freed one goes
  back to the OS, so each step maps and faults in its activation buffers anew.
- trim-0: big blocks from the heap (no mmap), with the heap trimmed whenever its top is free.
  This is what imgclass set before 2026-12-01 20:00, when ctypes masked the trim threshold
  2**62 to a C int: 0.
- imgclass: big blocks from the heap and no trimming below 2 GiB (`runtime.configure()`).

Per configuration: training images/s over the steps after warm-up; the process's peak RSS
(`ru_maxrss`) and its RSS after the last step, both above the RSS once model and optimiser
exist. Median [min-max] of the repetitions.

    python bench/allocator.py [--reps 3] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CONFIGS = ["glibc", "trim-0", "imgclass"]
WARMUP = 5


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def worker(config: str, steps: int) -> dict:
    import ctypes
    import resource

    import torch

    from imgclass import runtime

    if config == "glibc":
        torch.set_num_threads(runtime.usable_cores())
    else:
        runtime.configure()
    if config == "trim-0":
        mallopt = runtime._glibc_function("mallopt")
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        assert mallopt(-1, 0) == 1  # M_TRIM_THRESHOLD
    from imgclass.config import build_config
    from imgclass.models import build_model
    from imgclass.optim import build_optimizer

    model = build_model("seed_cnn", 6, 64).to(memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model, build_config("seed"))
    x = torch.rand(32, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (32,))
    base = _rss_mb()
    for step in range(WARMUP + steps):
        if step == WARMUP:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"img_s": steps * 32 / seconds, "peak_mb": peak - base, "end_mb": _rss_mb() - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="timed steps after 5 of warm-up")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return
    if not sys.platform.startswith("linux"):
        sys.exit("the allocator setting is glibc's: Linux only")
    from imgclass.runtime import describe_cpu  # here: the workers import torch themselves

    print(describe_cpu())  # the figures below are for this CPU, bf16 answer and load
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for rep in range(args.reps):
        for config in CONFIGS:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", config, "--steps", str(args.steps)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            runs[config].append(json.loads(out.strip().splitlines()[-1]))
            print(f"rep {rep + 1}/{args.reps} {config}: done", file=sys.stderr)
    print(
        f"\nseed CNN, 64x64, batch 32, {args.steps} steps; median of {args.reps} interleaved "
        "runs [min-max]; MiB above the RSS once model and optimiser exist"
    )
    print(
        f"{'allocator':<10}{'train img/s':>22}{'peak RSS (MiB)':>22}{'RSS at end (MiB)':>22}"
        f"{'speed vs glibc':>16}"
    )
    speed = statistics.median(r["img_s"] for r in runs["glibc"])
    for config in CONFIGS:
        cells = []
        for key in ("img_s", "peak_mb", "end_mb"):
            values = [r[key] for r in runs[config]]
            cells.append(f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]")
        ratio = statistics.median(r["img_s"] for r in runs[config]) / speed
        print(f"{config:<10}" + "".join(f"{c:>22}" for c in cells) + f"{ratio:>15.2f}x")


if __name__ == "__main__":
    main()
