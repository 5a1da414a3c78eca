"""The learning-rate range test: its suggestion on known curves, a real sweep and its outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
from click.testing import CliRunner

from imgclass.cli import main
from imgclass.lrfind import suggest


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
    out = tmp_path / "lrf"
    cli = CliRunner().invoke(
        main,
        [
            "lr-find",
            str(class_tree),
            "--out",
            str(out),
            "--recipe",
            "seed",
            "--image-size",
            "16",
            "--batch-size",
            "4",
            "--steps",
            "30",
            "--start-lr",
            "1e-5",
            "--end-lr",
            "1e4",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert sorted(p for p in class_tree.rglob("*")) == before
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.csv", "lr_find.json", "lr_find.png"]
    summary = json.loads((out / "lr_find.json").read_text())
    rows = list(csv.DictReader((out / "lr_find.csv").open()))
    lrs = np.array([float(r["lr"]) for r in rows])
    assert summary["stopped"] == "diverged" and 3 <= len(rows) < 30  # Adam at 1e4 blows up
    assert np.allclose(np.diff(np.log(lrs)), np.log(1e9) / 29)  # a constant factor per step
    assert lrs[0] <= summary["suggested_lr"] <= lrs[-1] and summary["steps"] == len(rows)
    assert f"suggested learning rate: {summary['suggested_lr']:.3g}" in cli.output
    bad = CliRunner().invoke(main, ["lr-find", str(class_tree), "--out", str(out), "--steps", "2"])
    assert bad.exit_code == 1 and "steps >= 3" in bad.output
