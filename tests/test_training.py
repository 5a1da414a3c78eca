import csv
import io
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
import tqdm.auto
from safetensors.torch import load_file
from torch import nn

from imgclass import runtime
from imgclass import training as training_module
from imgclass.data import split as split_module
from imgclass.training import EarlyStopping, train
from tests.conftest import QUICK, make_class_tree

RUN_FILES = [
    "config.json",
    "split.json",
    "model.safetensors",
    "model.json",
    "history.csv",
    "metrics.json",
    "curves.png",
    "confusion.png",
    "confusion.json",
    "evaluation.json",
    "skipped.json",
    "train.log",
]


def test_early_stopping_keeps_the_lowest_validation_loss_and_waits_patience_epochs():
    model = nn.Linear(1, 1)
    stopper = EarlyStopping(patience=3)
    losses = [1.0, 0.8, 0.9, 0.85, 0.8]  # epoch 2 best; 3 epochs without a lower loss
    stops = []
    for epoch, loss in enumerate(losses, 1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        stops.append(stopper.should_stop(epoch, loss, model))
    assert stops == [False, False, False, False, True]
    assert stopper.restore(model, last_epoch=5) == 2 and model.weight.item() == 2.0
    without = EarlyStopping(0)
    assert not any(without.should_stop(e, 1.0 / e, model) for e in range(1, 20))
    assert without.restore(model, last_epoch=19) == 19 and model.weight.item() == 2.0


def test_trained_run_has_every_file_and_learns(trained_run):
    for name in RUN_FILES:
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    rows = list(csv.DictReader((trained_run / "history.csv").open()))
    assert len(rows) == metrics["final_epoch"] <= 4
    assert metrics["best_val_acc"] == max(float(r["val_acc"]) for r in rows)
    assert metrics["lowest_val_loss"] == min(float(r["val_loss"]) for r in rows)
    assert metrics["final_train_acc"] == float(rows[-1]["train_acc"])
    assert metrics["val_accuracy"] >= 0.9, "three solid colours must be easy to tell apart"
    meta = json.loads((trained_run / "model.json").read_text())
    assert meta["classes"] == ["blue", "green", "red"] and meta["image_size"] == 16
    assert meta["architecture"] == "seed_cnn" and "torch" in meta["versions"]
    split = json.loads((trained_run / "split.json").read_text())
    assert len(split["train"]) == 38 and len(split["val"]) == 10  # 20 % of 48 is 9.6
    val_paths = {e["path"] for e in split["val"]}
    assert not val_paths & {e["path"] for e in split["train"]}


def test_undecodable_file_is_skipped_named_and_counted(tmp_path, caplog):
    data = make_class_tree(tmp_path / "data", per_class=6)
    (data / "red" / "truncated.jpg").write_bytes((data / "red" / "red_000.jpg").read_bytes()[:200])
    (data / "blue" / "page.jpg").write_text("<html></html>")
    with caplog.at_level(logging.WARNING, logger="imgclass"):
        result = train(
            data, tmp_path / "run", image_size=8, epochs=1, batch_size=4, recipe="seed", **QUICK
        )
    assert result.metrics["skipped_files"] == 2
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert {s["path"] for s in skipped} == {"red/truncated.jpg", "blue/page.jpg"}
    assert "page.jpg: not an image" in caplog.text and "truncated.jpg" in caplog.text


TIMINGS = {"seconds", "images_per_s", "data_wait", "train_seconds", "total_seconds"}


def assert_same_results(run_a: Path, run_b: Path) -> None:
    """Two run folders hold the same split, history, metrics and weights (timings aside)."""

    def read(run, name):
        return json.loads((run / name).read_text())

    assert read(run_a, "split.json") == read(run_b, "split.json")
    rows_a, rows_b = (list(csv.DictReader((run / "history.csv").open())) for run in (run_a, run_b))
    assert [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in TIMINGS} for r in rows_b
    ]  # as text: bit-exact
    metrics_a, metrics_b = (
        {k: v for k, v in read(run, "metrics.json").items() if k not in TIMINGS}
        for run in (run_a, run_b)
    )
    assert metrics_a == metrics_b
    assert read(run_a, "evaluation.json") == read(run_b, "evaluation.json")
    weights_a, weights_b = (load_file(run / "model.safetensors") for run in (run_a, run_b))
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_same_seed_same_split_and_metrics(tmp_path, monkeypatch):
    for plot in ("training.plot_curves", "evaluation.plot_confusion"):  # not under test: slow
        module, name = plot.split(".")
        monkeypatch.setattr(f"imgclass.{module}.{name}", lambda *args: None)
    data = make_class_tree(tmp_path / "data", per_class=6)
    args = dict(
        image_size=8, epochs=2, batch_size=4, seed=5, precision="fp32", recipe="seed", **QUICK
    )
    train(data, tmp_path / "a", **args)
    train(data, tmp_path / "b", **args)
    assert_same_results(tmp_path / "a", tmp_path / "b")
    # and each random stream matters: were one left unseeded, the runs above would differ
    seeded = runtime.stream_seed
    for stream in ("split", "shuffle", "augment", "init"):

        def other_seed(seed, name, stream=stream):
            return seeded(seed + (name == stream), name)

        monkeypatch.setattr(runtime, "stream_seed", other_seed)
        monkeypatch.setattr(split_module, "stream_seed", other_seed)
        train(data, tmp_path / stream, **args)
        with pytest.raises(AssertionError):
            assert_same_results(tmp_path / "a", tmp_path / stream)


