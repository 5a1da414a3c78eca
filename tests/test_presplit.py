"""Issue 13.6: data split already (train/, val/ or valid/ or validation/, maybe test/, each of
class folders: the layout of Keras, timm and Ultralytics) trains on train, validates on val and
reports test at the end; it is never read as classes named train and val."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from click.testing import CliRunner

from imgclass.cli import main
from imgclass.data.scan import DataError, scan_folder
from imgclass.training import train
from tests.conftest import QUICK, ctrl_c_after_epoch, make_class_tree

OPTIONS = {"recipe": "seed", "image_size": 8, "epochs": 2, "batch_size": 8, "seed": 3, **QUICK}


@pytest.fixture
def presplit(tmp_path):
    root = tmp_path / "data"
    make_class_tree(root / "train", per_class=8, seed=0)
    make_class_tree(root / "valid", per_class=3, seed=1)
    make_class_tree(root / "test", per_class=2, seed=2)
    return root


def test_split_folders_are_the_split_and_test_is_reported(presplit, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="imgclass"):
        result = train(presplit, tmp_path / "run", **OPTIONS)
    assert (
        f"{presplit}: split already: training on train/, validating on valid/, testing on test/"
    ) in caplog.text
    assert "training on 24 images, validating on 9, testing on 6 at the end" in caplog.text
    assert result.classes == ["blue", "green", "red"]
    split = json.loads((result.run_dir / "split.json").read_text())
    assert split["given"] == {"train": "train", "val": "valid", "test": "test"}
    for side, folder, count in (("train", "train", 24), ("val", "valid", 9), ("test", "test", 6)):
        assert len(split[side]) == count
        assert all(entry["path"].startswith(f"{folder}/{entry['label']}/") for entry in split[side])
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["train_images"] == 24 and metrics["val_images"] == 9
    assert metrics["test_images"] == 6 and 0 <= metrics["test_accuracy"] <= 1
    assert "test accuracy" in caplog.text and "on the 6 images of test/" in caplog.text


@pytest.mark.slow
def test_a_presplit_run_resumes_with_its_test_side(presplit, tmp_path, monkeypatch):
    ctrl_c_after_epoch(monkeypatch, 1)
    cut = train(presplit, tmp_path / "run", **OPTIONS)
    monkeypatch.undo()
    assert cut.interrupted
    (cut.run_dir / "metrics.json").unlink()  # as after a kill
    resumed = train(resume=cut.run_dir)
    whole = train(presplit, tmp_path / "whole", **OPTIONS)
    assert resumed.metrics["test_images"] == 6
    assert resumed.metrics["test_accuracy"] == whole.metrics["test_accuracy"]


def test_without_test_and_with_any_case_of_the_names(tmp_path):
    root = tmp_path / "data"
    make_class_tree(root / "Train", per_class=4, seed=0)
    make_class_tree(root / "VALIDATION", per_class=2, seed=1)
    manifest = scan_folder(root)
    assert manifest.sides == {"train": "Train", "val": "VALIDATION"}
    result = train(root, tmp_path / "run", **OPTIONS)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert "test_accuracy" not in metrics and metrics["val_images"] == 6


def test_folders_named_like_sides_but_holding_images_are_classes(tmp_path):
    colours = make_class_tree(tmp_path / "colours", per_class=3)
    root = tmp_path / "data"
    for name, colour in (("train", "red"), ("val", "blue")):  # images directly inside
        shutil.copytree(colours / colour, root / name)
    manifest = scan_folder(root)
    assert manifest.sides == {} and manifest.classes == ["train", "val"]
    split = tmp_path / "split"
    for name in ("train", "val", "extra"):  # a third folder: no split layout either
        make_class_tree(split / name, per_class=2)
    assert scan_folder(split).sides == {}
    assert scan_folder(split).classes == ["extra", "train", "val"]


@pytest.mark.slow
def test_a_class_without_training_images_and_copies_across_sides(presplit, tmp_path, caplog):
    shutil.copy(
        next((presplit / "train" / "red").iterdir()), presplit / "valid" / "red" / "copy.jpg"
    )
    with caplog.at_level(logging.WARNING, logger="imgclass"):
        train(presplit, tmp_path / "run", **OPTIONS)
    assert (
        "1 images of valid/ have the same content as a training image: its accuracy is not "
        "a held-out figure"
    ) in caplog.text
    make_class_tree(presplit / "valid", per_class=2, classes={"purple": (128, 0, 128)})
    with pytest.raises(DataError, match=r"^no training images \(train/\) for class purple$"):
        train(presplit, tmp_path / "run2", **OPTIONS)


def test_scan_says_which_layout_it_found(presplit):
    result = CliRunner().invoke(main, ["scan", str(presplit), "--image-size", "8"])
    assert result.exit_code == 0, result.output
    assert "split already: training on train/, validating on valid/, testing on test/" in (
        result.output
    )
