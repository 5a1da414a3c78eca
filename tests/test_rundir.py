"""Issue 13.3 and 13.4: a run folder takes one training process at a time (an OS lock that dies
with its process), and a folder of someone else's files is never written into."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from imgclass.cli import main
from tests.conftest import make_class_tree

TRAIN = ["--recipe", "seed", "--epochs", "1", "--image-size", "8", "--no-export"]


def _train(data, out, *extra):
    return CliRunner().invoke(main, ["train", str(data), "--out", str(out), *TRAIN, *extra])


def test_user_files_in_out_are_never_overwritten(tmp_path):
    data = make_class_tree(tmp_path / "data", per_class=4)
    mine = tmp_path / "mine"
    mine.mkdir()
    files = {
        "config.json": '{"mine": true}',
        "metrics.json": "{}",
        "history.csv": "a,b\n",
        "report.html": "<p>my report</p>",
    }
    for name, text in files.items():
        (mine / name).write_text(text)
    for extra in ((), ("--overwrite",)):
        result = _train(data, mine, *extra)
        assert result.exit_code == 1, result.output
        assert (
            f"{mine}: holds files that are not an imgclass run (config.json, history.csv, "
            "metrics.json, ...)"
        ) in result.output
    assert {p.name: p.read_text() for p in mine.iterdir()} == files

    early = tmp_path / "early"  # what a run that failed before describing itself leaves
    early.mkdir()
    (early / "train.log").write_text("error\n")
    assert _train(data, early).exit_code == 0
    result = _train(data, early)  # a finished run: only with --overwrite
    assert result.exit_code == 1 and "holds a finished run" in result.output
    assert _train(data, early, "--overwrite").exit_code == 0


@pytest.mark.skipif(sys.platform == "win32", reason="the lock is POSIX flock")
def test_one_training_per_folder_and_a_killed_one_leaves_it_free(tmp_path):
    data = make_class_tree(tmp_path / "data", per_class=4)
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from imgclass.rundir import locked\n"
            "with locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = _train(data, out)
        assert result.exit_code == 1, result.output
        assert (
            f"{out}: another imgclass process (pid {holder.pid}) is training into it"
            in result.output
        )
        assert not (out / "config.json").exists()  # nothing of the second run was written
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a killed holder: its lock dies with it
        holder.wait(timeout=60)
    assert _train(data, out).exit_code == 0
    assert json.loads((out / "metrics.json").read_text())["final_epoch"] == 1


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_write_killed_half_done_is_removed_when_the_run_goes_on(tmp_path, monkeypatch):
    from tests.conftest import ctrl_c_after_epoch

    data = make_class_tree(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    ctrl_c_after_epoch(monkeypatch, 1)
    assert _train(data, run, "--epochs", "2").exit_code == 130  # interrupted: resumable
    monkeypatch.undo()
    writer = subprocess.Popen(  # killed inside atomic.write_with, as a checkpoint's save can be
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from imgclass import atomic\n"
            "def write(tmp):\n    tmp.write_bytes(bytes(10**6)); print('writing', flush=True); "
            "time.sleep(120)\n"
            "atomic.write_with(Path(sys.argv[1]) / 'checkpoint.safetensors', write)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=60)
    left = list(run.glob(".checkpoint.safetensors.*.part"))
    assert len(left) == 1 and left[0].stat().st_size == 10**6
    result = CliRunner().invoke(main, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert f"removed {left[0]}: a write that a stopped process left half done" in result.output
    assert not list(run.rglob("*.part"))
    assert json.loads((run / "metrics.json").read_text())["final_epoch"] == 2


def test_overwrite_clears_every_stage_checkpoint_of_the_old_run(tmp_path):
    """A new run into an old one's folder (--overwrite) never resumes the old fine-tuning
    stage: clear_stale removes the same checkpoint files a finished run does."""
    from imgclass.rundir import CHECKPOINT, CHECKPOINT_SUMMARY, FINETUNE, clear_stale

    old = tmp_path / "run"
    (old / FINETUNE).mkdir(parents=True)
    for folder in (old, old / FINETUNE):
        for name in (CHECKPOINT, CHECKPOINT_SUMMARY):
            (folder / name).write_bytes(b"old")
    (old / "metrics.json").write_text("{}")
    (old / "config.json").write_text("{}")
    clear_stale(old)
    assert sorted(p.name for p in old.iterdir()) == ["config.json"]
