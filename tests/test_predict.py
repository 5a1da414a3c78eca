import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from imgclass.cli import main
from imgclass.data.batches import iterate_batches
from imgclass.data.dataset import load_dataset
from imgclass.evaluation import predict_proba
from imgclass.predict import Predictor
from tests.conftest import make_class_tree


def test_predict_preprocessing_is_the_validation_tensor(trained_run, tmp_path):
    data = make_class_tree(tmp_path / "d", per_class=2, size=37)
    dataset = load_dataset(data, 16, cache_dir=tmp_path / "cache")
    validation_x, _ = next(iterate_batches(dataset.pixels, torch.from_numpy(dataset.labels), 64))
    predictor = Predictor(trained_run)
    for row, path in enumerate(dataset.paths):
        x = predictor.preprocess(data / path)
        assert torch.equal(x, validation_x[row : row + 1])


def test_predict_files_and_folders_with_top_k(trained_run, tmp_path):
    data = make_class_tree(tmp_path / "d", per_class=3, seed=4)
    (data / "red" / "notes.txt").write_text("not an image")
    predictor = Predictor(trained_run)
    results = predictor.predict([data / "blue" / "blue_000.jpg", data / "red"], top_k=2)
    assert [r.path.rsplit("/", 1)[-1] for r in results] == [
        "blue_000.jpg",
        "notes.txt",
        "red_000.jpg",
        "red_001.jpg",
        "red_002.jpg",
    ]
    good = [r for r in results if r.error is None]
    assert all(len(r.labels) == 2 and r.probabilities[0] >= r.probabilities[1] for r in good)
    assert [r.label for r in good] == ["blue", "red", "red", "red"]
    assert results[1].error == "not an image (unrecognised format)" and results[1].labels == []


def test_predict_probabilities_match_the_evaluation_path(trained_run, tmp_path):
    data = make_class_tree(tmp_path / "d", per_class=2, seed=6)
    dataset = load_dataset(data, 16, cache_dir=tmp_path / "cache")
    predictor = Predictor(trained_run, backend="pytorch")
    results = predictor.predict([data / p for p in dataset.paths], top_k=3)
    expected = predict_proba(predictor.model, dataset.pixels, predictor.device)
    for result, row in zip(results, expected):
        probs = dict(zip(result.labels, result.probabilities))
        assert [probs[c] for c in predictor.classes] == pytest.approx(row.tolist(), abs=1e-6)
    assert np.allclose(expected.sum(1), 1, atol=1e-5)


def test_streaming_in_order_with_skips_at_any_batch_size(trained_run, tmp_path):
    data = make_class_tree(tmp_path / "d", per_class=7, seed=8)
    (data / "green" / "green_003.jpg").write_bytes(b"")
    (data / "red" / "zz.jpg").write_bytes((data / "red" / "red_000.jpg").read_bytes()[:200])
    reference = Predictor(trained_run, batch_size=64, workers=1).predict([data], top_k=2)
    assert len(reference) == 22
    streamed = Predictor(trained_run, batch_size=3, workers=3).predict_iter([data], top_k=2)
    for a, b in zip(reference, streamed, strict=True):
        assert (a.path, a.labels, a.error) == (b.path, b.labels, b.error)
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    errors = {r.path.rsplit("/", 1)[-1]: r.error for r in reference if r.error}
    assert errors["green_003.jpg"] == "empty file"
    assert errors["zz.jpg"].startswith("truncated or corrupt image data")


