"""imgclass tune: a real (tiny) study, its outputs, continuing it, pruning through fit()'s hook."""

from __future__ import annotations

import csv
import dataclasses
import json

import optuna
import pytest
import torch
from click.testing import CliRunner

from imgclass.cli import main
from imgclass.config import AugmentConfig, TrainConfig, build_config, load_recipe
from imgclass.runtime import Device
from imgclass.training import fit
from imgclass.training_setup import Tensors, load_data, new_model
from imgclass.tune import apply_params, search_space

OPTIONS = ["--recipe", "fast", "--image-size", "16", "--epochs", "2"]


def test_search_space_names_real_fields():
    space = search_space(build_config("fast"))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    fields |= {f"augment.{f.name}" for f in dataclasses.fields(AugmentConfig)}
    assert set(space) <= fields
    config = apply_params(build_config("fast"), {"lr": 0.05, "augment.zoom": 0.01})
    assert config.lr == 0.05 and config.augment.zoom == 0.01
    assert config.augment.translate == build_config("fast").augment.translate


def test_tune_writes_a_table_plot_and_recipe_and_continues(class_tree, tmp_path):
    out, cache = tmp_path / "tune", ["--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(
        main, ["tune", str(class_tree), "--trials", "2", "--out", str(out), *OPTIONS, *cache]
    )
    assert result.exit_code == 0, result.output
    assert {"study.db", "trials.csv", "history.png", "best_recipe.json"} <= {
        p.name for p in out.iterdir()
    }
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete", "complete"]
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert f"best: trial {best['trial']}" in result.output
    recipe = load_recipe(str(out / "best_recipe.json"))  # what train --recipe takes
    assert recipe.lr == pytest.approx(float(best["lr"]))
    assert recipe.augment.zoom == pytest.approx(float(best["augment.zoom"]))
    assert (recipe.model, recipe.image_size, recipe.epochs) == ("fast_resnet", 16, 2)

    again = CliRunner().invoke(
        main, ["tune", str(class_tree), "--trials", "3", "--out", str(out), *OPTIONS, *cache]
    )
    assert again.exit_code == 0, again.output
    assert len(list(csv.DictReader((out / "trials.csv").open()))) == 3  # one more, not three
    other = CliRunner().invoke(
        main,
        [
            "tune",
            str(class_tree),
            "--trials",
            "3",
            "--out",
            str(out),
            "--recipe",
            "seed",
            "--epochs",
            "2",
            *cache,
        ],
    )
    assert other.exit_code == 1 and "another recipe" in other.output


def test_a_hook_that_raises_ends_the_fit(class_tree, tmp_path):
    config = build_config("fast", image_size=16, epochs=3, batch_size=8)
    dataset = load_data(class_tree, config, tmp_path / "cache")
    data = Tensors.take(dataset, torch.arange(len(dataset.labels)).numpy())
    seen = []

    def prune(stats):
        seen.append(stats.epoch)
        raise optuna.TrialPruned

    device = Device.select("fp32")
    with pytest.raises(optuna.TrialPruned):
        fit(new_model(config, 3, device), data, data, config, device, 3, on_epoch=prune)
    assert seen == [1]


def test_best_recipe_round_trips(tmp_path):
    config = apply_params(build_config("fast"), {"dropout": 0.25, "batch_size": 32})
    path = tmp_path / "best.json"
    path.write_text(json.dumps({k: v for k, v in config.to_dict().items() if k != "recipe"}))
    assert load_recipe(str(path)) == dataclasses.replace(config, recipe="best")


def test_ctrl_c_stops_the_tune_and_keeps_the_study(class_tree, tmp_path, monkeypatch):
    from imgclass.training import FitResult
    from imgclass.tune import STUDY, STUDY_NAME, tune

    def interrupted_fit(*args, **kwargs):  # fit() ends an epoch early on Ctrl-C, then returns
        return FitResult(history=[], restored_epoch=0, interrupted=True)

    monkeypatch.setattr("imgclass.tune.fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        tune(
            class_tree,
            tmp_path / "tune",
            2,
            recipe="fast",
            image_size=16,
            cache_dir=tmp_path / "cache",
        )
    study = optuna.load_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 'tune' / STUDY}"
    )
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]
