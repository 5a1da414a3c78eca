"""ONNX export: ONNX Runtime gives PyTorch's answers, at any batch size, flip TTA included."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from imgclass import evaluation, export
from imgclass.checkpoint import CheckpointError, load_model, save_model, weights_digest
from imgclass.cli import main
from imgclass.data.batches import to_float
from imgclass.data.dataset import load_dataset
from imgclass.evaluation import predict_proba
from imgclass.export import OnnxModel, export_onnx, metadata_path, model_input, read_metadata
from imgclass.predict import Predictor
from imgclass.training import train
from tests.conftest import COLOURS, make_class_tree


@pytest.mark.precision
def test_onnx_gives_the_same_answers_as_pytorch(exported_onnx, trained_run, tmp_path):
    """fp32 against fp32 (ONNX Runtime runs fp32); bf16 has its own bound (BF16_BOUND)."""
    data = make_class_tree(tmp_path / "d", per_class=7, size=40, seed=9)
    torch_side = Predictor(trained_run, backend="pytorch", precision="fp32")
    onnx_side = Predictor(exported_onnx)
    dataset = load_dataset(data, torch_side.meta.image_size, cache_dir=tmp_path / "cache")
    expected = predict_proba(torch_side.model, dataset.pixels, torch_side.device)
    for batch_size in (1, 4, 64):  # the batch dimension is dynamic
        got = OnnxModel(exported_onnx, onnx_side.meta).predict_proba(dataset.pixels, batch_size)
        assert got.shape == expected.shape
        assert (got.argmax(1) == expected.argmax(1)).all()
        assert np.abs(got - expected).max() < 1e-4
    paths = [data / p for p in dataset.paths]
    for a, b in zip(torch_side.predict(paths, top_k=3), onnx_side.predict(paths, top_k=3)):
        assert a.labels == b.labels
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-4)


# bf16 autocast against fp32, one probability: measured 4.6e-4 to 1.13e-3 (max) on 9 x 1,024
# blends of the class colours through three 4-epoch trainings like trained_run's, on an AVX-512
# BF16 CPU both with training in bf16 and in fp32; top-1 changed only where fp32's margin between
# its first two classes was under 5.1e-4.
BF16_BOUND = 2e-3


@pytest.mark.precision
def test_bf16_against_fp32_meets_its_own_bound(trained_run):
    """PyTorch under bf16 autocast (native, or emulated where the CPU lacks it) against fp32:
    every probability within BF16_BOUND, the top-1 label the same wherever fp32's margin between
    its first two classes exceeds the bound. Blends of two class colours put some images near a
    tie, so the margin condition is exercised."""
    rng = np.random.default_rng(12)
    colours = np.array(list(COLOURS.values()), float)
    first, second = rng.integers(0, len(colours), (2, 1024))
    share = rng.random(1024)[:, None]
    blend = colours[first] * share + colours[second] * (1 - share)
    noise = rng.integers(-40, 40, (1024, 16, 16, 3))
    pixels = np.clip(blend[:, None, None, :] + noise, 0, 255).astype(np.uint8)
    fp32 = Predictor(trained_run, backend="pytorch", precision="fp32").predict_pixels(pixels)
    bf16 = Predictor(trained_run, backend="pytorch", precision="bf16").predict_pixels(pixels)
    difference = np.abs(bf16 - fp32).max()
    assert 0 < difference < BF16_BOUND  # 0: bf16 was not used at all
    top_two = np.sort(fp32, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > BF16_BOUND
    assert 0 < (~clear).sum() < 0.2 * len(clear)  # some near-ties, most images clear
    assert (bf16.argmax(1) == fp32.argmax(1))[clear].all()


def test_onnx_input_is_to_float_bit_for_bit():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    pixels[0, :, :, 1] = pixels[0, :, :, 0].T  # channels differ, so an axis mix-up shows
    expected = to_float(torch.from_numpy(pixels)).numpy()
    got = model_input(pixels)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, expected)


def test_metadata_beside_the_model(exported_onnx, trained_run):
    document = json.loads(metadata_path(exported_onnx).read_text())
    run_meta = json.loads((trained_run / "model.json").read_text())
    for key in ("classes", "image_size", "normalisation", "resize", "tta_flip", "architecture"):
        assert document[key] == run_meta[key]
    assert document["input"]["shape"] == [
        "batch",
        3,
        run_meta["image_size"],
        run_meta["image_size"],
    ]
    assert document["metrics"] == json.loads((trained_run / "metrics.json").read_text())
    graph = onnx.load(str(exported_onnx)).graph
    assert [i.name for i in graph.input] == ["pixels"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch


@pytest.mark.precision
def test_flip_tta_is_inside_the_graph(trained_run, tmp_path):
    """A run whose predictions average the mirror image: the exported graph does too."""
    run = tmp_path / "tta"
    shutil.copytree(trained_run, run)
    meta = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**meta, "tta_flip": True}))
    out = tmp_path / "out" / "tta.onnx"
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_metadata(out)[0].tta_flip
    pixels = np.random.default_rng(3).integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    torch_side = Predictor(run, backend="pytorch", precision="fp32")
    with_flip = predict_proba(torch_side.model, pixels, torch_side.device, tta_flip=True)
    without = predict_proba(torch_side.model, pixels, torch_side.device)
    got = Predictor(out).predict_pixels(pixels)
    assert np.abs(got - with_flip).max() < 1e-4
    assert np.abs(with_flip - without).max() > 1e-3  # the flip changes something to compare


def test_onnx_without_its_metadata_or_broken_is_a_clear_error(exported_onnx, tmp_path):
    alone = tmp_path / "alone.onnx"
    shutil.copy(exported_onnx, alone)
    with pytest.raises(CheckpointError, match=r"alone\.onnx\.json: missing"):
        Predictor(alone)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(exported_onnx.read_bytes()[:1000])
    shutil.copy(metadata_path(exported_onnx), metadata_path(broken))
    with pytest.raises(
        CheckpointError,
        match=r"broken\.onnx: damaged or changed since its "
        r"export .*export it again",
    ):
        Predictor(broken)
    document = json.loads(metadata_path(broken).read_text())  # its hash recorded: still broken
    document["onnx_sha256"] = hashlib.sha256(broken.read_bytes()).hexdigest()
    metadata_path(broken).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=r"broken\.onnx: not a loadable ONNX model"):
        Predictor(broken)


@pytest.mark.precision
def test_tta_flag_on_export_predict_and_evaluate(trained_run, tmp_path, monkeypatch):
    """--tta overrides the run's own choice in export, Predictor/predict and evaluate."""
    assert not json.loads((trained_run / "model.json").read_text())["tta_flip"]
    out = tmp_path / "tta.onnx"
    result = CliRunner().invoke(main, ["export", str(trained_run), "--out", str(out), "--tta"])
    assert result.exit_code == 0, result.output
    pixels = np.random.default_rng(4).integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    with_flip = Predictor(trained_run, tta=True, precision="fp32").predict_pixels(pixels)
    assert np.abs(Predictor(out).predict_pixels(pixels) - with_flip).max() < 1e-4
    without = Predictor(trained_run, precision="fp32").predict_pixels(pixels)
    assert np.abs(without - with_flip).max() > 1e-3
    with pytest.raises(ValueError, match="export again with --no-tta"):
        Predictor(out, tta=False)
    asked = []

    def recording(*args, tta_flip=False, **kwargs):
        asked.append(tta_flip)
        return predict_proba(*args, tta_flip=tta_flip, **kwargs)

    monkeypatch.setattr(evaluation, "predict_proba", recording)
    for tta in (None, True, False):
        evaluation.evaluate(trained_run, out=tmp_path / f"eval-{tta}", tta=tta)
    assert asked == [False, True, False]


