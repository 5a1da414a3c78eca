"""Crash safety end to end: a real `python -m imgclass train`, killed (SIGKILL) or interrupted
(Ctrl-C, SIGINT) in the middle of an epoch, then resumed, ends exactly where an uninterrupted run
with the same seed ends (history, metrics and weights, bit for bit on the CPU). Ctrl-C once
training is over leaves a whole, finished run without the export and the report."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgclass import export, training
from imgclass.checkpoint import load_model
from imgclass.cli import main
from imgclass.data.scan import DataError
from imgclass.predict import Predictor
from imgclass.training import train
from tests.conftest import QUICK, make_class_tree
from tests.test_training import RUN_FILES, assert_same_results

# 96 training images in batches of 4: an epoch is a second or two of real work on a small CPU
# and the options whose state lives in the checkpoint beyond the seed recipe's: AdamW, a cosine
# schedule (SequentialLR), the balanced sampler, MixUp/CutMix/erasing from the augment stream
OPTIONS = {
    "recipe": "seed",
    "image_size": 16,
    "epochs": 3,
    "batch_size": 4,
    "seed": 3,
    "precision": "fp32",
    "optimizer": "adamw",
    "schedule": "cosine",
    "warmup": 0.2,
    "sampler": "balanced",
}
AUGMENT = {"mixup": 0.4, "cutmix": 1.0, "random_erasing": 0.3}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # epochs of ~1 s: a signal sent a quarter into epoch 2 lands in training even when a loaded
    # machine delays it by half a second (after training, Ctrl-C only skips the export and report)
    return make_class_tree(tmp_path_factory.mktemp("resume") / "data", per_class=80, size=16)


@pytest.fixture(scope="module")
def reference(data) -> Path:
    """The uninterrupted run."""
    run = data.parent / "reference"
    train(data, run, cache_dir=data.parent / "cache", augment=AUGMENT, **OPTIONS)
    return run


def _start(data: Path, run: Path) -> subprocess.Popen:
    options = [
        str(x) for k, v in {**OPTIONS, **AUGMENT}.items() for x in (f"--{k.replace('_', '-')}", v)
    ]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imgclass",
            "train",
            str(data),
            "--out",
            str(run),
            "--cache-dir",
            str(data.parent / "cache"),
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _in_second_epoch(process: subprocess.Popen, run: Path) -> None:
    """Return a quarter of an epoch after the first epoch's checkpoint appears."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stderr.read() if process.stderr else "(its output: see its log)"
            pytest.fail(f"training ended early ({process.returncode}): {output}")
        summary = run / "checkpoint.json"
        if summary.is_file():  # written atomically: complete whenever it is there
            seconds = json.loads(summary.read_text())["history"][0]["seconds"]
            time.sleep(seconds / 4)
            return
        time.sleep(0.02)
    process.kill()
    pytest.fail("no checkpoint after 300 s")


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_result(data, reference, tmp_path):
    run = tmp_path / "run"
    process = _start(data, run)
    _in_second_epoch(process, run)
    process.kill()  # SIGKILL: no handler runs, nothing is saved on the way out
    process.communicate()
    assert not (run / "metrics.json").exists() and not (run / "model.safetensors").exists()
    saved = json.loads((run / "checkpoint.json").read_text())["history"]
    assert len(saved) < OPTIONS["epochs"]

    result = train(resume=run, cache_dir=data.parent / "cache")
    assert not result.interrupted and result.history[-1].epoch == OPTIONS["epochs"]
    # the saved epochs were continued, not trained again (their timings are the killed run's)
    assert [h.seconds for h in result.history[: len(saved)]] == [h["seconds"] for h in saved]
    assert_same_results(reference, run)


