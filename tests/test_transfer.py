"""The transfer recipe: EfficientNet-Lite0's ImageNet features (the weights installed with
imgclass), computed once and cached, a new head trained on them; the run is a normal run (one
model from pixels to classes: evaluate, predict, export, serve, report, resume)."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from imgclass.checkpoint import load_model
from imgclass.cli import main
from imgclass.config import TrainConfig, build_config
from imgclass.data.features import ONNX_FILE
from imgclass.data.scan import DataError
from imgclass.evaluation import evaluate
from imgclass.lrfind import lr_find
from imgclass.models.backbones import Backbone, TopStages, imagenet_file, load_pretrained
from imgclass.predict import Predictor
from imgclass.training import train
from imgclass.tune import search_space
from imgclass.val_predictions import VAL_PREDICTIONS, ValPredictions
from tests.conftest import QUICK, ctrl_c_after_epoch, make_class_tree
from tests.service import request, running_service

OPTIONS = {"recipe": "transfer", "image_size": 32, "epochs": 6, "patience": 0, "precision": "fp32"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_tree(tmp_path_factory.mktemp("transfer") / "data", per_class=8, size=40)


@pytest.fixture(autouse=True)
def _info(caplog):
    with caplog.at_level(logging.INFO, logger="imgclass"):
        yield


@pytest.mark.slow
def test_transfer_run_caches_features_and_is_a_normal_run(data, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = train(data, tmp_path / "first", cache_dir=cache, **OPTIONS)
    assert "extracting tf_efficientnet_lite0 features of 24 images at 32x32" in caplog.text
    assert "training its new head on the backbone's cached features" in caplog.text
    assert "features read from the cache (memory-mapped)" in caplog.text  # no copy in memory
    [folder] = (cache / "features").glob("tf_efficientnet_lite0-*/32x32")
    assert (folder / ONNX_FILE).is_file()  # extracted by ONNX Runtime on the CPU
    config = json.loads((first.run_dir / "config.json").read_text())
    weights = imagenet_file("tf_efficientnet_lite0")
    assert (
        config["pretrained_weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    )
    assert config["cached_features"] and config["model"] == "tf_efficientnet_lite0"

    # one model from pixels to classes: the backbone with the trained head
    loaded = load_model(first.run_dir)
    assert isinstance(loaded.model, Backbone) and loaded.meta.image_size == 32
    pristine = Backbone("tf_efficientnet_lite0", 3)
    load_pretrained(pristine, "imagenet")
    body = {k: v for k, v in pristine.state_dict().items() if "classifier" not in k}
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in body.items())  # frozen
    assert loaded.model.head.weight.abs().sum() > 0  # trained (it starts at zero)
    validated = ValPredictions.read(first.run_dir / VAL_PREDICTIONS, first.classes)
    pixels_side = Predictor(first.run_dir, backend="pytorch", precision="fp32")
    again = pixels_side.predict([data / p for p in validated.paths], top_k=3)
    for row, prediction in zip(validated.probabilities, again):
        order = np.argsort(-row)
        assert prediction.labels == [first.classes[i] for i in order]
        assert prediction.probabilities == pytest.approx(row[order].tolist(), abs=1e-4)
    onnx_side = Predictor(first.run_dir, backend="onnx")  # model.onnx: the whole model,
    graph = onnx.load(str(first.run_dir / "model.onnx")).graph  # the cached body + the head
    assert [node.op_type for node in graph.node][-2:] == ["Gemm", "Softmax"]
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert (
        np.abs(onnx_side.predict_pixels(pixels) - pixels_side.predict_pixels(pixels)).max() < 1e-4
    )
    assert evaluate(first.run_dir, out=tmp_path / "eval").accuracy == pytest.approx(
        json.loads((first.run_dir / "metrics.json").read_text())["val_accuracy"]
    )
    assert (first.run_dir / "report.html").stat().st_size > 10_000
    with running_service(first.run_dir, tmp_path) as url:
        status, answer = request(f"{url}/predict", (data / validated.paths[0]).read_bytes())
    assert status == 200 and answer["predictions"][0]["top"][0]["label"] == again[0].label

    caplog.clear()  # the same data again: nothing decoded, nothing extracted, the same run
    second = train(data, tmp_path / "second", cache_dir=cache, export=False, **OPTIONS)
    assert "extracting" not in caplog.text and "decoding" not in caplog.text
    assert [h.val_loss for h in second.history] == [h.val_loss for h in first.history]


@pytest.mark.slow
def test_transfer_resumes_as_the_uninterrupted_run(data, tmp_path, monkeypatch):
    options = {**OPTIONS, **QUICK}
    whole = train(data, tmp_path / "whole", cache_dir=tmp_path / "cache", **options)
    ctrl_c_after_epoch(monkeypatch, 3)
    cut = train(data, tmp_path / "cut", cache_dir=tmp_path / "cache", **options)
    assert cut.interrupted and len(cut.history) == 3
    monkeypatch.undo()
    (cut.run_dir / "metrics.json").unlink()  # as after a kill: resumable from the checkpoint
    resumed = train(resume=cut.run_dir, cache_dir=tmp_path / "cache", **QUICK)
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in whole.history]
    a, b = load_model(whole.run_dir).model, load_model(resumed.run_dir).model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.slow
def test_finetuning_trains_every_layer_and_resumes_in_either_stage(data, tmp_path, monkeypatch):
    """--finetune-epochs N: after the head, every layer for N epochs on the images (the epochs
    numbered after the head's); a run cut in the fine-tuning stage resumes as the whole one."""
    options = {
        **OPTIONS,
        "epochs": 3,
        "finetune_epochs": 2,
        "finetune_stages": 0,
        "finetune_lr": 1e-3,
        "backbone_lr_scale": 0.1,
        **QUICK,
    }
    whole = train(data, tmp_path / "whole", cache_dir=tmp_path / "cache", **options)
    assert [h.epoch for h in whole.history] == [1, 2, 3, 4, 5] and whole.restored_epoch == 5
    tuned = load_model(whole.run_dir).model
    pristine = Backbone("tf_efficientnet_lite0", 3)
    load_pretrained(pristine, "imagenet")
    stem = "net.conv_stem.weight"
    assert not torch.equal(tuned.state_dict()[stem], pristine.state_dict()[stem])

    ctrl_c_after_epoch(monkeypatch, 4)  # the first fine-tuning epoch
    cut = train(data, tmp_path / "cut", cache_dir=tmp_path / "cache", **options)
    assert cut.interrupted and len(cut.history) == 4
    monkeypatch.undo()
    (cut.run_dir / "metrics.json").unlink()  # as after a kill
    resumed = train(resume=cut.run_dir, cache_dir=tmp_path / "cache", **QUICK)
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in whole.history]
    assert all(
        torch.equal(x, y)
        for x, y in zip(
            tuned.state_dict().values(), load_model(resumed.run_dir).model.state_dict().values()
        )
    )


