"""From raw splits to what a training loop consumes: validation carving, balancing, preprocessing, batch indices.

Everything here is deterministic: the validation split is a function of ``split_seed``, and the batch order of an
epoch a function of (seed, epoch) only, so a run resumed at any step sees exactly the batches an uninterrupted run
would. Preprocessing statistics (mean/std, ZCA) are fitted on the training split only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnjax.data.sources import DATASETS, DataError
from cnnjax.data.tfds_builders import load

BALANCE_MODES = ("none", "undersample", "oversample")


@dataclasses.dataclass(frozen=True)
class Splits:
    """Preprocessed float32 NHWC images and int32 labels per split, plus what describes them."""

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    class_names: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train[0].shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def validation_count(num_examples: int, *, fraction: float, size: int = 0) -> int:
    """How many training examples to hold out: ``size`` if > 0, else ``round(fraction * num_examples)``."""
    count = size if size > 0 else int(round(fraction * num_examples))
    if not 0 <= count < num_examples or not 0.0 <= fraction < 1.0:
        raise ValueError(
            f"data.validation_fraction={fraction} / data.validation_size={size} would hold out {count} of the "
            f"{num_examples} training examples; choose a fraction in [0, 1) or a size below {num_examples}"
        )
    return count


def split_validation(images: np.ndarray, labels: np.ndarray, count: int, seed: int):
    """Deterministically moves ``count`` random examples of the training split into a validation split.

    Returns ((train_images, train_labels), (val_images, val_labels)); both keep the original relative order.
    """
    held_out = np.zeros(len(images), bool)
    held_out[np.random.default_rng(seed).permutation(len(images))[:count]] = True
    return (images[~held_out], labels[~held_out]), (images[held_out], labels[held_out])


def balance_classes(images: np.ndarray, labels: np.ndarray, mode: str, seed: int):
    """Equal class counts: 'undersample' to the rarest class, 'oversample' (repeat examples) to the commonest."""
    if mode not in BALANCE_MODES:
        raise ValueError(f"data.balance must be one of {BALANCE_MODES}, got {mode!r}")
    if mode == "none":
        return images, labels
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    target = counts.min() if mode == "undersample" else counts.max()
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        extra = rng.choice(members, target - len(members), replace=True) if target > len(members) else members[:0]
        chosen.append(np.concatenate([rng.permutation(members)[:target], extra]))
    index = np.sort(np.concatenate(chosen))
    return images[index], labels[index]


def pad_images(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pads (N, H, W, C) images symmetrically to (N, size, size, C), e.g. 28x28 digits to LeNet-5's 32x32."""
    h, w = images.shape[1:3]
    if size < max(h, w):
        raise ValueError(f"data.pad_to={size} is smaller than the {h}x{w} images; use 0 (no padding) or >= {max(h, w)}")
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(images, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)))