@pytest.mark.slow
def test_ctrl_c_saves_the_run_and_resume_finishes_it(data, reference, tmp_path):
    run = tmp_path / "run"
    process = _start(data, run)
    _in_second_epoch(process, run)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    # 130, or death by SIGINT (which a shell also shows as 130): CPython ends that way itself
    # when the KeyboardInterrupt passed through an exec() (a lazy import) before it was handled
    assert process.returncode in (130, -signal.SIGINT), stderr
    assert "Interrupted: the run ends with epoch" in stderr and "--resume" in stderr
    metrics = json.loads((run / "metrics.json").read_text())
    saved = json.loads((run / "checkpoint.json").read_text())["epoch"]
    assert metrics["interrupted"] is True and metrics["final_epoch"] == saved < OPTIONS["epochs"]
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert load_model(run).meta.classes == ["blue", "green", "red"]

    result = CliRunner().invoke(
        main, ["train", "--resume", str(run), "--cache-dir", str(data.parent / "cache")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((run / "metrics.json").read_text())["interrupted"] is False
    assert_same_results(reference, run)


@pytest.mark.slow
def test_resume_refuses_other_options_finished_runs_and_changed_data(tmp_path):
    data = make_class_tree(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    # its checkpoint kept: as a run killed while writing its files (before metrics.json) has it
    first = train(
        data,
        run,
        image_size=8,
        epochs=1,
        batch_size=4,
        keep_checkpoint=True,
        recipe="seed",
        **QUICK,
    )
    with pytest.raises(ValueError, match="leave out out, epochs"):
        train(out=tmp_path / "x", resume=run, epochs=2)
    result = CliRunner().invoke(main, ["train", "--resume", str(run), "--lr", "0.1"])
    assert result.exit_code == 1 and "Error:" in result.output and "leave out lr" in result.output
    with pytest.raises(FileExistsError, match="finished already"):
        train(resume=run)
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "absent")])
    assert (
        result.exit_code == 1 and f"Error: {tmp_path / 'absent'}: no such folder" in result.output
    )

    (run / "metrics.json").unlink()  # as if killed while writing the run files
    with pytest.raises(FileExistsError, match="unfinished run; continue it with --resume"):
        train(data, run, image_size=8)
    assert (
        train(resume=run, **QUICK).history == first.history
    )  # nothing left to train: files written

    (run / "metrics.json").unlink()
    (data / "red" / "red_000.jpg").write_bytes((data / "red" / "red_001.jpg").read_bytes())
    with pytest.raises(DataError, match=r"red_000.jpg\); resuming needs the data"):
        train(resume=run)


def test_ctrl_c_in_the_export_skips_it_and_the_report(tmp_path, monkeypatch):
    data = make_class_tree(tmp_path / "data", per_class=6)

    def interrupted(run, *args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as err:  # torch's exporter wraps a Ctrl-C in its own error
            raise RuntimeError("Failed to export the model with torch.export") from err

    monkeypatch.setattr(export, "export_onnx", interrupted)
    run = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(data),
            "--out",
            str(run),
            "--epochs",
            "1",
            "--image-size",
            "8",
            "--batch-size",
            "4",
            "--recipe",
            "seed",
        ],
    )
    assert result.exit_code == 130, result.output
    assert (
        f"write what it skipped with: imgclass export {run}; imgclass report {run}" in result.output
    )
    assert json.loads((run / "metrics.json").read_text())["interrupted"] is False
    assert not (run / "model.onnx").exists() and not (run / "report.html").exists()

    monkeypatch.undo()
    assert CliRunner().invoke(main, ["export", str(run)]).exit_code == 0
    assert Predictor(run, backend="onnx").backend == "onnxruntime"  # a current export


def test_ctrl_c_while_the_run_files_are_written_waits_for_them(tmp_path, monkeypatch):
    data = make_class_tree(tmp_path / "data", per_class=6)
    plot_curves = training.plot_curves

    def ctrl_c_then_plot(*args, **kwargs):  # the signal arrives in the middle of the writing
        os.kill(os.getpid(), signal.SIGINT)
        plot_curves(*args, **kwargs)

    monkeypatch.setattr(training, "plot_curves", ctrl_c_then_plot)
    result = train(data, tmp_path / "run", image_size=8, epochs=1, batch_size=4, recipe="seed")
    assert result.unwritten == ("model.onnx", "report.html")
    for name in RUN_FILES:
        assert (result.run_dir / name).is_file(), name
    assert not (result.run_dir / "model.onnx").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_swallowed_inside_the_export_still_skips_the_report(tmp_path, monkeypatch):
    data = make_class_tree(tmp_path / "data", per_class=6)
    export_onnx = export.export_onnx

    def swallowing(run, *args, **kwargs):
        # as Python does with a KeyboardInterrupt raised in a weakref callback
        with contextlib.suppress(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        return export_onnx(run, *args, **kwargs)

    monkeypatch.setattr(export, "export_onnx", swallowing)
    result = train(data, tmp_path / "run", image_size=8, epochs=1, batch_size=4, recipe="seed")
    assert result.unwritten == ("report.html",)
    assert (result.run_dir / "model.onnx").is_file()
    assert not (result.run_dir / "report.html").exists()
