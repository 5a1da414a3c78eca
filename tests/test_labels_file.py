"""Issue 14.8: a CSV of path,label rows (Kaggle's and Hugging Face's layout) is data as a
class-folder tree is: the same manifest for the same files, the same scan, skips and report."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from imgclass.cli import main
from imgclass.data.dataset import load_dataset
from imgclass.data.labels_file import scan_labels_file
from imgclass.data.scan import DataError, scan_folder
from imgclass.evaluation import evaluate
from imgclass.training import train
from imgclass.val_predictions import data_folder
from tests.conftest import make_class_tree


def _csv_of(tree, name="labels.csv", header="image,label,split\n"):
    """tree/<class>/<file> as rows of a CSV beside the class folders (an extra column too)."""
    rows = [
        f"{path.relative_to(tree).as_posix()},{path.parent.name},x\n"
        for path in sorted(tree.rglob("*.jpg"))
    ]
    (tree / name).write_text(header + "".join(rows))
    return tree / name


@pytest.mark.slow
def test_a_csv_gives_the_manifest_of_the_class_folders_and_trains_alike(tmp_path):
    tree = make_class_tree(tmp_path / "data", per_class=8)
    labels = _csv_of(tree)
    by_csv, by_folders = scan_labels_file(labels), scan_folder(tree)
    assert by_csv.root == tree and by_csv.classes == by_folders.classes == ["blue", "green", "red"]
    assert sorted(by_csv.items, key=lambda i: i.path) == sorted(
        by_folders.items, key=lambda i: i.path
    )
    assert by_csv.skipped == []

    options = {
        "recipe": "seed",
        "image_size": 8,
        "epochs": 2,
        "batch_size": 8,
        "seed": 4,
        "precision": "fp32",
        "cache_dir": tmp_path / "cache",
    }
    csv_run = train(labels, tmp_path / "csv-run", **options)
    tree_run = train(tree, tmp_path / "tree-run", **options)
    losses = [
        [(h.train_loss, h.val_loss, h.val_acc) for h in run.history] for run in (csv_run, tree_run)
    ]
    assert losses[0] == losses[1]  # the same data, split and training
    split = json.loads((csv_run.run_dir / "split.json").read_text())
    assert {e["path"] for e in split["val"]} == {
        e["path"] for e in json.loads((tree_run.run_dir / "split.json").read_text())["val"]
    }
    config = json.loads((csv_run.run_dir / "config.json").read_text())
    assert config["data_dir"] == str(labels)
    assert data_folder(config) == (tree, None)  # the report's thumbnails are read from there
    report = (csv_run.run_dir / "report.html").read_text()
    assert "data folder" not in report and "thumbnails missing" not in report
    assert (
        evaluate(csv_run.run_dir, labels, cache_dir=tmp_path / "cache").accuracy
        == evaluate(tree_run.run_dir, tree, cache_dir=tmp_path / "cache").accuracy
    )


def test_every_unusable_row_is_skipped_with_its_row_and_reason(tmp_path):
    tree = make_class_tree(tmp_path / "data", per_class=4)
    (tree / "notes.txt").write_text("not an image")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((tree / "red" / "red_000.jpg").read_bytes())
    (tree / "red" / "link.jpg").symlink_to(outside)
    rows = [
        "blue/blue_000.jpg,blue",
        "blue/blue_001.jpg,blue",
        "blue/blue_001.jpg,blue",
        "green/green_000.jpg,green",
        "green/green_001.jpg,green",
        "green/green_001.jpg,red",  # the same file under two labels: neither kept
        "red/red_000.jpg,red",
        "red/red_001.jpg,red",
        "",
        "red/gone.jpg,red",
        "red/red_002.jpg,",
        "red/red_003.jpg",
        f"{outside},red",
        "../outside.jpg,red",
        "red/link.jpg,red",
        "red,red",
        "notes.txt,red",
    ]
    labels = tree / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")  # no header: path,label
    dataset = load_dataset(labels, 8, tmp_path / "cache")
    assert dataset.classes == ["blue", "green", "red"]
    assert sorted(dataset.paths) == [
        "blue/blue_000.jpg",
        "blue/blue_001.jpg",
        "green/green_000.jpg",
        "red/red_000.jpg",
        "red/red_001.jpg",
    ]
    reasons = {s.path: s.reason for s in dataset.skipped}
    assert reasons["red/gone.jpg"] == "row 10 of labels.csv: no such file"
    assert reasons["red/red_002.jpg"] == "row 11 of labels.csv: no label"
    assert reasons["labels.csv:12"] == "row 12 of labels.csv: 1 columns, not path,label"
    assert "a path outside the CSV's folder" in reasons[str(outside)]
    assert "a path outside the CSV's folder" in reasons["../outside.jpg"]
    assert (
        reasons["red/link.jpg"] == "row 15 of labels.csv: symbolic link pointing outside "
        "the data root"
    )
    assert reasons["red"] == "row 16 of labels.csv: not a regular file"
    assert reasons["notes.txt"].startswith("not an image")  # found by decoding, as in folders
    conflict = [s.reason for s in dataset.skipped if s.path == "green/green_001.jpg"]
    assert conflict == [
        "row 6 of labels.csv: label conflict: 'green' in row 5, 'red' here",
        "row 5 of labels.csv: label conflict: listed again with another label",
    ]
    assert [s.reason for s in dataset.skipped if s.path == "blue/blue_001.jpg"] == [
        "row 3 of labels.csv: listed again (row 2)"
    ]

    scanned = CliRunner().invoke(
        main, ["scan", str(labels), "--image-size", "8", "--cache-dir", str(tmp_path / "cache")]
    )
    assert scanned.exit_code == 0, scanned.output
    assert "5 images in 3 classes" in scanned.output and "row 10 of labels.csv" in scanned.output


def test_a_csv_that_cannot_be_data_is_one_clear_error(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label\n")
    with pytest.raises(DataError, match="empty.csv: no rows"):
        scan_labels_file(empty)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"caf\xe9.jpg,cat\n")
    with pytest.raises(DataError, match="latin.csv: not UTF-8 text"):
        scan_labels_file(latin)
    none_usable = tmp_path / "gone.csv"
    none_usable.write_text("a.jpg,cat\nb.jpg,dog\n")
    with pytest.raises(
        DataError, match="gone.csv: no usable row .* a.jpg: row 1 of gone.csv: no such file"
    ):
        scan_labels_file(none_usable)
    other = tmp_path / "labels.txt"
    other.write_text("a.jpg,cat\n")
    result = CliRunner().invoke(main, ["train", str(other), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "neither a folder nor a .csv file" in result.output
    result = CliRunner().invoke(main, ["train", str(none_usable), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "no usable row" in result.output
