"""Figures of a trained run (``launch.py --visualize``): first-layer filters, the feature maps of every conv and
pool layer for one test image, the test confusion matrix and misclassified test images."""

from __future__ import annotations

from pathlib import Path

import flax.linen as flax_nn
import numpy as np

from cnnjax import inference, plots
from cnnjax import nn as cnn
from cnnjax.data.pipeline import load_raw

MAPPED_LAYERS = (cnn.Conv2D, cnn.PartialConv2D, cnn.MaxPool2D, cnn.Subsampling)


def feature_maps(predictor: inference.Predictor, image: np.ndarray) -> tuple[dict[str, np.ndarray], str | None]:
    """({layer path: its output (H, W, C) for ``image``}, the path of the first Conv2D or None) of every conv and pool
    layer, for one uint8 image (H, W, C) prepared as the run prepares its inputs."""
    maps, first_conv = {}, []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        layer = context.module
        if context.method_name == "__call__" and isinstance(layer, MAPPED_LAYERS):
            maps["/".join(layer.path)] = np.asarray(out[0])
            if not first_conv and isinstance(layer, cnn.Conv2D):
                first_conv.append("/".join(layer.path))
        return out

    with flax_nn.intercept_methods(record):
        predictor.model.apply(predictor.variables, predictor.preprocessing(image[None]))
    return maps, (first_conv or [None])[0]


def visualize(config, workdir: str | Path, image_index: int = 0) -> dict[str, Path]:
    """Draws the trained model of ``workdir`` (its best checkpoint, else its latest) on the test split of
    ``config.data``. Returns the PNG paths by name (written into ``workdir``)."""
    workdir = Path(workdir)
    predictor = inference.load(workdir)
    _, (images, labels), names = load_raw(config.data)
    predictions = predictor.predict(images).argmax(axis=1)
    image_index = image_index % len(images)
    maps, first_conv = feature_maps(predictor, np.asarray(images[image_index]))
    title = f"{config.model.name} on {config.data.name}"
    paths = {name: workdir / f"{name}.png" for name in ("filters", "feature_maps", "confusion_matrix", "misclassified")}
    if first_conv:
        kernel = predictor.variables["params"]
        for part in first_conv.split("/"):
            kernel = kernel[part]
        plots.filter_grid(
            np.asarray(kernel["kernel"]), paths["filters"], f"{title}: first-layer filters ({first_conv})"
        )
    else:
        paths.pop("filters")
    shown = f"test image {image_index}: {names[labels[image_index]]}, predicted {names[predictions[image_index]]}"
    plots.feature_maps(np.asarray(images[image_index]), maps, paths["feature_maps"], f"{title}, {shown}")
    accuracy = float(np.mean(predictions == labels))
    plots.confusion_matrix(
        labels, predictions, names, paths["confusion_matrix"], f"{title}: test accuracy {100 * accuracy:.2f}%"
    )
    plots.misclassified(np.asarray(images), labels, predictions, names, paths["misclassified"], title)
    return paths
