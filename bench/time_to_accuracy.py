"""Time to accuracy on flowers5: the `seed` recipe against the `fast` recipe, same split.

For each seed, both recipes train on the same stratified split (the split depends only on the
seed and the validation share). The target is the seed recipe's final validation accuracy (the
restored weights); for each recipe we report the training wall time at which its validation
accuracy first reached that target, its final validation accuracy and its total training time.
Mean +/- std over the seeds. Training time excludes decoding (the cache is warmed first).

    python bench/time_to_accuracy.py [--seeds 0 1 2] [--data ../shared/datasets/flowers5]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import sys
import tempfile
from pathlib import Path

from imgclass.data.dataset import load_dataset
from imgclass.training import train

RECIPES = ("seed", "fast")


def reach_time(history, target: float) -> float | None:
    """Seconds of training until the validation accuracy first reached `target`."""
    elapsed = itertools.accumulate(h.seconds for h in history)
    return next((t for t, h in zip(elapsed, history) if h.val_acc >= target - 1e-9), None)


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +/- {std:.3f}"


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers5"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp folder)")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: not found (flowers5 lives in ../shared/datasets)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or Path(tempfile.mkdtemp(prefix="tta-"))
    load_dataset(args.data, 64)  # warm the decode cache: both recipes then read it
    rows = []
    for seed in args.seeds:
        results = {r: train(args.data, out / f"{r}-{seed}", recipe=r, seed=seed, overwrite=True)
                   for r in RECIPES}
        target = results["seed"].metrics["val_accuracy"]
        for recipe, result in results.items():
            rows.append({"recipe": recipe, "seed": seed, "target": target,
                         "reach": reach_time(result.history, target),
                         "final": result.metrics["val_accuracy"],
                         "total": result.metrics["train_seconds"]})
            print(f"seed {seed} {recipe}: {rows[-1]}", file=sys.stderr)
    print(f"\nflowers5, seeds {args.seeds}; target = the seed recipe's final validation accuracy")
    print(f"{'recipe':<8}{'reached target (s)':>24}{'final val acc':>24}{'total time (s)':>24}")
    for recipe in RECIPES:
        mine = [r for r in rows if r["recipe"] == recipe]
        reached = [r["reach"] for r in mine if r["reach"] is not None]
        missed = len(mine) - len(reached)
        reach = mean_std(reached) + (f" ({missed} missed)" if missed else "")
        print(f"{recipe:<8}{reach:>24}{mean_std([r['final'] for r in mine]):>24}"
              f"{mean_std([r['total'] for r in mine]):>24}")
    seed_total = statistics.mean(r["total"] for r in rows if r["recipe"] == "seed")
    fast_reach = [r["reach"] for r in rows if r["recipe"] == "fast" and r["reach"] is not None]
    if fast_reach:
        print(f"fast reaches the seed's accuracy in {statistics.mean(fast_reach) / seed_total:.2f}"
              " of the seed recipe's total time")
    gain = statistics.mean(r["final"] for r in rows if r["recipe"] == "fast") - statistics.mean(
        r["final"] for r in rows if r["recipe"] == "seed")
    print(f"fast finishes {100 * gain:+.1f} points above seed; runs kept in {out}")


if __name__ == "__main__":
    main()
