"""tune(): Optuna search over a recipe's learning rate, batch size, dropout and augmentation.

Every trial trains the recipe's model on the same split (the recipe's seed and val_split, as
`train` would draw it) with the trial's values; the objective is the validation loss of the
weights fit() keeps. TPE sampler seeded by the recipe's seed; MedianPruner on each epoch's
validation loss (through fit()'s per-epoch hook). The study lives in OUT/study.db (SQLite):
the same command run again continues it until `trials` trials have finished (one tune process
per folder). Outputs: trials.csv, history.png and best_recipe.json (a recipe file for
`train --recipe`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)
from optuna.trial import TrialState

from imgclass import atomic, runtime
from imgclass.config import TrainConfig, build_config
from imgclass.plots import plot_trials
from imgclass.runtime import Device
from imgclass.training import EpochStats, fit
from imgclass.training_setup import setup_training

log = logging.getLogger(__name__)

STUDY = "study.db"
STUDY_NAME = "imgclass-tune"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def search_space(base: TrainConfig) -> dict[str, BaseDistribution]:
    """TrainConfig field ("augment.<field>" for AugmentConfig) -> its range. One line a field;
    no augmentation for a head trained on cached features (it sees no images)."""
    space = {
        "lr": FloatDistribution(base.lr / 10, base.lr * 10, log=True),  # around the recipe's
        "batch_size": CategoricalDistribution([16, 32, 64, 128]),  # images per step
        "dropout": FloatDistribution(0.0, 0.5),  # before the classifier
    }
    return (
        space
        if base.cached_features
        else {
            **space,
            "augment.rotation": FloatDistribution(0.0, 0.15),  # fraction of a full turn
            "augment.zoom": FloatDistribution(0.0, 0.3),  # fraction of the side
            "augment.translate": FloatDistribution(0.0, 0.2),  # fraction of the side
            "augment.mixup": FloatDistribution(0.0, 0.4),  # Beta concentration; 0 = off
            "augment.cutmix": FloatDistribution(0.0, 1.0),  # Beta concentration; 0 = off
        }
    )


def apply_params(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The base recipe with a trial's values (search_space names)."""
    augment = {k.removeprefix("augment."): v for k, v in params.items() if k.startswith("augment.")}
    top = {k: v for k, v in params.items() if not k.startswith("augment.")}
    return dataclasses.replace(base, **top, augment=dataclasses.replace(base.augment, **augment))


@dataclass
class TuneResult:
    out: Path
    study: optuna.Study
    best_config: TrainConfig
    best_val_acc: float
    rows: list[dict]  # trials.csv

    def ranked(self) -> list[dict]:
        """The complete trials, best (lowest validation loss) first."""
        return sorted(
            (r for r in self.rows if r["state"] == "complete"), key=lambda r: r["val_loss"]
        )


def _open_study(out: Path, base: TrainConfig, data_dir: Path) -> optuna.Study:
    """The study of out/study.db, created or continued; ValueError if it tunes something else."""
    study = optuna.create_study(
        storage=f"sqlite:///{out / STUDY}",
        study_name=STUDY_NAME,
        direction="minimize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    )
    described = {"base_config": base.to_dict(), "data_dir": str(data_dir.resolve())}
    stored = {k: study.user_attrs.get(k) for k in described}
    if not study.trials and not study.user_attrs:
        for key, value in described.items():
            study.set_user_attr(key, value)
    elif stored != json.loads(json.dumps(described)):
        raise ValueError(
            f"{out / STUDY}: a study of other data or another recipe; choose another --out"
        )
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning("trial %d: left running by an interrupted tune, marked failed", trial.number)
        study.tell(trial.number, state=TrialState.FAIL)
    return study


def _rows(study: optuna.Study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "val_loss": t.value,
                "val_acc": t.user_attrs.get("val_acc"),
                "epochs": t.user_attrs.get("epochs"),
                "seconds": t.user_attrs.get("seconds"),
                **t.params,
            }
        )
    return rows


def _write_outputs(
    out: Path, study: optuna.Study, base: TrainConfig
) -> tuple[list[dict], TrainConfig]:
    rows = _rows(study)
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(out / "trials.csv", buffer.getvalue())
    complete = [row for row in rows if row["state"] == "complete"]
    plot_trials(
        [row["trial"] for row in complete],
        [row["val_loss"] for row in complete],
        "validation loss",
        out / "history.png",
    )
    best = apply_params(base, study.best_trial.params)
    recipe = {k: v for k, v in best.to_dict().items() if k != "recipe"}
    atomic.write_json(out / "best_recipe.json", recipe)
    return rows, best


def tune(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    trials: int,
    *,
    recipe: str | None = None,
    timeout: float | None = None,
    cache_dir: str | os.PathLike | None = None,
    **overrides,
) -> TuneResult:
    """Search until `trials` trials have finished in out/study.db, or `timeout` seconds pass.

    overrides: TrainConfig fields fixed for every trial (epochs, image_size, model, ...).
    """
    runtime.configure()
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    base = build_config(recipe, **overrides)
    data_dir, out = Path(data_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # imgclass logs each trial itself
    study = _open_study(out, base, data_dir)
    setup = setup_training(data_dir, base, cache_dir, Device.select(base.precision, base.device))
    space = search_space(base)
    started = time.monotonic()
    while True:
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        if done >= trials:
            break
        if timeout is not None and time.monotonic() - started > timeout:
            log.warning("timeout after %.0f s: %d of %d trials finished", timeout, done, trials)
            break
        trial = study.ask(space)
        config = apply_params(base, trial.params)
        log.info(
            "trial %d (%d of %d): %s",
            trial.number,
            done + 1,
            trials,
            ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in trial.params.items()
            ),
        )

        def prune(stats: EpochStats, trial: optuna.Trial = trial) -> None:
            trial.report(stats.val_loss, stats.epoch)
            trial.set_user_attr("epochs", stats.epoch)
            if not math.isfinite(stats.val_loss) or trial.should_prune():
                raise optuna.TrialPruned(f"epoch {stats.epoch}: val loss {stats.val_loss:.4f}")

        trial_start = time.perf_counter()
        try:
            fitted = fit(
                setup.new_model(config),
                setup.train,
                setup.val,
                config,
                setup.device,
                setup.num_classes,
                on_epoch=prune,
            )
        except optuna.TrialPruned as pruned:
            log.info("trial %d pruned at %s", trial.number, pruned)
            trial.set_user_attr("seconds", time.perf_counter() - trial_start)
            study.tell(trial, state=TrialState.PRUNED)
            continue
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        if fitted.interrupted:  # Ctrl-C: fit() ended early; the study keeps the finished trials
            study.tell(trial, state=TrialState.FAIL)
            raise KeyboardInterrupt
        kept = fitted.history[fitted.restored_epoch - 1]
        trial.set_user_attr("val_acc", kept.val_acc)
        trial.set_user_attr("seconds", time.perf_counter() - trial_start)
        study.tell(trial, kept.val_loss)
        log.info(
            "trial %d: val loss %.4f, val acc %.4f (best so far: trial %d, %.4f)",
            trial.number,
            kept.val_loss,
            kept.val_acc,
            study.best_trial.number,
            study.best_value,
        )
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ValueError(f"{out}: no trial completed (all pruned or failed); nothing to write")
    rows, best = _write_outputs(out, study, base)
    return TuneResult(out, study, best, study.best_trial.user_attrs["val_acc"], rows)