@pytest.mark.slow
def test_finetuning_the_last_stages_on_their_activations(data, tmp_path, monkeypatch, caplog):
    """finetune_stages N (the recipe's 2): the last N stages, on the activations below them
    (each training image and its mirror); the layers below and every BatchNorm's statistics
    stay ImageNet's; the run's export holds the tuned layers; a cut run resumes as the whole."""
    options = {**OPTIONS, "epochs": 3, "finetune_epochs": 2}
    whole = train(data, tmp_path / "whole", cache_dir=tmp_path / "cache", **options)
    assert (
        "fine-tuning the last 2 stages on the activations below them: 38 training rows "
        "(each image and its mirror), 5 validation, 112x2x2 each" in caplog.text
    )
    assert [h.epoch for h in whole.history] == [1, 2, 3, 4, 5] and whole.restored_epoch == 5
    tuned = load_model(whole.run_dir).model.state_dict()
    pristine = Backbone("tf_efficientnet_lite0", 3)
    load_pretrained(pristine, "imagenet")
    before = pristine.state_dict()
    changed = {k for k in tuned if not torch.equal(tuned[k], before[k])}
    assert "net.blocks.6.0.conv_pw.weight" in changed and "net.conv_head.weight" in changed
    assert "net.blocks.5.0.conv_pw.weight" in changed and "net.classifier.weight" in changed
    assert not {k for k in changed if k.startswith(("net.conv_stem", "net.bn1", "net.blocks.4"))}
    assert not {k for k in changed if "running_" in k}

    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    onnx_probs = Predictor(whole.run_dir, backend="onnx").predict_pixels(pixels)
    torch_probs = Predictor(whole.run_dir, backend="pytorch", precision="fp32").predict_pixels(
        pixels
    )  # the export is the tuned model, not the cached body with the head
    assert np.abs(onnx_probs - torch_probs).max() < 1e-4
    metrics = json.loads((whole.run_dir / "metrics.json").read_text())
    assert evaluate(whole.run_dir, cache_dir=tmp_path / "cache").accuracy == metrics["val_accuracy"]

    ctrl_c_after_epoch(monkeypatch, 4)  # the first fine-tuning epoch
    cut = train(data, tmp_path / "cut", cache_dir=tmp_path / "cache", **options, export=False)
    assert cut.interrupted and len(cut.history) == 4
    monkeypatch.undo()
    (cut.run_dir / "metrics.json").unlink()  # as after a kill
    resumed = train(resume=cut.run_dir, cache_dir=tmp_path / "cache", **QUICK)
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in whole.history]
    assert all(
        torch.equal(tuned[k], v) for k, v in load_model(resumed.run_dir).model.state_dict().items()
    )