def test_refuses_to_overwrite_a_finished_run(trained_run):
    with pytest.raises(FileExistsError, match="finished run"):
        train(trained_run.parent / "data", trained_run, epochs=1)


def test_max_pixels_skips_a_huge_image_with_its_reason(tmp_path):
    from PIL import Image

    data = make_class_tree(tmp_path / "data", per_class=6)
    Image.new("RGB", (400, 300), (200, 40, 30)).save(data / "red" / "huge.png")
    result = train(
        data,
        tmp_path / "run",
        image_size=8,
        epochs=1,
        batch_size=4,
        max_pixels=100_000,
        recipe="seed",
        **QUICK,
    )
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert {"path": "red/huge.png", "reason": "too many pixels (400 x 300 > 100000)"} in skipped
    assert result.metrics["skipped_files"] == 1


@pytest.mark.slow
def test_every_regularisation_option_together_trains_and_learns(tmp_path):
    """MixUp+CutMix, random erasing, class weights, the balanced sampler, AdamW with cosine
    warm-up: a run completes, reports macro-F1 and still learns three colours. (TrivialAugment
    is left out here: its saturation, solarize and posterize ops erase the only cue, colour.)"""
    data = make_class_tree(tmp_path / "data", per_class=10)
    result = train(
        data,
        tmp_path / "run",
        recipe="seed",
        image_size=16,
        epochs=6,
        batch_size=8,
        seed=2,
        optimizer="adamw",
        weight_decay=0.01,
        schedule="cosine",
        warmup=0.2,
        lr=2e-3,
        label_smoothing=0.1,
        class_weights="auto",
        sampler="balanced",
        patience=0,
        augment={"random_erasing": 0.25, "mixup": 0.4, "cutmix": 1.0},
    )
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["augment"]["mixup"] == 0.4 and config["augment"]["hflip"] is True
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert all(0 <= float(r["val_macro_f1"]) <= 1 for r in rows)
    assert float(rows[0]["lr"]) == pytest.approx(2e-3 / 25)  # the warm-up starts at lr / 25
    # 6 validation images and a few dozen steps: judge learning by the best epoch and by the
    # training accuracy (against the dominant label of each mixed target)
    assert result.metrics["best_val_acc"] >= 0.99 and result.metrics["best_val_macro_f1"] >= 0.99
    assert float(rows[-1]["train_acc"]) >= 0.75
    ta = train(
        data,
        tmp_path / "ta",
        recipe="seed",
        image_size=16,
        epochs=1,
        batch_size=8,
        augment={"trivial_augment": True},
    )
    assert len(ta.history) == 1 and 0 < ta.history[0].train_loss < 10


def test_auto_class_weights_balance_the_loss():
    from imgclass.config import TrainConfig
    from imgclass.runtime import Device
    from imgclass.training_setup import class_weights

    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    weights = class_weights(labels, 3, TrainConfig(class_weights="auto"), Device.select("fp32"))
    torch.testing.assert_close(weights, torch.tensor([100 / 180, 100 / 90, 100 / 30]))
    counts = torch.bincount(labels).float()
    torch.testing.assert_close(weights * counts, torch.full((3,), 100 / 3))  # equal shares
    assert class_weights(labels, 3, TrainConfig(), Device.select("fp32")) is None


def test_train_shows_progress_where_someone_watches_and_is_quiet_when_asked(tmp_path, monkeypatch):
    """Issue 14.3: imgclass.train draws tqdm.auto's bars (a widget in a notebook, a line in a
    terminal, nothing in a log file) unless progress=False."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert training_module.tqdm is tqdm.auto.tqdm  # the notebook's widget inside Jupyter
    data = make_class_tree(tmp_path / "data", per_class=4)
    options = {"recipe": "seed", "image_size": 8, "epochs": 1, "batch_size": 4, **QUICK}
    for name, quiet in (("watched", {}), ("quiet", {"progress": False})):
        monkeypatch.setattr(sys, "stderr", Terminal())
        train(data, tmp_path / name, **options, **quiet)
        assert ("epoch 1/1" in sys.stderr.getvalue()) == (not quiet), sys.stderr.getvalue()
