import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from imgclass.cli import main
from tests.conftest import make_class_tree, shared_dataset

SIX = ["cat", "chicken", "cow", "dog", "horse", "spider"]


def run_cli(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_python_dash_m_runs_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "imgclass", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("prepare", "train", "evaluate", "predict"):
        assert command in out


def _readme_line(start: str) -> list[str]:
    """The README's command that starts with `start`, as its words (the shell's splitting)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    [line] = [line for line in readme.splitlines() if line.startswith(start)]
    return shlex.split(line)


def test_prepare_animals10_raw_gives_the_six_reference_classes(tmp_path):
    """The README's step 1 as written (it failed: --classes took one word, the rest were read
    as sources), the data and --out given as absolute paths."""
    raw = shared_dataset("animals10-raw")
    words = _readme_line("imgclass prepare ../shared/datasets/animals10-raw")
    assert words[2] == "../shared/datasets/animals10-raw" and words[-2] == "--out"
    result = run_cli(*words[1:2], raw, *words[3:-1], tmp_path / "a6")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "a6").iterdir()) == SIX
    for name in SIX:
        assert len(list((tmp_path / "a6" / name).iterdir())) == 32
        assert re.search(rf"^{name}\s+32\s*$", result.output, re.MULTILINE)
    left_out = [line for line in result.output.splitlines() if line.startswith("left out:")]
    assert any("football_test.zip" in line for line in left_out)
    assert any("indoor_scenes" in line for line in left_out)
    assert len(left_out) == 6  # the two irrelevant archives and four unwanted animals


def test_train_evaluate_predict_through_the_cli(tmp_path):
    data = make_class_tree(tmp_path / "data", per_class=8)
    run = tmp_path / "runs" / "x"
    result = run_cli(
        "train",
        data,
        "--out",
        run,
        "--image-size",
        "16",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "0.001",
        "--val-split",
        "0.25",
        "--seed",
        "3",
        "--patience",
        "1",
        "--recipe",
        "seed",
    )
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert (
        config["image_size"],
        config["epochs"],
        config["batch_size"],
        config["lr"],
        config["val_split"],
        config["seed"],
        config["patience"],
    ) == (16, 2, 8, 1e-3, 0.25, 3, 1)
    assert "Total" in result.stderr and "epoch 1/2" in result.stderr
    assert f"the report: {run / 'report.html'}\nnext:\n  imgclass evaluate {run} [DATA_DIR]" in (
        result.stdout
    )  # what to do with the run (issue 14.2)
    assert f"  imgclass predict {run} photo.jpg" in result.stdout
    assert f"  imgclass serve {run} " in result.stdout
    # finished: the resume checkpoint is gone (issue 14.6), the model and the report stay
    assert not (run / "checkpoint.safetensors").exists() and not (run / "checkpoint.json").exists()
    assert "removed the resume checkpoint (" in result.stderr
    kept = tmp_path / "runs" / "kept"
    assert (
        run_cli(
            "train",
            data,
            "--out",
            kept,
            "--image-size",
            "16",
            "--epochs",
            "1",
            "--keep-checkpoint",
            "--recipe",
            "seed",
        ).exit_code
        == 0
    )
    assert (kept / "checkpoint.safetensors").is_file() and (kept / "checkpoint.json").is_file()

    result = run_cli("evaluate", run)
    assert result.exit_code == 0 and "macro-F1" in result.output and "confusion" in result.output

    result = run_cli("predict", run, data / "red", "--top-k", "2", "--format", "jsonl")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 8 and all(len(r["labels"]) == 2 for r in rows)


def test_errors_are_one_clear_line(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a").mkdir()
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "only")])
    assert result.exit_code == 1
    assert "Error:" in result.output and "missing" in result.output
    assert "Traceback" not in result.output


def test_a_run_whose_json_files_are_damaged_is_named_in_one_line(trained_run, tmp_path):
    for name in ("config.json", "split.json"):
        run = tmp_path / name.split(".")[0]
        shutil.copytree(trained_run, run)
        (run / name).write_text('{"epochs": 2,')
        result = CliRunner().invoke(main, ["report", str(run)])
        assert result.exit_code == 1, result.output
        assert f"{run / name}: not valid JSON" in result.output
        assert "Traceback" not in result.output
    recipe = tmp_path / "mine.json"
    recipe.write_text('{"epochs": "ten"}')
    result = CliRunner().invoke(main, ["train", str(tmp_path / "config"), "--recipe", str(recipe)])
    assert result.exit_code == 1
    assert f'{recipe}: epochs must be an integer, got "ten"' in result.output


def test_help_describes_every_option_and_no_summary_is_cut():
    """Issue 14.7."""
    import click

    listing = CliRunner().invoke(main, ["--help"], terminal_width=80).output
    commands = listing.split("Commands:")[1].strip().splitlines()
    assert len(commands) == len(main.commands)
    assert not [line for line in commands if line.endswith("...")], commands
    for name, command in main.commands.items():
        undescribed = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
        assert not undescribed, (name, undescribed)
        assert "scan.json" not in CliRunner().invoke(main, [name, "--help"]).output or (
            name == "scan"
        )
    train_help = CliRunner().invoke(main, ["train", "--help"], terminal_width=200).output
    assert re.search(
        r"--epochs INTEGER +Maximum number of epochs\.  \[default: the recipe's\]", train_help
    )
