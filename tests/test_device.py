"""--device and --precision: which device and autocast dtype a run gets, and clear errors.

No GPU here: the CUDA choices are checked with torch.cuda's answers replaced (the decisions are
plain Python on top of them); the fp16 loss-scaling path runs on the CPU's own GradScaler.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from tqdm import tqdm

from imgclass import runtime
from imgclass.cli import main
from imgclass.config import RECIPES, TrainConfig, load_recipe
from imgclass.runtime import Device, parse_device
from imgclass.training import train_one_epoch
from tests.conftest import make_class_tree


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda answering as on a machine with two GPUs (nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_picks_the_cpu_without_a_gpu_and_a_gpu_with_one(no_gpu, monkeypatch):
    assert parse_device("auto") == torch.device("cpu") == parse_device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert parse_device("auto") == torch.device("cuda", 0)


def test_cuda_means_the_gpu_of_the_local_rank(two_gpus):
    assert parse_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert parse_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert parse_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # asked for: kept
    with pytest.raises(ValueError, match="GPU 2 asked for, 2 available"):
        parse_device("cuda:2")


@pytest.mark.parametrize(
    "spec,reason",
    [
        ("cuda", "no CUDA GPU"),
        ("cuda:1", "no CUDA GPU"),
        ("mps", "MPS is not available"),
        ("tpu", "unknown device"),
        ("gpu!", "unknown device"),
    ],
)
def test_devices_that_are_not_here_are_clear_errors(no_gpu, spec, reason):
    with pytest.raises(ValueError, match=reason):
        parse_device(spec)


def test_precision_auto_is_bf16_or_fp16_with_a_scaler_on_gpus(two_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    bf16 = Device.select("auto", "cuda")
    assert (bf16.precision, bf16.amp) == ("bf16", torch.bfloat16)
    assert not bf16.grad_scaler().is_enabled()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    fp16 = Device.select("auto", "cuda:1")
    assert (fp16.precision, fp16.torch_device) == ("fp16", torch.device("cuda", 1))
    assert fp16.grad_scaler().is_enabled()
    assert Device.select("fp32", "cuda").amp is None


@pytest.mark.precision
def test_precision_on_the_cpu(no_gpu, monkeypatch):
    monkeypatch.setenv("IMGCLASS_NATIVE_BF16", "0")
    assert Device.select("auto").precision == "fp32"  # emulated bf16 would be slower
    monkeypatch.setenv("IMGCLASS_NATIVE_BF16", "1")
    assert Device.select("auto").precision == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        Device.select("fp16", "cpu")
    cpu = Device.select("bf16", "cpu")
    assert cpu.holds(2**60)  # the data is in host memory already
    with cpu.autocast():
        assert nn.Linear(4, 2)(torch.ones(1, 4)).dtype == torch.bfloat16


def _step_weights(scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = iter([(torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,))) for _ in range(3)])
    train_one_epoch(
        model,
        batches,
        optimizer,
        None,
        nn.CrossEntropyLoss(),
        Device(torch.device("cpu"), None),
        tqdm(disable=True),
        scaler,
    )
    return model[1].weight.detach().clone()


def test_loss_scaling_changes_no_update():
    """fp16's path (scale the loss, unscale the gradients, step): the same steps as without."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaled = _step_weights(scaler)
    assert scaler.get_scale() == 2.0**10  # finite gradients: no step skipped
    torch.testing.assert_close(scaled, _step_weights(None))


def test_learning_rate_scaling_with_the_batch(tmp_path):
    recipe = tmp_path / "big.json"
    recipe.write_text(json.dumps({"batch_size": 128, "lr": 0.01}))
    assert load_recipe(str(recipe)).lr_batch == 128  # its lr was chosen for its own batch
    assert load_recipe(str(recipe)).replace(batch_size=256, lr_scaling="linear").step_lr == 0.02
    fast = RECIPES["fast"]
    assert fast.lr_batch == fast.batch_size == 64 and fast.step_lr == fast.lr
    assert fast.replace(batch_size=512).step_lr == fast.lr  # "none": as given
    assert fast.replace(batch_size=512, lr_scaling="linear").step_lr == pytest.approx(1.6)
    assert fast.replace(batch_size=256, lr_scaling="sqrt").step_lr == pytest.approx(0.4)
    assert math.isclose(TrainConfig(batch_size=64, lr_scaling="linear").step_lr, 1e-3)
    with pytest.raises(ValueError, match="lr_scaling"):
        TrainConfig(lr_scaling="cubic").validate()


def test_cli_names_a_missing_gpu(no_gpu, class_tree, tmp_path):
    for args in (["--device", "cuda"], ["--precision", "fp16"]):
        result = CliRunner().invoke(
            main, ["train", str(class_tree), "--out", str(tmp_path / "run"), *args]
        )
        assert result.exit_code == 1, result.output
        assert "no CUDA GPU" in result.output or "fp16 needs a CUDA GPU" in result.output
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_native_bf16_is_read_from_the_cpu_unless_the_variable_says(monkeypatch):
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    monkeypatch.delenv("IMGCLASS_NATIVE_BF16", raising=False)
    assert runtime.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
    monkeypatch.setenv("IMGCLASS_NATIVE_BF16", "")  # empty: as unset
    assert runtime.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
    for value, answer in (("1", True), ("0", False), (" 1 ", True)):
        monkeypatch.setenv("IMGCLASS_NATIVE_BF16", value)
        assert runtime.cpu_has_native_bf16() is answer
        assert f"native bf16: {'yes' if answer else 'no'} (IMGCLASS_NATIVE_BF16=" in (
            runtime.describe_cpu()
        )
    monkeypatch.setenv("IMGCLASS_NATIVE_BF16", "yes")
    with pytest.raises(ValueError, match=r"IMGCLASS_NATIVE_BF16='yes': set it to 1 .* or 0"):
        runtime.cpu_has_native_bf16()


def test_a_bad_native_bf16_value_is_one_line_from_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLASS_NATIVE_BF16", "true")
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(make_class_tree(tmp_path / "d", 2)),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
        ],
    )
    assert result.exit_code == 1
    assert "Error: IMGCLASS_NATIVE_BF16='true': set it to 1" in result.output
    assert "Traceback" not in result.output
