import json
import pickle

import pytest
import torch
from safetensors.torch import save

from imgclass.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from imgclass.data.batches import to_float


def test_loaded_model_gives_the_same_outputs_twice(trained_run):
    a, b = load_model(trained_run), load_model(trained_run)
    x = to_float(torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8))
    with torch.no_grad():
        torch.testing.assert_close(a.model(x), b.model(x))
    assert not a.model.training


def test_weights_file_is_safetensors_not_pickle(trained_run):
    header_len = int.from_bytes((trained_run / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((trained_run / "model.safetensors").read_bytes()[8 : 8 + header_len])
    assert "0.weight" in header


def _copy_run(trained_run, tmp_path):
    for name in ("model.safetensors", "model.json"):
        (tmp_path / name).write_bytes((trained_run / name).read_bytes())
    return tmp_path


def test_truncated_weights_are_a_clear_error(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: truncated"):
        load_model(run)


def test_missing_and_mismatched_files_are_clear_errors(trained_run, tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path)
    run = _copy_run(trained_run, tmp_path)
    meta = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**meta, "classes": ["a", "b"]}))
    with pytest.raises(
        CheckpointError,
        match=r"its classes \(a, b\) are not those saved with "
        r"the weights .*\(blue, green, red\)",
    ):
        load_model(run)
    (run / "model.json").write_text(json.dumps({**meta, "architecture": "fast_resnet"}))
    with pytest.raises(CheckpointError, match="not matching fast_resnet"):
        load_model(run)
    (run / "model.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(run)


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # inside the last tensor's data: the header still parses
    path.write_bytes(bytes(data))


def test_tampered_weights_are_a_clear_error(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    _flip_last_byte(run / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors: contents do not match"):
        load_model(run)


def test_training_checkpoint_round_trips_without_pickle(trained_run, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    state = load_checkpoint(trained_run)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert state.epoch == metrics["final_epoch"] == len(state.history)
    assert state.config["seed"] == 1 and state.best_epoch == metrics["restored_epoch"]
    assert set(state.rng) >= {"shuffle", "augment", "torch"}
    assert all(s.dtype == torch.uint8 for s in state.rng.values())
    assert state.optimizer["state"][0]["exp_avg"].shape == state.model["0.weight"].shape
    save_checkpoint(tmp_path, state)
    again = load_checkpoint(tmp_path)
    assert (
        again.history == state.history
        and again.optimizer["param_groups"] == state.optimizer["param_groups"]
    )
    for name in state.model:
        assert torch.equal(again.model[name], state.model[name])
    header_len = int.from_bytes((tmp_path / CHECKPOINT).read_bytes()[:8], "little")
    header = json.loads((tmp_path / CHECKPOINT).read_bytes()[8 : 8 + header_len])
    groups = {name.split("/")[0] for name in header if name != "__metadata__"}
    assert {"model", "optimizer", "rng"} <= groups <= {"model", "best", "optimizer", "rng"}
    assert (again.best_model is None) == (state.best_model is None)
    for name in state.best_model or {}:
        assert torch.equal(again.best_model[name], state.best_model[name])


def test_truncated_or_tampered_checkpoint_is_a_clear_error(trained_run, tmp_path):
    path = tmp_path / CHECKPOINT
    data = (trained_run / CHECKPOINT).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checkpoint.safetensors: truncated"):
        load_checkpoint(tmp_path)
    path.write_bytes(data)
    _flip_last_byte(path)
    with pytest.raises(CheckpointError, match="checkpoint.safetensors: contents do not match"):
        load_checkpoint(tmp_path)
    path.write_bytes(save({"model/w": torch.zeros(2)}))  # a safetensors file, not a checkpoint
    with pytest.raises(CheckpointError, match="checkpoint.safetensors: no sha256"):
        load_checkpoint(tmp_path)
    path.write_bytes((trained_run / "model.safetensors").read_bytes())  # imgclass, not training
    with pytest.raises(CheckpointError, match="not an imgclass training checkpoint"):
        load_checkpoint(tmp_path)