def _auto_backend(native_bf16: bool) -> str:
    """What backend="auto" picks for a run with a current export on a CPU (no GPU in tests)."""
    return "pytorch" if native_bf16 else "onnxruntime"


@pytest.mark.precision
def test_train_exports_and_predictor_picks_the_export_on_an_fp32_cpu(trained_run, native_bf16):
    """train writes RUN/model.onnx for the weights it saved; auto runs it where it is faster:
    on an fp32 CPU, not where PyTorch runs bf16 natively (or precision is asked for)."""
    document = json.loads(metadata_path(trained_run / "model.onnx").read_text())
    assert document["weights_sha256"] == weights_digest(trained_run) is not None
    assert Predictor(trained_run).backend == _auto_backend(native_bf16)
    assert Predictor(trained_run, precision="fp32").backend == "onnxruntime"
    assert Predictor(trained_run, precision="bf16").backend == "pytorch"
    onnx_side = Predictor(trained_run, backend="onnx")
    torch_side = Predictor(trained_run, backend="pytorch", precision="fp32")
    assert (onnx_side.backend, torch_side.backend) == ("onnxruntime", "pytorch")
    assert onnx_side.metrics == torch_side.metrics is not None
    pixels = np.random.default_rng(5).integers(0, 256, (11, 16, 16, 3), dtype=np.uint8)
    assert np.abs(onnx_side.predict_pixels(pixels) - torch_side.predict_pixels(pixels)).max() < 1e-4
    with pytest.raises(ValueError, match="unknown backend 'tf'"):
        Predictor(trained_run, backend="tf")
    with pytest.raises(ValueError, match="runs in ONNX Runtime"):
        Predictor(trained_run / "model.onnx", backend="pytorch")


