"""The seed recipe with and without MixUp/CutMix and label smoothing on flowers5, same splits.

Each variant is the seed recipe (Keras CNN, Adam 5e-4, batch 32, <= 10 epochs, early stopping on
validation loss with patience 3) with some options added; every variant trains on the same split
for a given seed. Reported per variant, mean +/- std over the seeds: the final validation accuracy
and macro-F1 (the restored weights), the restored epoch and the training time.

    python bench/regularisation.py [--seeds 0 1 2] [--variants seed mix+ls] [--out DIR]
    python bench/regularisation.py --out DIR --table-only   # re-read the kept runs

Runs already finished in --out (DIR/<variant>-<seed> with metrics.json) are not trained again.
"""

from __future__ import annotations

import argparse

from time_to_accuracy import flowers_runs, mean_std, read_run

from imgclass import runtime
from imgclass.training import train

VARIANTS: dict[str, dict] = {
    "seed": {},
    "ls": {"label_smoothing": 0.1},
    "mix": {"augment": {"mixup": 0.2, "cutmix": 1.0}},
    "mix+ls": {"label_smoothing": 0.1, "augment": {"mixup": 0.2, "cutmix": 1.0}},
}


def describe(options: dict) -> str:
    flat = {**{k: v for k, v in options.items() if k != "augment"}, **options.get("augment", {})}
    return ", ".join(f"{k} {v}" for k, v in flat.items()) or "(the reference)"


def main() -> None:
    def variants(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--variants", nargs="+", choices=list(VARIANTS), default=["seed", "mix+ls"]
        )

    args, out = flowers_runs(__doc__, "regularisation-", variants)
    print(runtime.describe_cpu())  # the figures below are for this CPU, bf16 answer and load
    if not args.table_only:
        for seed in args.seeds:
            for variant in args.variants:
                run = out / f"{variant}-{seed}"
                if not (run / "metrics.json").is_file():
                    train(
                        args.data,
                        run,
                        recipe="seed",
                        seed=seed,
                        overwrite=True,
                        **VARIANTS[variant],
                    )
    print(f"\nflowers5, seed recipe, seeds {args.seeds}; runs in {out}")
    print(
        f"{'variant':<10}{'options':<44}{'val acc':>18}{'val macro-F1':>18}"
        f"{'restored epoch':>18}{'train time (s)':>22}"
    )
    for variant in args.variants:
        metrics = [read_run(out / f"{variant}-{seed}")[1] for seed in args.seeds]
        print(
            f"{variant:<10}{describe(VARIANTS[variant]):<44}"
            f"{mean_std([m['val_accuracy'] for m in metrics]):>18}"
            f"{mean_std([m['val_macro_f1'] for m in metrics]):>18}"
            f"{mean_std([m['restored_epoch'] for m in metrics]):>18}"
            f"{mean_std([m['train_seconds'] for m in metrics]):>22}"
        )


if __name__ == "__main__":
    main()