def test_lr_find_runs_on_cached_features(data, tmp_path):
    result = lr_find(
        data,
        tmp_path / "lr",
        steps=12,
        cache_dir=tmp_path / "cache",
        **{k: v for k, v in OPTIONS.items() if k != "recipe"},
        recipe="transfer",
    )
    assert len(result.losses) >= 3 and (tmp_path / "lr" / "lr_find.png").is_file()


def test_transfer_options_are_checked():
    assert build_config("transfer").image_size == 224
    with pytest.raises(ValueError, match="cached_features need pretrained weights"):
        TrainConfig(model="tf_efficientnet_lite0", cached_features=True).validate()
    with pytest.raises(ValueError, match="no freeze_epochs, no tta_flip"):
        build_config("transfer", tta_flip=True)
    with pytest.raises(ValueError, match="finetune_epochs fine-tune after the head"):
        build_config("fast", finetune_epochs=2)
    with pytest.raises(
        ValueError, match="finetune_stages: resnet18 is not of timm's EfficientNet family"
    ):
        TopStages(Backbone("resnet18", 3), 2)
    with pytest.raises(ValueError, match="tf_efficientnet_lite0 has 7 stages, got 8"):
        TopStages(Backbone("tf_efficientnet_lite0", 3), 8)
    with pytest.raises(ValueError, match="backbone_lr_scale must be > 0"):
        build_config("transfer", backbone_lr_scale=0.0)
    with pytest.raises(
        ValueError,
        match="the transfer recipe starts from pretrained weights, "
        "which seed_cnn has none of: .* --recipe fast",
    ):
        build_config("transfer", model="seed_cnn")
    with pytest.raises(ValueError, match="need a pretrained backbone"):  # the user's own flag
        build_config("fast", model="seed_cnn", pretrained="imagenet")
    for images_only in (
        {"mixup": 0.2},
        {"cutmix": 1.0},
        {"random_erasing": 0.25},
        {"trivial_augment": True},
    ):  # never a silent no-op on features
        with pytest.raises(ValueError, match="act on images, but the head trains on cached"):
            build_config(augment=images_only)
        with pytest.raises(ValueError, match="act on images"):
            build_config(augment=images_only, finetune_epochs=2)  # the last stages: activations
        build_config(augment=images_only, finetune_epochs=2, finetune_stages=0)  # on images
    assert not any(name.startswith("augment.") for name in search_space(build_config()))


@pytest.mark.slow
def test_transfer_is_the_default_recipe_and_seed_one_flag_away(data, tmp_path):
    """Issue 12.4: `imgclass train DATA` trains the transfer recipe; --recipe seed is the
    reference system as it was the default."""
    assert build_config() == build_config("transfer")
    assert build_config("seed") == TrainConfig()
    with pytest.raises(ValueError, match=r"transfer recipe \(the default\) .* fast_resnet"):
        build_config(model="fast_resnet")
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--no-export",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"] == "transfer" and config["cached_features"]


def test_a_class_without_images_is_refused_before_any_feature_is_extracted(tmp_path, caplog):
    """Found when the default became transfer: the empty class was refused at the split, after
    every image's features (minutes on a large data set)."""
    data = make_class_tree(tmp_path / "data", per_class=4)
    (data / "empty").mkdir()
    (data / "broken").mkdir()
    (data / "broken" / "x.jpg").write_bytes(b"not an image")  # a file, none usable: caught later
    with pytest.raises(DataError, match="^class without images: empty; add images"):
        train(data, tmp_path / "run", cache_dir=tmp_path / "cache", image_size=32, **QUICK)
    assert "extracting" not in caplog.text and not (tmp_path / "cache").exists()
