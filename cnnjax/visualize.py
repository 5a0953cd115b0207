"""Figures of a trained run (``launch.py --visualize``): first-layer filters, the feature maps of every conv and
pool layer for one test image, the test confusion matrix, misclassified test images, and training images as the
run's augmentation draws them."""

from __future__ import annotations

from pathlib import Path

import flax.linen as flax_nn
import jax
import jax.numpy as jnp
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
    (train_images, train_labels), _, _ = load_raw(config.data)
    paths["augmentation"] = workdir / "augmentation.png"
    examples, draws = augmented_examples(config, predictor.preprocessing, train_images[:8])
    plots.augmented_grid(examples, [names[i] for i in train_labels[:8]], draws, paths["augmentation"],
                         f"{title}: what training sees (one row per draw)")  # fmt: skip
    return paths


def augmented_examples(config, preprocessing, images: np.ndarray, draws: int = 4, seed: int = 0):
    """(images (draws, N, H, W, C) as the training step augments uint8 ``images`` (N, H, W, C), each draw with its
    own key, in the [0, 1] range of the originals where the preprocessing is per-channel; the lam of each draw)."""
    from cnnjax import train

    x = jnp.asarray(preprocessing(images))
    apply = jax.jit(train.augmentation(config, preprocessing))
    outs, lams = zip(*(apply(jax.random.fold_in(jax.random.key(seed), d), x) for d in range(draws)))
    out = np.stack([np.asarray(o) for o in outs])
    if preprocessing.scale is not None:  # back to [0, 1] for display
        out = np.clip((out - preprocessing.shift) / (255.0 * preprocessing.scale), 0, 1)
    return out, [float(lam) for lam in lams]
