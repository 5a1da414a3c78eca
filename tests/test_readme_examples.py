"""Issue 14.1: every command of the README's bash blocks runs as written, in README order, in a
working folder of its own: only its data (a small drop of archives made here in place of
../shared/datasets/animals10-raw), its placeholders (DATA, RUN, optional [...] parts) and the
service's address are filled in. What this machine cannot run is a skip that says why."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from imgclass.cli import main
from imgclass.models.backbones import Backbone
from tests.service import running_service

README = Path(__file__).resolve().parents[1] / "README.md"
COMMAND = re.compile(r"^(imgclass|torchrun|curl) ")
ITALIAN = {
    "gatto": (200, 60, 40),
    "gallina": (40, 160, 60),
    "mucca": (40, 60, 200),
    "cane": (200, 200, 40),
    "cavallo": (160, 40, 200),
    "ragno": (40, 200, 200),
}
PLACEHOLDERS = {
    "DATA": "data/animals6",
    "RUN": "runs/animals6",
    "../shared/datasets/animals10-raw": "drop",
}
pytestmark = pytest.mark.slow  # ~150 s: every README command, models trained for real
SERVED = re.compile(r"(https?://)?(127\.0\.0\.1|localhost):8000")


def readme_commands() -> list[str]:
    """The README's commands (continuation lines joined, comments and [optional] parts cut)."""
    commands, block, joined = [], False, ""
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            block = line == "```bash" and not block
            continue
        if not block:
            continue
        joined += line.strip()
        if joined.endswith("\\"):
            joined = joined[:-1].strip() + " "
            continue
        command = re.sub(r"\s{2,}#.*$", "", joined)  # a trailing comment
        command = re.sub(r"\s\[(?:--|[A-Z])[^\]]*\]", "", command).strip()  # [--optional]
        if COMMAND.match(command):
            commands.append(" ".join(PLACEHOLDERS.get(w, w) for w in command.split(" ")))
        joined = ""
    return commands


def _why_not_here(command: str) -> str | None:
    if "--device cuda" in command and not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if "--nnodes 2" in command:
        return "needs two machines"
    if command.startswith("torchrun") and "--resume" in command:
        return (
            "continues a killed run (the run before it finished); tests/test_resume.py "
            "kills and resumes runs"
        )
    if command.startswith("curl") and not shutil.which("curl"):
        return "curl is not installed"
    return None


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The working folder the commands run in: the drop of archives and the photos they name."""
    root = tmp_path_factory.mktemp("readme")
    (root / "drop").mkdir()
    rng = np.random.default_rng(0)
    for name, colour in ITALIAN.items():
        with zipfile.ZipFile(root / "drop" / f"{name}.zip", "w") as archive:
            for i in range(5):
                pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (40, 40, 3)), 0, 255)
                out = io.BytesIO()
                Image.fromarray(pixels.astype(np.uint8)).save(out, format="JPEG")
                archive.writestr(f"raw-img/{name}/{name}_{i}.jpeg", out.getvalue())
    with zipfile.ZipFile(root / "drop" / "football_test.zip", "w") as archive:
        archive.writestr("images/ball.jpg", b"not one of the classes")
    photos = [root / "drop" / f"{name}.zip" for name in ITALIAN]
    for i, name in enumerate(("photo.jpg", "a.jpg", "b.jpg", "more-photos/x.jpg", "photos/y.jpg")):
        (root / name).parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(photos[i]) as archive:
            (root / name).write_bytes(archive.read(archive.namelist()[0]))
    torch.manual_seed(0)  # `--pretrained weights.pth`: a state dict in timm's names
    torch.save(Backbone("mobilenet_v3_small", 1000).net.state_dict(), root / "weights.pth")
    return root


@pytest.fixture(scope="module")
def service(folder):
    """The README's `imgclass serve` (started by its step), for the curl examples after it."""
    with contextlib.ExitStack() as stack:
        yield stack


def test_the_readme_has_its_examples():
    commands = readme_commands()
    assert len(commands) >= 25
    assert "imgclass evaluate runs/animals6" in commands  # [DATA_DIR] left out
    assert "imgclass train data/animals6 --class-weights auto --sampler balanced" in commands


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command(command, folder, service, monkeypatch):
    if why := _why_not_here(command):
        pytest.skip(why)
    monkeypatch.chdir(folder)
    words = shlex.split(command)
    if words[0] == "curl":
        url = getattr(service, "url", None)
        assert url, "the README's `imgclass serve` comes before its curl examples"
        done = subprocess.run(
            ["bash", "-c", SERVED.sub(url, command)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer.get("predictions") or answer.get("outputs"), answer
        return
    if words[:2] == ["imgclass", "serve"]:
        service.url = service.enter_context(running_service(Path(words[2]), folder, *words[3:]))
        return
    if words[0] == "torchrun":
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", *words[1:]],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return
    redirect = words.index(">") if ">" in words else None
    result = CliRunner().invoke(main, words[1:redirect])
    if "--model resnet18" in command and result.exit_code == 1:  # its weights: a download
        assert "--pretrained FILE" in result.output, result.output
        return
    assert result.exit_code == 0, result.output
    if redirect:
        Path(words[redirect + 1]).write_text(result.stdout)
        assert result.stdout.count("\n") >= 2  # a header and a row at least
