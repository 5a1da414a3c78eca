"""torchvision backbones: random init, weights from a file the test writes, freeze-then-unfreeze
(also across --resume), the backbone's own input size, clear errors for bad weights."""

from __future__ import annotations

import contextlib
import logging
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from imgclass.checkpoint import load_model
from imgclass.config import build_config
from imgclass.models import build_model
from imgclass.models.backbones import BACKBONES
from imgclass.training import train
from tests.conftest import make_class_tree

BACKBONE_NAMES = ["resnet18", "mobilenet_v3_small", "efficientnet_b0"]
OPTIONS = {"model": "mobilenet_v3_small", "image_size": 32, "batch_size": 8, "patience": 0,
           "precision": "fp32", "seed": 2}


def _body(model: torch.nn.Module, head: str) -> dict[str, torch.Tensor]:
    """The parameters that come from the pretrained file (all but the new head)."""
    return {k.removeprefix("net."): v for k, v in model.named_parameters()
            if not k.startswith(f"net.{head}.")}


def _imagenet_like_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision state dict with a 1000-class head, as the hub's files are."""
    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None).state_dict()


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_random_init_backbone_trains_one_step(name):
    model = build_model(name, num_classes=3, image_size=32)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert model(x).shape == (4, 3) and torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_normalisation_is_the_models_first_step():
    model = build_model("resnet18", num_classes=3, image_size=32).eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net((x - mean) / std))
    assert not any(k in model.state_dict() for k in ("mean", "std"))  # torchvision's keys only


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_file_weights_arrive(tmp_path, suffix):
    state = _imagenet_like_state("resnet18", seed=7)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, path)
    model = build_model("resnet18", num_classes=3, image_size=32, pretrained=str(path))
    body = _body(model, "fc")
    assert body and all(torch.equal(v, state[k]) for k, v in body.items())
    assert all(torch.equal(v, state[k]) for k, v in model.net.state_dict().items()
               if k.startswith("bn1.running"))
    assert model.net.fc[1].out_features == 3  # a new head for the class count
    random = build_model("resnet18", num_classes=3, image_size=32)
    assert not torch.equal(random.net.conv1.weight, model.net.conv1.weight)


def test_pretrained_errors_name_the_file(tmp_path, monkeypatch):
    wrong = tmp_path / "mobilenet.pth"
    torch.save(_imagenet_like_state("mobilenet_v3_small", 0), wrong)
    with pytest.raises(ValueError, match=r"mobilenet.pth: not resnet18 weights: missing"):
        build_model("resnet18", 3, 32, pretrained=str(wrong))
    pickled = tmp_path / "object.pth"
    torch.save({"conv1.weight": torch.zeros(1), "args": object()}, pickled)
    with pytest.raises(ValueError, match="object.pth: not a readable weights file"):
        build_model("resnet18", 3, 32, pretrained=str(pickled))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable weights file"):
        build_model("resnet18", 3, 32, pretrained=str(junk))
    with pytest.raises(FileNotFoundError, match="absent.pth: pretrained weights file not found"):
        build_model("resnet18", 3, 32, pretrained=str(tmp_path / "absent.pth"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached download
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match=r"cannot download .*--pretrained FILE"):
        build_model("resnet18", 3, 32, pretrained="imagenet")


def test_backbone_options_and_default_image_size():
    assert build_config(model="mobilenet_v3_small").image_size == 224
    assert build_config(model="efficientnet_b0", image_size=32).image_size == 32
    assert build_config().image_size == 64  # the seed recipe is unchanged
    with pytest.raises(ValueError, match="need a torchvision backbone"):
        build_config(freeze_epochs=1)
    with pytest.raises(ValueError, match="unknown model"):
        build_config(model="resnet1000")
    assert set(BACKBONE_NAMES) <= set(BACKBONES)


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("weights")
    state = _imagenet_like_state("mobilenet_v3_small", seed=5)
    save_file(state, folder / "mobilenet.safetensors")
    return folder / "mobilenet.safetensors", state


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_class_tree(tmp_path_factory.mktemp("backbone") / "data", per_class=10, size=32)


@pytest.fixture(autouse=True)
def _info_in_train_log(caplog):
    """train.log receives what the `imgclass` logger lets through (the CLI sets INFO)."""
    with caplog.at_level(logging.INFO, logger="imgclass"):
        yield


def test_freeze_then_unfreeze_survives_resume_without_the_weights_file(
        data, pretrained_file, tmp_path, monkeypatch):
    path, state = pretrained_file
    options = {**OPTIONS, "pretrained": str(path), "freeze_epochs": 1, "epochs": 2,
               "export": False}  # not under test here, and ~10 s per backbone
    reference = train(data, tmp_path / "reference", cache_dir=tmp_path / "cache", **options)
    log = (reference.run_dir / "train.log").read_text()
    assert "epoch 1: backbone frozen" in log and "epoch 2: backbone unfrozen" in log

    @contextlib.contextmanager
    def ctrl_c_after_epoch_1(run_dir):
        def hook(stats):
            if stats.epoch == 1:
                raise KeyboardInterrupt
        yield hook

    monkeypatch.setattr("imgclass.training.tensorboard", ctrl_c_after_epoch_1)
    first = train(data, tmp_path / "run", cache_dir=tmp_path / "cache", **options)
    assert first.interrupted and len(first.history) == 1
    monkeypatch.undo()
    moved = path.rename(path.with_suffix(".moved"))  # load_model and resume need no weights file
    try:
        after_epoch_1 = load_model(first.run_dir)
        body = _body(after_epoch_1.model, "classifier.3")
        assert body and all(torch.equal(v, state[k]) for k, v in body.items())  # were frozen
        head = after_epoch_1.model.net.classifier[3][1]
        assert head.out_features == 3 and not torch.equal(head.weight, load_model(
            reference.run_dir).model.net.classifier[3][1].weight)  # trained, and then again
        resumed = train(resume=tmp_path / "run", cache_dir=tmp_path / "cache")
    finally:
        moved.rename(path)
    assert "epoch 2: backbone unfrozen" in (resumed.run_dir / "train.log").read_text()
    a, b = load_model(reference.run_dir).model, load_model(resumed.run_dir).model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values()))
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in reference.history]
