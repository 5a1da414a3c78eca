"""Plots of a run (matplotlib, Agg): training curves, confusion matrix, class counts, calibration.

`plot_*` write PNG files into the run directory; `*_figure` return PNG bytes, embedded as they are
by the HTML report (`html_report.py`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from imgclass import atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot():
    """pyplot on the Agg backend (files only, no display), imported on first use: ~30 MB that
    a training run needs only once it has finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _subplots(*args, **kwargs):
    return _pyplot().subplots(*args, **kwargs)


def _png(fig: Figure, dpi: int = 120) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def plot_curves(
    epochs: Sequence[int],
    series: dict[str, Sequence[float]],
    restored_epoch: int,
    path: str | os.PathLike,
) -> None:
    """Accuracy and loss, training vs validation, with the epoch early stopping restored."""
    fig, axes = _subplots(1, 2, figsize=(11, 4))
    for ax, metric, title in ((axes[0], "acc", "Accuracy"), (axes[1], "loss", "Loss")):
        ax.plot(epochs, series[f"train_{metric}"], "o-", label="training")
        ax.plot(epochs, series[f"val_{metric}"], "o-", label="validation")
        ax.axvline(
            restored_epoch, color="grey", linestyle="--", label=f"restored (epoch {restored_epoch})"
        )
        ax.set(title=title, xlabel="epoch", ylabel=title.lower())
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    atomic.write_bytes(path, _png(fig))


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike) -> None:
    """Counts, with each cell shaded by its share of the true class (rows sum to 1)."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = _subplots(figsize=(side + 1, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color="white" if shares[i, j] > 0.5 else "black",
        )
    atomic.write_bytes(path, _png(fig))


def class_counts_figure(classes: Sequence[str], counts: dict[str, Sequence[int]]) -> bytes:
    """Images per class, one stacked bar per class: counts maps a part (training, ...) to counts."""
    fig, ax = _subplots(figsize=(max(5.0, 0.5 * len(classes) + 2), 3.5))
    bottom = np.zeros(len(classes))
    for part, values in counts.items():
        ax.bar(range(len(classes)), values, bottom=bottom, label=part)
        bottom += np.asarray(values)
    ax.set_xticks(
        range(len(classes)),
        classes,
        rotation=45 if len(classes) > 6 else 0,
        ha="right" if len(classes) > 6 else "center",
    )
    ax.set(ylabel="images", title="Images per class")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    return _png(fig, dpi=100)


def reliability_figure(
    confidence: Sequence[float],
    accuracy: Sequence[float],
    count: Sequence[int],
    edges: Sequence[float],
    ece: float,
) -> bytes:
    """Accuracy against confidence per bin (the diagonal: perfect calibration); bin sizes below."""
    edges = np.asarray(edges)
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    filled = np.asarray(count) > 0
    fig, (top, bottom) = _subplots(
        2, 1, figsize=(5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.bar(
        centres[filled],
        np.asarray(accuracy)[filled],
        width=width[filled],
        edgecolor="black",
        alpha=0.7,
        label="accuracy in the bin",
    )
    top.plot(
        np.asarray(confidence)[filled],
        np.asarray(accuracy)[filled],
        "o",
        color="black",
        label="mean confidence in the bin",
    )
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.set(
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"Reliability (expected calibration error {ece:.3f})",
    )
    top.legend(loc="upper left", fontsize=8, framealpha=0.9)
    bottom.bar(centres, count, width=width, edgecolor="black", color="grey")
    bottom.set(xlabel="confidence (probability of the predicted class)", ylabel="images")
    return _png(fig, dpi=100)


def plot_trials(
    trials: Sequence[int], values: Sequence[float], name: str, path: str | os.PathLike
) -> None:
    """A tuning history: each completed trial's objective and the best so far (lower is better)."""
    fig, ax = _subplots(figsize=(7, 4))
    ax.plot(trials, values, "o", label="trial")
    ax.plot(trials, np.minimum.accumulate(values), "-", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(name)
    ax.legend()
    ax.grid(alpha=0.3)
    atomic.write_bytes(path, _png(fig))


def plot_lr_find(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    suggested: float,
    path: str | os.PathLike,
) -> None:
    """The learning-rate range test: loss against learning rate (log scale), the suggestion."""
    fig, ax = _subplots(figsize=(7, 4))
    ax.plot(lrs, losses, alpha=0.3, label="loss")
    ax.plot(lrs, smoothed, label="smoothed loss")
    ax.axvline(suggested, color="grey", linestyle="--", label=f"suggested {suggested:.2g}")
    ax.set(
        xscale="log",
        xlabel="learning rate",
        ylabel="training loss",
        title="Learning-rate range test",
    )
    finite = [v for v in smoothed if np.isfinite(v)]
    if finite:  # the last, diverging steps would squash the interesting part
        ax.set_ylim(min(finite) * 0.9, max(finite[0], min(finite)) * 1.5)
    ax.grid(alpha=0.3)
    ax.legend()
    atomic.write_bytes(path, _png(fig))