@pytest.mark.precision
def test_an_export_of_other_weights_is_never_used(trained_run, tmp_path, caplog, native_bf16):
    """Weights saved again after the export (a run trained again into its folder): the stale
    model.onnx is left alone by auto (with a warning) and refused by backend="onnx"."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    loaded = load_model(run)
    with torch.no_grad():
        next(loaded.model.parameters()).add_(0.5)
    save_model(run, loaded.model, loaded.meta)
    with caplog.at_level(logging.WARNING, logger="imgclass"):
        predictor = Predictor(run)
    assert predictor.backend == "pytorch"
    assert "exported from other weights" in caplog.text
    with pytest.raises(ValueError, match=r"no current model\.onnx .*imgclass export"):
        Predictor(run, backend="onnx")
    export_onnx(run)  # exported again: current, and it answers like the new weights
    assert Predictor(run).backend == _auto_backend(native_bf16)
    pixels = np.random.default_rng(6).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    expected = Predictor(run, backend="pytorch", precision="fp32").predict_pixels(pixels)
    assert np.abs(Predictor(run, backend="onnx").predict_pixels(pixels) - expected).max() < 1e-4


def test_predictor_asked_for_another_tta_than_the_export_runs_pytorch(trained_run):
    """The export has the run's TTA setting in its graph: tta=True needs PyTorch (or export
    --tta), and backend="onnx" says so."""
    assert Predictor(trained_run, tta=True).backend == "pytorch"
    with pytest.raises(ValueError, match="--tta"):
        Predictor(trained_run, tta=True, backend="onnx")


def test_no_export_and_a_failed_export_leave_a_working_run(tmp_path, monkeypatch, caplog):
    data = make_class_tree(tmp_path / "d", per_class=6)
    plain = train(
        data,
        tmp_path / "plain",
        cache_dir=tmp_path / "c",
        image_size=16,
        epochs=1,
        batch_size=8,
        export=False,
        recipe="seed",
    )
    assert not (plain.run_dir / "model.onnx").exists()
    assert Predictor(plain.run_dir).backend == "pytorch"

    def failing(run, *args, **kwargs):
        raise RuntimeError("exporter says no")

    monkeypatch.setattr(export, "export_onnx", failing)
    with caplog.at_level(logging.WARNING, logger="imgclass"):
        failed = train(
            data,
            tmp_path / "failed",
            cache_dir=tmp_path / "c",
            image_size=16,
            epochs=1,
            batch_size=8,
            recipe="seed",
        )
    assert "model.onnx not written (exporter says no)" in caplog.text
    assert (failed.run_dir / "metrics.json").is_file()
    assert not (failed.run_dir / "model.onnx").exists()
    assert Predictor(failed.run_dir).predict([data / "red"])[0].label in failed.classes


@pytest.mark.precision
def test_a_damaged_or_relabelled_model_never_answers(trained_run, tmp_path, caplog, monkeypatch):
    """Issue 13.1: one flipped byte in model.onnx, or a class list reordered beside the weights,
    is caught: a run falls back to its PyTorch weights with a warning (on a CPU where auto would
    take ONNX Runtime), a .onnx file given alone is refused, and so is a relabelled run."""
    monkeypatch.setenv("IMGCLASS_NATIVE_BF16", "0")  # auto takes a current export here
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    pixels = np.random.default_rng(8).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    expected = Predictor(run, backend="pytorch", precision="fp32").predict_pixels(pixels)
    assert Predictor(run).backend == "onnxruntime"
    onnx_file = run / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0x10
    onnx_file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="imgclass"):
        predictor = Predictor(run)
    assert predictor.backend == "pytorch" and "damaged or changed since its export" in caplog.text
    assert np.abs(predictor.predict_pixels(pixels) - expected).max() < 1e-6
    with pytest.raises(ValueError, match=r"no current model\.onnx"):
        Predictor(run, backend="onnx")
    with pytest.raises(CheckpointError, match=r"model\.onnx: damaged or changed since its export"):
        Predictor(onnx_file)
    result = CliRunner().invoke(main, ["predict", str(onnx_file), str(tmp_path)])
    assert result.exit_code == 1 and "damaged or changed" in result.output
    assert "Traceback" not in result.output

    alone = export_onnx(run, tmp_path / "alone.onnx")  # classes reordered beside the file
    document = json.loads(metadata_path(alone).read_text())
    document["classes"] = document["classes"][::-1]
    metadata_path(alone).write_text(json.dumps(document))
    with pytest.raises(
        CheckpointError,
        match=r"alone\.onnx: the classes in alone\.onnx\.json "
        r"\(.*\) are not those exported in the file",
    ):
        Predictor(alone)

    meta = json.loads((run / "model.json").read_text())  # a run's class list reordered
    (run / "model.json").write_text(json.dumps({**meta, "classes": meta["classes"][::-1]}))
    for backend in ("auto", "pytorch"):
        with pytest.raises(
            CheckpointError,
            match=r"model\.json: its classes .* are not those "
            r"saved with the weights",
        ):
            Predictor(run, backend=backend)


def test_the_readme_onnx_script_reproduces_predict(trained_run, tmp_path):
    """Issue 14.5: the ONNX file's metadata_props and the README's onnxruntime + Pillow script
    alone give predict's probabilities to 1e-6 (a JPEG: the draft step matters)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("probabilities (to 1e-6, a test runs this script):\n```python\n")[1]
    script = block.split("```")[0]
    photo = make_class_tree(tmp_path / "d", per_class=1, size=96, seed=5) / "red" / "red_000.jpg"
    script = script.replace("runs/animals6/model.onnx", str(trained_run / "model.onnx")).replace(
        '"photo.jpg"', repr(str(photo))
    )
    scope: dict = {}
    exec(compile(script, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    [expected] = Predictor(trained_run, backend="onnx").predict(str(photo), top_k=3)
    got = dict(zip(scope["classes"], scope["probabilities"].tolist()))
    assert [got[label] for label in expected.labels] == pytest.approx(
        expected.probabilities, abs=1e-6
    )
