"""A messy class-folder tree end to end: the scan report, `imgclass scan`, and a training run.

The tree holds duplicates, a label conflict, an empty class, a class whose only file does not
decode, odd file names (unicode, spaces, bytes that are not UTF-8), links inside and outside the
root, OS junk and a file directly under the root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from imgclass.cli import main
from imgclass.data.dataset import load_dataset
from imgclass.data.scan import DataError
from tests.conftest import QUICK, make_class_tree

ODD_NAME = "red/caf\\xe9 \\xff.jpg"  # how the scan writes red/caf<0xE9> <0xFF>.jpg


def make_messy_tree(base: Path, per_class: int = 10) -> Path:
    data = make_class_tree(base / "data", per_class=per_class, size=16)
    blue = (data / "blue" / "blue_000.jpg").read_bytes()
    for i in range(4):  # one content five times in one class
        (data / "blue" / f"copy {i}.jpg").write_bytes(blue)
    green = (data / "green" / "green_001.jpg").read_bytes()
    (data / "green" / "sub").mkdir()
    (data / "green" / "sub" / "again.jpg").write_bytes(green)
    red = (data / "red" / "red_000.jpg").read_bytes()
    (data / "green" / "actually_red.jpg").write_bytes(red)  # one content under two classes
    (data / "red" / "Zoë's 猫.jpg").write_bytes((data / "red" / "red_001.jpg").read_bytes() + b"1")
    with open(os.fsencode(data / "red") + b"/caf\xe9 \xff.jpg", "wb") as f:
        f.write((data / "red" / "red_002.jpg").read_bytes() + b"\0")  # new content, decodable
    (data / "empty").mkdir()
    (data / "broken").mkdir()
    (data / "broken" / "page.jpg").write_text("<html>not an image</html>")
    (data / "red" / ".DS_Store").write_bytes(b"\0\0")
    (data / "notes.txt").write_text("labels are folders")
    outside = base / "outside.jpg"
    outside.write_bytes(blue)
    (data / "blue" / "outside.jpg").symlink_to(outside)
    (data / "blue" / "inside.jpg").symlink_to(data / "blue" / "blue_003.jpg")
    return data


def test_load_dataset_reports_everything_and_leaves_conflicts_out(tmp_path):
    data = make_messy_tree(tmp_path)
    dataset = load_dataset(data, 8)
    report = dataset.report
    assert report.classes == dataset.classes == ["blue", "broken", "empty", "green", "red"]
    reasons = {s.path: s.reason for s in report.skipped}
    assert reasons == {s.path: s.reason for s in dataset.skipped}
    assert reasons["green/actually_red.jpg"] == "label conflict: same content also in class red"
    assert reasons["red/red_000.jpg"] == "label conflict: same content also in class green"
    assert reasons["broken/page.jpg"].startswith("not an image")
    assert reasons["blue/outside.jpg"] == "symbolic link pointing outside the data root"
    assert reasons["red/.DS_Store"] == "OS junk file"
    assert reasons["notes.txt"] == "not inside a class folder"
    # 10 + 4 copies + 1 link inside; 10 + 1 copy; 10 - 1 conflict + 2 odd names
    assert report.images == {"blue": 15, "broken": 0, "empty": 0, "green": 11, "red": 11}
    assert report.empty_classes == ["broken", "empty"]
    assert ODD_NAME in dataset.paths and "red/Zoë's 猫.jpg" in dataset.paths
    assert [g.paths for g in report.duplicates] == [
        [
            "blue/blue_000.jpg",
            "blue/copy 0.jpg",
            "blue/copy 1.jpg",
            "blue/copy 2.jpg",
            "blue/copy 3.jpg",
        ],
        ["blue/blue_003.jpg", "blue/inside.jpg"],
        ["green/green_001.jpg", "green/sub/again.jpg"],
    ]
    assert [(g.classes, g.paths) for g in report.conflicts] == [
        (["green", "red"], ["green/actually_red.jpg", "red/red_000.jpg"])
    ]
    as_json = json.loads(json.dumps(report.to_dict(), ensure_ascii=False))
    assert as_json["conflicts"][0]["classes"] == ["green", "red"]

    kept = load_dataset(data, 8, keep_conflicts=True)
    assert {"green/actually_red.jpg", "red/red_000.jpg"} <= set(kept.paths)
    assert kept.report.conflicts_kept and len(kept.report.conflicts) == 1
    assert not any(s.reason.startswith("label conflict") for s in kept.skipped)


def test_scan_command_prints_the_report_without_training(tmp_path, monkeypatch):
    data = make_messy_tree(tmp_path)
    work = tmp_path / "cwd"  # an empty working folder: scan writes nothing there (no runs/)
    work.mkdir()
    monkeypatch.chdir(work)
    result = CliRunner().invoke(
        main, ["scan", str(data), "--image-size", "8", "--out", str(tmp_path / "scan.json")]
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    lines = out.splitlines()
    assert lines[0].split() == ["class", "images"]
    assert lines[1].split() == ["blue", "15"] and lines[3].split() == ["empty", "0"]
    assert "37 images in 5 classes" in out
    assert "classes without images (training refuses them): broken, empty" in out
    assert "broken/page.jpg" in out and "not an image" in out  # decode-checked
    assert "label conflict: same content also in class red" in out
    assert "exact duplicates (same content in one class; every copy kept" in out
    assert "blue/copy 3.jpg" in out
    assert "label conflicts (same content in several classes; left out" in out
    saved = json.loads((tmp_path / "scan.json").read_text())
    assert saved["images"]["red"] == 11 and saved["conflicts_kept"] is False
    assert not (tmp_path / "runs").exists() and not any(work.iterdir())

    kept = CliRunner().invoke(main, ["scan", str(data), "--image-size", "8", "--keep-conflicts"])
    assert kept.exit_code == 0 and "several classes; kept): 1" in kept.stdout
    assert "39 images in 5 classes" in kept.stdout


def test_scan_command_gives_one_clear_line_for_a_folder_without_classes(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    result = CliRunner().invoke(main, ["scan", str(tmp_path)])
    assert result.exit_code == 1
    assert "no class folders found" in result.output


def test_a_messy_tree_trains_with_no_leakage_and_a_scan_report(tmp_path):
    from imgclass.evaluation import evaluate
    from imgclass.training import train

    data = make_messy_tree(tmp_path, per_class=8)
    run = tmp_path / "run"
    options = {"image_size": 8, "epochs": 1, "batch_size": 16, "seed": 2, "recipe": "seed", **QUICK}
    # 13.11: a folder without files is refused before decoding; one whose files do not decode
    # once they are decoded
    with pytest.raises(DataError, match="^class without images: empty; "):
        train(data, run, **options)
    (data / "empty").rmdir()
    with pytest.raises(DataError, match="^class without images: broken; "):
        train(data, run, **options)
    shutil.rmtree(data / "broken")
    train(data, run, **options)
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == ["blue", "green", "red"]
    split = json.loads((run / "split.json").read_text())
    train_files, val_files = split["train"], split["val"]
    assert not {e["sha256"] for e in train_files} & {e["sha256"] for e in val_files}
    copies = {
        e["path"]
        for e in train_files + val_files
        if e["sha256"] == hashlib.sha256((data / "blue" / "blue_000.jpg").read_bytes()).hexdigest()
    }
    assert len(copies) == 5
    every = {e["path"]: e["label"] for e in train_files + val_files}
    assert every[ODD_NAME] == "red" and every["red/Zoë's 猫.jpg"] == "red"
    assert "green/actually_red.jpg" not in every and "red/red_000.jpg" not in every
    scan = json.loads((run / "scan.json").read_text())
    skipped = json.loads((run / "skipped.json").read_text())
    assert scan["skipped"] == sorted(skipped, key=lambda s: s["path"])
    assert scan["images"] == {"blue": 13, "green": 9, "red": 9}
    assert len(scan["conflicts"]) == 1 and len(scan["duplicates"]) == 3
    assert evaluate(run).count == len(val_files)  # the odd names are found again by path


def test_a_run_is_never_written_into_nor_read_as_data(tmp_path):
    """Issue 13.2: --out inside the data folder (a class folder, the root) is refused before
    anything is written; a run directory found in a data folder is skipped, never a class."""
    data = make_class_tree(tmp_path / "data", per_class=4)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    for out in (data / "run", data / "red" / "run", data):
        result = CliRunner().invoke(
            main, ["train", str(data), "--out", str(out), "--epochs", "1", "--image-size", "8"]
        )
        assert result.exit_code == 1, result.output
        assert f"--out {out} is inside the data folder {data}" in result.output
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before

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
            "--no-export",
            "--recipe",
            "seed",
        ],
    )
    assert result.exit_code == 0, result.output
    shutil.copytree(run, data / "old-run")  # a run put among the classes
    shutil.copytree(run, data / "red" / "old-run")  # and inside a class
    dataset = load_dataset(data, 8, cache_dir=tmp_path / "cache")
    assert dataset.classes == ["blue", "green", "red"] and len(dataset.labels) == 12
    reasons = {s.path: s.reason for s in dataset.skipped}
    assert reasons["old-run"] == reasons["red/old-run"] == "an imgclass run directory, not photos"
    with pytest.raises(DataError, match="an imgclass run directory, not photos"):
        load_dataset(run, 8, cache_dir=tmp_path / "cache")


def test_max_pixels_gives_the_same_data_whatever_the_cache_holds(tmp_path):
    """Issue 13.5: a warm cache (decoded under a higher limit) ignored --max-pixels; and 0 was
    accepted. The limit is decided from each file's header at scan time."""
    data = make_class_tree(tmp_path / "data", per_class=4)
    Image.new("RGB", (120, 90), (200, 40, 30)).save(data / "red" / "large.png")
    cache = tmp_path / "cache"
    cold = load_dataset(data, 8, cache_dir=cache, max_pixels=10_000)
    everything = load_dataset(data, 8, cache_dir=cache)  # now the cache holds large.png too
    warm = load_dataset(data, 8, cache_dir=cache, max_pixels=10_000)
    assert "red/large.png" in everything.paths and len(everything.paths) == 13
    for dataset in (cold, warm):
        assert dataset.paths == cold.paths and "red/large.png" not in dataset.paths
        assert {s.path: s.reason for s in dataset.skipped}["red/large.png"] == (
            "too many pixels (120 x 90 > 10000)"
        )
    result = CliRunner().invoke(
        main, ["train", str(data), "--out", str(tmp_path / "run"), "--max-pixels", "0"]
    )
    assert result.exit_code == 2 and "--max-pixels" in result.output
    assert not (tmp_path / "run").exists()
