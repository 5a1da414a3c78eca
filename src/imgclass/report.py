"""Plots of a run: training curves and the confusion matrix (PNG, written atomically)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from imgclass import atomic  # noqa: E402


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())


def plot_curves(epochs: Sequence[int], series: dict[str, Sequence[float]], restored_epoch: int,
                path: str | os.PathLike) -> None:
    """Accuracy and loss, training vs validation, with the epoch early stopping restored."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, title in ((axes[0], "acc", "Accuracy"), (axes[1], "loss", "Loss")):
        ax.plot(epochs, series[f"train_{metric}"], "o-", label="training")
        ax.plot(epochs, series[f"val_{metric}"], "o-", label="validation")
        ax.axvline(restored_epoch, color="grey", linestyle="--",
                   label=f"restored (epoch {restored_epoch})")
        ax.set(title=title, xlabel="epoch", ylabel=title.lower())
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike) -> None:
    """Counts, with each cell shaded by its share of the true class (rows sum to 1)."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if shares[i, j] > 0.5 else "black")
    _save(fig, path)


def plot_trials(trials: Sequence[int], values: Sequence[float], name: str,
                path: str | os.PathLike) -> None:
    """A tuning history: each completed trial's objective and the best so far (lower is better)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(trials, values, "o", label="trial")
    ax.plot(trials, np.minimum.accumulate(values), "-", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(name)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float],
                 suggested: float, path: str | os.PathLike) -> None:
    """The learning-rate range test: loss against learning rate (log scale), the suggestion."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lrs, losses, alpha=0.3, label="loss")
    ax.plot(lrs, smoothed, label="smoothed loss")
    ax.axvline(suggested, color="grey", linestyle="--", label=f"suggested {suggested:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss",
           title="Learning-rate range test")
    finite = [v for v in smoothed if np.isfinite(v)]
    if finite:  # the last, diverging steps would squash the interesting part
        ax.set_ylim(min(finite) * 0.9, max(finite[0], min(finite)) * 1.5)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
