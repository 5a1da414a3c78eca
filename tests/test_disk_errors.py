"""Issue 13.8 and 13.14: a disk that is full or read-only is one line naming the file, exit 1,
in every command that writes; -v keeps the traceback above that line.

A full disk is a real one for the process: RLIMIT_FSIZE caps the size of any file it writes
(Python ignores SIGXFSZ, so the write fails with EFBIG as it would with ENOSPC).
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgclass.cli import main
from tests.conftest import make_class_tree

resource = pytest.importorskip("resource", reason="RLIMIT_FSIZE is POSIX")
FAILED_WRITE = re.compile(r"^Error: (/\S+): could not be written \((.+)\)$", re.MULTILINE)


def _imgclass(*args, limit: int) -> subprocess.CompletedProcess:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "imgclass", *map(str, args)],
        text=True,
        capture_output=True,
        preexec_fn=cap,
        timeout=300,
    )


def _one_line_naming(result: subprocess.CompletedProcess, inside: Path) -> Path:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    found = FAILED_WRITE.search(result.stderr)
    assert found, result.stderr
    named = Path(found.group(1))
    assert named.is_relative_to(inside) and named.parent.is_dir()
    return named


@pytest.mark.slow
def test_a_full_disk_while_decoding_or_training_is_one_line(tmp_path):
    data = make_class_tree(tmp_path / "data", per_class=6)
    cache = tmp_path / "cache"
    small = ("--recipe", "seed", "--epochs", "1", "--image-size", "32", "--cache-dir", cache)
    named = _one_line_naming(
        _imgclass("train", data, "--out", tmp_path / "run", *small, limit=4096), cache
    )
    assert named.suffix == ".npy" and not named.exists()  # its temporary file is gone too
    assert not [p for p in named.parent.iterdir() if p.name.endswith(".part")]
    scanned = _imgclass(
        "scan", data, "--image-size", "32", "--cache-dir", tmp_path / "c2", limit=4096
    )
    _one_line_naming(scanned, tmp_path / "c2")

    assert (
        _imgclass("scan", data, "--image-size", "32", "--cache-dir", cache, limit=2**30).returncode
        == 0
    )  # the cache warm: training writes the run
    named = _one_line_naming(
        _imgclass("train", data, "--out", tmp_path / "run2", *small, limit=200_000),
        tmp_path / "run2",
    )
    assert named.suffix == ".safetensors"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "report", "export", "prepare"])
def test_a_full_disk_in_the_commands_after_training_is_one_line(trained_run, tmp_path, command):
    if command == "prepare":
        data = make_class_tree(tmp_path / "data", per_class=2, size=64)
        result = _imgclass("prepare", data, "--out", tmp_path / "out", limit=1000)
    else:  # evaluate: the run's data decoded already (trained_run's cache)
        warm = ("--cache-dir", trained_run.parent / "cache") if command == "evaluate" else ()
        result = _imgclass(command, trained_run, "--out", tmp_path / "out", *warm, limit=1000)
    _one_line_naming(result, tmp_path / "out")


def test_a_read_only_disk_is_one_line_and_v_keeps_the_traceback(tmp_path, monkeypatch):
    data = make_class_tree(tmp_path / "data", per_class=4)
    out = tmp_path / "readonly" / "run"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.is_relative_to(tmp_path / "readonly"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    args = [
        "train",
        str(data),
        "--out",
        str(out),
        "--recipe",
        "seed",
        "--epochs",
        "1",
        "--image-size",
        "8",
    ]
    quiet = CliRunner().invoke(main, args)
    assert quiet.exit_code == 1
    assert quiet.output.strip().splitlines()[-1] == f"Error: {out}: Read-only file system"
    assert "Traceback" not in quiet.output
    loud = CliRunner().invoke(main, ["-v", *args])
    assert loud.exit_code == 1
    assert "Traceback (most recent call last)" in loud.output
    assert loud.output.strip().splitlines()[-1] == quiet.output.strip().splitlines()[-1]
