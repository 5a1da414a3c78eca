"""One optimiser step over the seed CNN's 8.8 M parameters: PyTorch's fused kernel (what
`imgclass.optim.build_optimizer` builds on CPUs and GPUs) against its default multi-tensor
("foreach") implementation, for Adam (the seed recipe) and SGD with Nesterov momentum (fast).

Both variants step the same parameters with the same gradients; repetitions interleave them.
Median [min-max] milliseconds per step, and the ratio.

    python bench/optimizer_step.py [--reps 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from imgclass import runtime
from imgclass.models import build_model

OPTIMIZERS = {
    "adam": lambda params, fused: torch.optim.Adam(params, lr=5e-4, fused=fused),
    "sgd": lambda params, fused: torch.optim.SGD(
        params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=fused
    ),
}


def step_ms(optimizer: torch.optim.Optimizer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per repetition")
    args = parser.parse_args()
    runtime.configure()
    print(runtime.describe_cpu())  # the figures below are for this CPU, bf16 answer and load
    print(
        f"seed CNN parameters, {torch.get_num_threads()} threads; ms per step, median of "
        f"{args.reps} interleaved repetitions [min-max]"
    )
    print(f"{'optimiser':<10}{'fused':>22}{'foreach (default)':>22}{'speed-up':>10}")
    for name, make in OPTIMIZERS.items():
        times: dict[bool, list[float]] = {True: [], False: []}
        optimizers = {}
        for fused in (True, False):
            params = list(build_model("seed_cnn", 6, 64).parameters())
            for p in params:
                p.grad = torch.randn_like(p)
            optimizers[fused] = make(params, fused)
            step_ms(optimizers[fused], 3)  # state allocated, caches warm
        for _ in range(args.reps):
            for fused in (True, False):
                times[fused].append(step_ms(optimizers[fused], args.steps))
        cells = [
            f"{statistics.median(t):.1f} [{min(t):.1f}-{max(t):.1f}]"
            for t in (times[True], times[False])
        ]
        ratio = statistics.median(times[False]) / statistics.median(times[True])
        print(f"{name:<10}{cells[0]:>22}{cells[1]:>22}{ratio:>9.1f}x")


if __name__ == "__main__":
    main()