def fit_standardize(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (C,) of a uint8 training split (N, H, W, C), on the [0, 1] scale.

    Exact, from each channel's histogram of the 256 values (one pass over the bytes instead of float copies).
    """
    if images.dtype != np.uint8:
        raise DataError(
            f"data.standardize needs the raw uint8 images of a dataset, got {images.dtype} images of shape "
            f"{images.shape}; convert them with np.clip(images, 0, 255).astype(np.uint8) or set data.standardize=False"
        )
    values = np.arange(256, dtype=np.float64) / 255.0
    counts = np.stack([np.bincount(images[..., c].ravel(), minlength=256) for c in range(images.shape[-1])])
    mean = counts @ values / counts.sum(axis=1)
    variance = (counts * (values - mean[:, None]) ** 2).sum(axis=1) / counts.sum(axis=1)
    return mean, np.sqrt(variance)


def fit_zca(images: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """ZCA whitening fitted on a training split: (mean (D,), matrix (D, D)) with D = H * W * C.

    ``W = U diag(1 / sqrt(s + epsilon)) U^T`` from the eigendecomposition of the covariance; whitened
    ``x' = (x - mean) W`` has (near) identity covariance and stays as close as possible to the original image.
    """
    flat = images.reshape(len(images), -1).astype(np.float64)
    mean = flat.mean(axis=0)
    centered = flat - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centered.T @ centered / len(flat))
    return mean, (eigenvectors * (1.0 / np.sqrt(np.maximum(eigenvalues, 0.0) + epsilon))) @ eigenvectors.T


def preprocess(train: np.ndarray, others: list[np.ndarray], config) -> list[np.ndarray]:
    """Pads uint8 images, scales them to [0, 1], then standardizes or ZCA-whitens with statistics of ``train``.

    Returns the float32 arrays [train, *others].
    """
    arrays = [pad_images(x, config.pad_to) if config.pad_to else x for x in (train, *others)]
    if config.zca:
        arrays = [x.astype(np.float32) / 255.0 for x in arrays]
        mean, matrix = fit_zca(arrays[0], config.zca_epsilon)
        return [((x.reshape(len(x), -1) - mean) @ matrix).astype(np.float32).reshape(x.shape) for x in arrays]
    scale, shift = np.full(train.shape[-1], 1 / 255.0), np.zeros(train.shape[-1])
    if config.standardize:
        mean, std = fit_standardize(arrays[0])
        scale, shift = scale / np.maximum(std, 1e-8), -mean / np.maximum(std, 1e-8)
    return [_affine(x, scale.astype(np.float32), shift.astype(np.float32)) for x in arrays]


def _affine(images: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``images * scale + shift`` per channel in float32, in place on one float copy."""
    result = images.astype(np.float32)
    result *= scale
    result += shift
    return result


def load_splits(config) -> Splits:
    """The train / validation / test splits an experiment's ``data`` config section describes.

    Keys: name, data_dir, tfds_dir, validation_fraction, validation_size, split_seed, balance, pad_to, standardize,
    zca, zca_epsilon.
    """
    train_images, train_labels = load(config.name, "train", data_dir=config.data_dir, tfds_dir=config.tfds_dir)
    test_images, test_labels = load(config.name, "test", data_dir=config.data_dir, tfds_dir=config.tfds_dir)
    count = validation_count(len(train_images), fraction=config.validation_fraction, size=config.validation_size)
    (train_images, train_labels), (val_images, val_labels) = split_validation(
        train_images, train_labels, count, config.split_seed
    )
    train_images, train_labels = balance_classes(train_images, train_labels, config.balance, config.split_seed)
    train_images, val_images, test_images = preprocess(train_images, [val_images, test_images], config)
    labels = [y.astype(np.int32) for y in (train_labels, val_labels, test_labels)]
    spec = DATASETS.get(config.name)
    num_classes = int(max(y.max(initial=0) for y in labels)) + 1
    class_names = spec.class_names if spec else tuple(str(c) for c in range(num_classes))
    return Splits((train_images, labels[0]), (val_images, labels[1]), (test_images, labels[2]), tuple(class_names))


# ----------------------------------------------------------------------------------------------------------------------
# Batching: index arrays, so that the data can stay on the device and be gathered inside the jitted step
# ----------------------------------------------------------------------------------------------------------------------


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full training batches per epoch (the last partial batch is dropped)."""
    if batch_size < 1 or num_examples < batch_size:
        raise DataError(f"data.batch_size={batch_size} must be between 1 and the {num_examples} training examples")
    return num_examples // batch_size


def train_batches(num_examples: int, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
    """The batches of one training epoch as indices (steps, batch_size): a permutation that depends only on
    (seed, epoch), the last partial batch dropped."""
    steps = steps_per_epoch(num_examples, batch_size)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def eval_batches(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every example once, in order, as (indices, weights) of shape (steps, batch_size).

    The last batch is padded to full size with weight 0, so one compiled step serves all batches and metrics
    weighted by ``weights`` count each real example exactly once.
    """
    steps = -(-num_examples // batch_size)
    index = np.arange(steps * batch_size)
    weights = (index < num_examples).astype(np.float32)
    return np.where(index < num_examples, index, 0).reshape(steps, batch_size).astype(np.int32), weights.reshape(
        steps, batch_size
    )
