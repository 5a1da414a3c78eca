"""Time to accuracy on flowers5: the `seed`, `fast` and `transfer` recipes side by side, same split.

For each seed, every recipe trains on the same stratified split (the split depends only on the
seed and the validation share). The target is the seed recipe's final validation accuracy (the
restored weights); for each recipe we report the time at which its validation accuracy first
reached that target, its final validation accuracy, its training time and the wall time of its
whole `train` call. Times count from the call: what a recipe does before its first epoch (the
transfer recipe's feature extraction, from JPEGs: its cache starts empty) is in them; the 64 px
pixels of seed and fast are decoded once first (their cache is warm). Mean +/- std over seeds.
`transfer+ft` is the transfer recipe with --finetune-epochs 6 (the last 2 stages).

    python bench/time_to_accuracy.py [--seeds 0 1 2] [--data ../shared/datasets/flowers5]
                                     [--recipes seed fast transfer transfer+ft]
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
import time
from collections.abc import Callable
from pathlib import Path

from imgclass import runtime
from imgclass.data.dataset import load_dataset
from imgclass.training import train

RECIPES = {
    "seed": {},
    "fast": {},
    "transfer": {},
    "transfer+ft": {"recipe": "transfer", "finetune_epochs": 6},
}
WALL = "bench_wall.json"  # in each run: the wall time of its train call


def reach_time(history: list[dict], target: float) -> float | None:
    """Seconds of training until the validation accuracy first reached `target`.

    The tolerance absorbs float32 accumulation (per-epoch accuracies) against float64 (final).
    """
    elapsed = itertools.accumulate(float(h["seconds"]) for h in history)
    return next((t for t, h in zip(elapsed, history) if float(h["val_acc"]) >= target - 1e-5), None)


def read_run(run: Path) -> tuple[list[dict], dict]:
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    return history, json.loads((run / "metrics.json").read_text())


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +/- {std:.3f}"


def flowers_runs(
    doc: str,
    prefix: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None,
) -> tuple[argparse.Namespace, Path]:
    """The options of every flowers5 benchmark (--data --seeds --out --table-only, plus its own);
    returns them and the folder of the runs, with the decode cache warmed unless --table-only."""
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers5"
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp folder)")
    parser.add_argument(
        "--table-only", action="store_true", help="do not train: tabulate the runs already in --out"
    )
    add_arguments(parser)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: not found (flowers5 lives in ../shared/datasets)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.table_only:
        load_dataset(args.data, 64)  # warm the decode cache: every run then reads it
    return args, args.out or Path(tempfile.mkdtemp(prefix=prefix))


def _recipes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))


def main() -> None:
    args, out = flowers_runs(__doc__, "tta-", _recipes)
    print(runtime.describe_cpu())  # the figures below are for this CPU, bf16 answer and load
    names = ["seed"] + [name for name in args.recipes if name != "seed"]
    rows = []
    for seed in args.seeds:
        if not args.table_only:
            for name in names:
                run = out / f"{name}-{seed}"
                options = {"recipe": name, **RECIPES[name]}
                cache = {"cache_dir": out / f"features-{seed}"} if "transfer" in name else {}
                started = time.perf_counter()
                train(args.data, run, seed=seed, overwrite=True, **options, **cache)
                (run / WALL).write_text(json.dumps(time.perf_counter() - started))
        target = read_run(out / f"seed-{seed}")[1]["val_accuracy"]
        for name in names:
            run = out / f"{name}-{seed}"
            history, metrics = read_run(run)
            wall = json.loads((run / WALL).read_text())
            trained = sum(float(h["seconds"]) for h in history)
            reach = reach_time(history, target)  # + what came before the first epoch
            before = wall - trained if "transfer" in name else 0.0  # seed, fast: decoded first
            rows.append(
                {
                    "recipe": name,
                    "seed": seed,
                    "target": target,
                    "reach": None if reach is None else before + reach,
                    "final": metrics["val_accuracy"],
                    "total": before + trained,
                    "wall": wall,
                }
            )
            print(f"seed {seed} {name}: {rows[-1]}", file=sys.stderr)
    print(f"\nflowers5, seeds {args.seeds}; target = the seed recipe's final validation accuracy")
    print(
        f"{'recipe':<12}{'reached target (s)':>24}{'final val acc':>24}{'time (s)':>24}"
        f"{'wall of train() (s)':>24}"
    )
    for name in names:
        mine = [r for r in rows if r["recipe"] == name]
        reached = [r["reach"] for r in mine if r["reach"] is not None]
        missed = len(mine) - len(reached)
        reach = mean_std(reached) + (f" ({missed} missed)" if missed else "")
        final, total, wall = ([r[k] for r in mine] for k in ("final", "total", "wall"))
        print(
            f"{name:<12}{reach:>24}{mean_std(final):>24}{mean_std(total):>24}{mean_std(wall):>24}"
        )
    seed_total = statistics.mean(r["total"] for r in rows if r["recipe"] == "seed")
    for name in names[1:]:
        reached = [r["reach"] for r in rows if r["recipe"] == name and r["reach"] is not None]
        gain = statistics.mean(r["final"] for r in rows if r["recipe"] == name) - statistics.mean(
            r["final"] for r in rows if r["recipe"] == "seed"
        )
        when = (
            f"reaches the seed's accuracy in {statistics.mean(reached) / seed_total:.2f} of "
            "the seed recipe's time, "
            if reached
            else ""
        )
        print(f"{name} {when}finishes {100 * gain:+.1f} points above seed")
    print(f"runs kept in {out}")


if __name__ == "__main__":
    main()
