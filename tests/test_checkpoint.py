import json

import pytest
import torch

from imgclass.checkpoint import CheckpointError, load_model
from imgclass.data.batches import to_float


def test_loaded_model_gives_the_same_outputs_twice(trained_run):
    a, b = load_model(trained_run), load_model(trained_run)
    x = to_float(torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8))
    with torch.no_grad():
        torch.testing.assert_close(a.model(x), b.model(x))
    assert not a.model.training


def test_weights_file_is_safetensors_not_pickle(trained_run):
    header_len = int.from_bytes((trained_run / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((trained_run / "model.safetensors").read_bytes()[8:8 + header_len])
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
    with pytest.raises(CheckpointError, match="not matching"):
        load_model(run)
    (run / "model.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(run)
