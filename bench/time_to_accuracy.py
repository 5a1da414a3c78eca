"""Time to accuracy on flowers5: the `seed` recipe against the `fast` recipe, same split.

For each seed, both recipes train on the same stratified split (the split depends only on the
seed and the validation share). The target is the seed recipe's final validation accuracy (the
restored weights); for each recipe we report the training wall time at which its validation
accuracy first reached that target, its final validation accuracy and its total training time.
Mean +/- std over the seeds. Training time excludes decoding (the cache is warmed first).

    python bench/time_to_accuracy.py [--seeds 0 1 2] [--data ../shared/datasets/flowers5]
    python bench/time_to_accuracy.py --seeds 0 1 2 --out DIR --table-only   # re-read kept runs
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from imgclass import runtime
from imgclass.data.dataset import load_dataset
from imgclass.training import train

RECIPES = ("seed", "fast")


def reach_time(history: list[dict], target: float) -> float | None:
    """Seconds of training until the validation accuracy first reached `target`.

    The tolerance absorbs float32 accumulation (per-epoch accuracies) against float64 (final).
    """
    elapsed = itertools.accumulate(float(h["seconds"]) for h in history)
    return next((t for t, h in zip(elapsed, history) if float(h["val_acc"]) >= target - 1e-5),
                None)


def read_run(run: Path) -> tuple[list[dict], dict]:
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    return history, json.loads((run / "metrics.json").read_text())


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +/- {std:.3f}"


def flowers_runs(doc: str, prefix: str,
                 add_arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None,
                 ) -> tuple[argparse.Namespace, Path]:
    """The options of every flowers5 benchmark (--data --seeds --out --table-only, plus its own);
    returns them and the folder of the runs, with the decode cache warmed unless --table-only."""
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers5"
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--table-only", action="store_true",
                        help="do not train: tabulate the runs already in --out")
    add_arguments(parser)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: not found (flowers5 lives in ../shared/datasets)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.table_only:
        load_dataset(args.data, 64)  # warm the decode cache: every run then reads it
    return args, args.out or Path(tempfile.mkdtemp(prefix=prefix))


def main() -> None:
    args, out = flowers_runs(__doc__, "tta-")
    print(runtime.describe_cpu())  # the figures below are for this CPU, bf16 answer and load
    rows = []
    for seed in args.seeds:
        if not args.table_only:
            for recipe in RECIPES:
                train(args.data, out / f"{recipe}-{seed}", recipe=recipe, seed=seed,
                      overwrite=True)
        target = read_run(out / f"seed-{seed}")[1]["val_accuracy"]
        for recipe in RECIPES:
            history, metrics = read_run(out / f"{recipe}-{seed}")
            rows.append({"recipe": recipe, "seed": seed, "target": target,
                         "reach": reach_time(history, target),
                         "final": metrics["val_accuracy"], "total": metrics["train_seconds"]})
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
