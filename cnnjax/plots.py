"""PNG plots of a run: learning curves, sweep heatmaps, filters, feature maps, confusion matrices, misclassified
examples. Drawn with ``matplotlib.figure.Figure`` directly: nothing here touches pyplot's global state or backend."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _subplots(*grid, **kwargs):
    """(figure, axes) like ``pyplot.subplots``, on a figure of its own that no pyplot state holds."""
    from matplotlib.figure import Figure  # here: matplotlib takes 0.25 s to import, and training starts without it

    figure = Figure(figsize=kwargs.pop("figsize", None))
    return figure, figure.subplots(*grid, **kwargs)


def learning_curves(records: list[dict], path: str | Path, title: str = "") -> Figure:
    """Loss and accuracy per epoch, train vs validation, from the 'epoch' records of metrics.jsonl; returns the
    figure (for the loggers)."""
    epochs = [r for r in records if r["kind"] == "epoch"]
    figure, (loss_axis, accuracy_axis) = _subplots(1, 2, figsize=(10, 4))
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
    return figure


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
    figure, axis = _subplots(figsize=(1.2 * len(xs) + 3, 0.8 * len(ys) + 2))
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


def overlaid_learning_curves(runs: dict[str, list[dict]], path: str | Path) -> None:
    """Validation accuracy per epoch of every trial of a sweep, overlaid."""
    figure, axis = _subplots(figsize=(8, 5))
    for name, records in runs.items():
        points = [
            (r["epoch"], 100 * r["val_accuracy"]) for r in records if r["kind"] == "epoch" and "val_accuracy" in r
        ]
        if points:
            axis.plot(*zip(*points), "-", alpha=0.7, label=name[:40])
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy (%)")
    axis.grid(alpha=0.3)
    if len(runs) <= 12:
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _natural(text: str):
    """Sort key: numbers by value, then text."""
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def _grid_shape(count: int) -> tuple[int, int]:
    cols = int(np.ceil(np.sqrt(count)))
    return int(np.ceil(count / cols)), cols


def filter_grid(kernel: np.ndarray, path: str | Path, title: str) -> None:
    """First-layer filters (kh, kw, in, out) as an image grid: RGB for 3 input channels, else the first channel."""
    kernel = np.asarray(kernel, np.float32)
    count = kernel.shape[-1]
    rows, cols = _grid_shape(count)
    figure, axes = _subplots(rows, cols, figsize=(1.6 * cols + 1.5, 1.6 * rows + 0.8), squeeze=False)
    limit = float(np.abs(kernel).max()) or 1.0
    image = None
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        if kernel.shape[2] == 3:
            filt = kernel[..., index]
            axis.imshow((filt - filt.min()) / (np.ptp(filt) or 1.0))
        else:
            image = axis.imshow(kernel[:, :, 0, index], cmap="RdBu_r", vmin=-limit, vmax=limit)
        axis.set_title(f"#{index}", fontsize=8)
    if image is not None:
        figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="weight")
    figure.suptitle(title)
    figure.savefig(path, dpi=100)


def feature_maps(
    image: np.ndarray, maps: dict[str, np.ndarray], path: str | Path, title: str, per_layer: int = 8
) -> None:
    """The input image and, one row per layer, its first ``per_layer`` feature maps (H, W, C) for that image."""
    rows = len(maps) + 1
    figure, axes = _subplots(rows, per_layer, figsize=(1.5 * per_layer + 1, 1.5 * rows + 0.6), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    axes[0, 0].imshow(image[..., 0] if image.shape[-1] == 1 else (image - image.min()) / (np.ptp(image) or 1.0),
                      cmap="gray")  # fmt: skip
    axes[0, 0].set_title("input", fontsize=8)
    for row, (name, fmap) in enumerate(maps.items(), start=1):
        for channel in range(min(per_layer, fmap.shape[-1])):
            axes[row, channel].imshow(fmap[..., channel], cmap="viridis")
            axes[row, channel].set_title(f"{name} #{channel}" if channel == 0 else f"#{channel}", fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def confusion_figure(matrix: np.ndarray, class_names, title: str):
    """A figure of confusion counts (K, K) (rows: true classes, columns: predicted), with class names and a colour
    bar; the caller saves it."""
    k = len(class_names)
    figure, axis = _subplots(figsize=(0.6 * k + 3, 0.6 * k + 2.5))
    image = axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(k), class_names, rotation=45, ha="right")
    axis.set_yticks(range(k), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            axis.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                      color="white" if matrix[i, j] > matrix.max() / 2 else "black")  # fmt: skip
    figure.colorbar(image, ax=axis, label="test examples")
    axis.set_title(title)
    figure.tight_layout()
    return figure


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, class_names, path: str | Path, title: str) -> None:
    """Counts of (true class, predicted class) on the test set, drawn by :func:`confusion_figure` into ``path``."""
    k = len(class_names)
    matrix = np.zeros((k, k), int)
    np.add.at(matrix, (labels, predictions), 1)
    figure = confusion_figure(matrix, class_names, title)
    figure.savefig(path, dpi=100)


def misclassified(images, labels, predictions, class_names, path: str | Path, title: str, limit: int = 25) -> None:
    """Up to ``limit`` misclassified test images titled 'predicted (true)'."""
    wrong = np.flatnonzero(labels != predictions)[:limit]
    rows, cols = _grid_shape(max(len(wrong), 1))
    figure, axes = _subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows + 0.5), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, wrong):
        image = images[index]
        axis.imshow(
            image[..., 0] if image.shape[-1] == 1 else (image - image.min()) / (np.ptp(image) or 1.0), cmap="gray"
        )
        axis.set_title(
            f"{class_names[predictions[index]]}\n({class_names[labels[index]]})", fontsize=7, color="firebrick"
        )
    figure.suptitle(f"{title}: predicted (true)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def augmented_grid(draws: np.ndarray, class_names: list[str], lams: list[float], path: str | Path, title: str) -> None:
    """Augmented training images (draws, N, H, W, C) in [0, 1]: one row per draw, titled with the class (and Mixup /
    CutMix's lam where the draw mixed the batch)."""
    rows, cols = draws.shape[:2]
    figure, axes = _subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows + 0.5), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            axis, image = axes[r, c], draws[r, c]
            axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            axis.set_title(class_names[c] + (f" (lam {lams[r]:.2f})" if lams[r] < 1 else ""), fontsize=6)
            axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def lr_find(rates: np.ndarray, losses: np.ndarray, suggested: float | None, path: str | Path, title: str) -> None:
    """The range test's training loss against the learning rate (log scale), the suggested rate marked."""
    figure, axis = _subplots(figsize=(6, 4))
    finite = np.isfinite(losses)
    axis.plot(rates[finite], losses[finite], marker="." if len(rates) < 40 else None)
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    if suggested is not None:
        axis.axvline(suggested, color="firebrick", linestyle="--", label=f"suggested {suggested:.2e}")
        axis.legend()
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
