"""The learning-rate range test: its suggestion on known curves, a real sweep and its outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
from click.testing import CliRunner

from imgclass.cli import main
from imgclass.lrfind import lr_find, suggest


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = np.logspace(-6, 0, 61)
    # a loss falling fastest at 1e-3 (a logistic step in log10 lr), then blowing up past 1e-1
    loss = 2 - 1.5 / (1 + np.exp(-4 * (np.log10(lrs) + 3))) + np.where(lrs > 0.1, 50 * lrs, 0)
    steepest, min_div10 = suggest(lrs, loss)
    assert np.isclose(np.log10(steepest), -3, atol=0.11)
    assert np.isclose(min_div10, lrs[np.argmin(loss)] / 10)
    # the first tenth is left out: an early wobble of the average is not the steepest descent
    wobbly = loss.copy()
    wobbly[1] -= 1.0
    assert np.isclose(suggest(lrs, wobbly)[0], steepest)


def test_sweep_writes_only_its_outputs_and_stops_on_divergence(class_tree, tmp_path):
    before = sorted(p for p in class_tree.rglob("*"))
    result = lr_find(class_tree, tmp_path / "lrf", steps=40, start_lr=1e-5, end_lr=1e4,
                     image_size=16, batch_size=4, cache_dir=tmp_path / "cache")
    assert sorted(p for p in class_tree.rglob("*")) == before
    assert sorted(p.name for p in (tmp_path / "lrf").iterdir()) == [
        "lr_find.csv", "lr_find.json", "lr_find.png"]
    assert result.stopped == "diverged" and 3 <= len(result.lrs) < 40  # Adam at 1e4 blows up
    ratios = np.diff(np.log(result.lrs))
    assert np.allclose(ratios, np.log(1e9) / 39)  # exponential: a constant factor per step
    assert result.lrs[0] <= result.suggested_lr <= result.lrs[-1]
    rows = list(csv.DictReader((tmp_path / "lrf" / "lr_find.csv").open()))
    assert [float(r["loss"]) for r in rows] == result.losses
    summary = json.loads((tmp_path / "lrf" / "lr_find.json").read_text())
    assert summary["suggested_lr"] == result.suggested_lr and summary["steps"] == len(rows)


def test_cli_prints_the_suggestion(class_tree, tmp_path):
    out = tmp_path / "lrf"
    result = CliRunner().invoke(main, [
        "lr-find", str(class_tree), "--out", str(out), "--recipe", "fast", "--image-size", "16",
        "--batch-size", "8", "--steps", "12", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "suggested learning rate" in result.output and (out / "lr_find.png").is_file()
    bad = CliRunner().invoke(main, ["lr-find", str(class_tree), "--out", str(out), "--steps",
                                    "2"])
    assert bad.exit_code == 1 and "steps >= 3" in bad.output
