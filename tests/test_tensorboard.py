"""TensorBoard event files when the package is installed; the CSV history always."""

from __future__ import annotations

import csv
import sys

import pytest

from imgclass.training import train
from tests.conftest import QUICK, make_class_tree

OPTIONS = {"image_size": 16, "epochs": 2, "batch_size": 8, "recipe": "fast", **QUICK}


def test_event_files_hold_the_history(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_class_tree(tmp_path / "data", per_class=8, size=16)
    run = train(data, tmp_path / "run", cache_dir=tmp_path / "cache", **OPTIONS).run_dir
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    history = list(csv.DictReader((run / "history.csv").open()))
    for tag, column in (("val/loss", "val_loss"), ("train/acc", "train_acc"), ("lr", "lr")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx(
            [float(row[column]) for row in history], rel=1e-6
        )


@pytest.mark.slow
def test_without_tensorboard_only_the_csv(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    data = make_class_tree(tmp_path / "data", per_class=8, size=16)
    run = train(data, tmp_path / "run", cache_dir=tmp_path / "cache", **OPTIONS).run_dir
    assert (run / "history.csv").is_file() and not (run / "tensorboard").exists()