@pytest.mark.precision
def test_predict_command_csv_and_jsonl_from_onnx(exported_onnx, trained_run, tmp_path):
    data = make_class_tree(tmp_path / "d", per_class=2, seed=5)
    (data / "blue" / "notes.txt").write_text("not an image")
    expected = Predictor(trained_run, precision="fp32").predict([data], top_k=2)  # as ONNX
    result = CliRunner().invoke(
        main,
        [
            "predict",
            str(exported_onnx),
            str(data),
            "--top-k",
            "2",
            "--format",
            "csv",
            "--batch-size",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["path"] for r in rows] == [p.path for p in expected]
    for row, want in zip(rows, expected):
        assert [row["label_1"], row["label_2"]] == (want.labels or ["", ""])
        assert row["error"] == (want.error or "")
        if not want.error:
            assert float(row["probability_1"]) == pytest.approx(want.probabilities[0], abs=1e-4)
    assert "1 files skipped" in result.stderr
    result = CliRunner().invoke(
        main, ["predict", str(exported_onnx), str(data / "blue"), "--format", "jsonl"]
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [x["error"] for x in lines] == [None, None, "not an image (unrecognised format)"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_special_files_are_skipped_never_opened(trained_run, tmp_path):
    """Issue 13.7: a FIFO given to predict (directly or in a folder) or inside a folder given to
    prepare blocked the open forever; it is skipped with a reason (real processes, time-limited,
    so a regression fails instead of hanging the suite)."""
    photos = make_class_tree(tmp_path / "photos", per_class=1, seed=3)
    os.mkfifo(photos / "red" / "pipe.jpg")
    os.mkfifo(tmp_path / "alone.jpg")
    command = [
        sys.executable,
        "-m",
        "imgclass",
        "predict",
        str(trained_run),
        str(tmp_path / "alone.jpg"),
        str(photos),
        "--format",
        "jsonl",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {Path(row["path"]).name: row for row in map(json.loads, done.stdout.splitlines())}
    assert rows["alone.jpg"]["error"] == rows["pipe.jpg"]["error"] == "not a regular file"
    assert sum(row["error"] is None for row in rows.values()) == 3
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgclass",
            "prepare",
            str(photos),
            "--out",
            str(tmp_path / "prepared"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "prepared" / "red" / "pipe.jpg").exists()
    assert len(list((tmp_path / "prepared").rglob("*.jpg"))) == 3


def test_a_batch_size_below_one_is_refused(trained_run):
    """Issue 13.11: predict --batch-size 0 ended in range()'s error, serve answered 500s."""
    for command in (["predict", str(trained_run), str(trained_run)], ["serve", str(trained_run)]):
        result = CliRunner().invoke(main, [*command, "--batch-size", "0"])
        assert result.exit_code == 2 and "--batch-size" in result.output
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        Predictor(trained_run, batch_size=0)


def test_predict_takes_one_path_images_in_memory_and_lists_of_them(trained_run, tmp_path):
    """Issue 14.3: a string is one path (it was iterated per character); PIL images and uint8
    arrays give the probabilities their files give (a lossless PNG: the same pixels)."""
    from PIL import Image

    data = make_class_tree(tmp_path / "d", per_class=2, seed=9)
    png = tmp_path / "red.png"
    Image.open(data / "red" / "red_000.jpg").convert("RGB").save(png)
    predictor = Predictor(trained_run)
    [one] = predictor.predict(str(png), top_k=3)
    assert one.path == str(png) and one.error is None and len(one.labels) == 3
    assert [r.path for r in predictor(str(data / "blue"))] == [
        str(data / "blue" / f"blue_00{i}.jpg") for i in range(2)
    ]  # callable; a folder expanded
    image = Image.open(png)
    array = np.asarray(image.convert("RGB"))
    results = predictor([image, array, png, array[None].repeat(2, axis=0)], top_k=3)
    assert [r.path for r in results] == [
        "<image 0>",
        "<image 1>",
        str(png),
        "<image 2>",
        "<image 3>",
    ]
    for result in results:
        assert result.labels == one.labels
        assert result.probabilities == pytest.approx(one.probabilities, abs=1e-6)
    with pytest.raises(
        ValueError,
        match=r"an image array is \(H, W, 3\) uint8 RGB; got "
        r"\(24, 24\) uint8",
    ):
        predictor(array[:, :, 0])
    with pytest.raises(TypeError, match="predict takes paths, PIL images or uint8 arrays; got int"):
        predictor([3])
