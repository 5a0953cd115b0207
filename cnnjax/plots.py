"""PNG plots of a run: learning curves (loss and accuracy, train vs validation)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

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
