"""PNG plots of a run: learning curves (loss and accuracy, train vs validation)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def learning_curves(records: list[dict], path: str | Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train vs validation, from the 'epoch' records of metrics.jsonl."""
    epochs = [r for r in records if r["kind"] == "epoch"]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "-s")):
        points = [(r["epoch"], r[f"{split}_loss"], r[f"{split}_accuracy"]) for r in epochs if f"{split}_loss" in r]
        if points:
            x, loss, accuracy = zip(*points)
            label = "train" if split == "train" else "validation"
            loss_axis.plot(x, loss, style, label=label)
            accuracy_axis.plot(x, accuracy, style, label=label)
    for axis, name in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        axis.legend()
    loss_axis.set_title("loss")
    accuracy_axis.set_title("accuracy")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def sweep_heatmap(rows: list[dict], axes: list[str], path: str | Path) -> None:
    """Validation accuracy over the first two swept axes (the best trial per cell when more axes vary)."""
    if len(axes) < 2:
        axes = (axes + ["trial"])[:2] if axes else ["trial", "trial"]
    x_key, y_key = axes[0], axes[1]
    xs = sorted({str(r[x_key]) for r in rows}, key=_natural)
    ys = sorted({str(r[y_key]) for r in rows}, key=_natural)
    grid = np.full((len(ys), len(xs)), np.nan)
    for r in rows:
        if r.get("val_accuracy") is not None:
            i, j = ys.index(str(r[y_key])), xs.index(str(r[x_key]))
            grid[i, j] = np.nanmax([grid[i, j], 100 * r["val_accuracy"]])
    figure, axis = plt.subplots(figsize=(1.2 * len(xs) + 3, 0.8 * len(ys) + 2))
    image = axis.imshow(grid, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(xs)), xs, rotation=30, ha="right")
    axis.set_yticks(range(len(ys)), ys)
    axis.set_xlabel(x_key)
    axis.set_ylabel(y_key)
    for i in range(len(ys)):
        for j in range(len(xs)):
            if not np.isnan(grid[i, j]):
                axis.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="white")
    figure.colorbar(image, ax=axis, label="validation accuracy (%)")
    axis.set_title("validation accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def overlaid_learning_curves(runs: dict[str, list[dict]], path: str | Path) -> None:
    """Validation accuracy per epoch of every trial of a sweep, overlaid."""
    figure, axis = plt.subplots(figsize=(8, 5))
    for name, records in runs.items():
        points = [(r["epoch"], 100 * r["val_accuracy"]) for r in records if r["kind"] == "epoch" and "val_accuracy" in r]
        if points:
            axis.plot(*zip(*points), "-", alpha=0.7, label=name[:40])
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy (%)")
    axis.grid(alpha=0.3)
    if len(runs) <= 12:
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _natural(text: str):
    """Sort key: numbers by value, then text."""
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)
