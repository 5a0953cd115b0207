"""From raw splits to what a training loop consumes: validation carving, balancing, preprocessing, batch indices.

Everything here is deterministic: the validation split is a function of ``split_seed``, and the batch order of an
epoch a function of (seed, epoch) only, so a run resumed at any step sees exactly the batches an uninterrupted run
would. Preprocessing statistics (mean/std, ZCA) are fitted on the training split only.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
from absl import logging

from cnnjax.data import image_folder
from cnnjax.data.sources import DATASETS, DataError
from cnnjax.data.split_cache import load, tfds_data_dir

BALANCE_MODES = ("none", "undersample", "oversample")


@dataclasses.dataclass(frozen=True)
class Splits:
    """Preprocessed float32 NHWC images and int32 labels per split, plus what describes them: the class names, the
    fitted preprocessing, and the (H, W, C) of the uint8 images it takes."""

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    input_shape: tuple[int, int, int]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train[0].shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def validation_count(num_examples: int, *, fraction: float, size: int = 0, keys: str | None = None) -> int:
    """How many examples to hold out of a split.

    Args:
      num_examples: the split's size.
      fraction: the share to hold out when ``size`` is 0.
      size: > 0 holds out exactly this many.
      keys: the config keys the error names (default the validation split's).

    Returns:
      ``size`` if > 0, else ``round(fraction * num_examples)``.

    Raises:
      ValueError: naming ``keys`` when the count is negative or leaves no training example.

    >>> validation_count(60000, fraction=0.1)
    6000
    """
    count = size if size > 0 else int(round(fraction * num_examples))
    if not 0 <= count < num_examples or not 0.0 <= fraction < 1.0:
        keys = keys or f"data.validation_fraction={fraction} / data.validation_size={size}"
        raise ValueError(
            f"{keys} would hold out {count} of the {num_examples} examples; choose a fraction in [0, 1) or a "
            f"size below {num_examples}"
        )
    return count


def split_validation(images: np.ndarray, labels: np.ndarray, count: int, seed: int):
    """Deterministically moves ``count`` random examples of the training split into a validation split.

    Args:
      images: (N, H, W, C).
      labels: (N,).
      count: the validation split's size.
      seed: chooses the held-out examples.

    Returns:
      ((train_images, train_labels), (val_images, val_labels)); both keep the original relative order.
    """
    held_out = np.zeros(len(images), bool)
    held_out[np.random.default_rng(seed).permutation(len(images))[:count]] = True
    return (images[~held_out], labels[~held_out]), (images[held_out], labels[held_out])


def balance_classes(images: np.ndarray, labels: np.ndarray, mode: str, seed: int):
    """Equal class counts, for training on an imbalanced split.

    Args:
      images: (N, H, W, C).
      labels: (N,).
      mode: 'undersample' to the rarest class, 'oversample' (repeat examples) to the commonest, or 'none'.
      seed: chooses the examples dropped or repeated.

    Returns:
      (images, labels) with every class equally often.
    """
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


def pad_images(images, size: int, pad=np.pad):
    """Zero-pads images symmetrically, e.g. 28x28 digits to LeNet-5's 32x32.

    Args:
      images: (N, H, W, C).
      size: the target side, at least the images' height and width.
      pad: ``np.pad``, or ``jnp.pad`` for traced arrays.

    Returns:
      (N, size, size, C).

    Raises:
      ValueError: naming ``data.pad_to`` when ``size`` is smaller than the images.

    >>> pad_images(np.ones((1, 28, 28, 1)), 32).shape
    (1, 32, 32, 1)
    """
    h, w = images.shape[1:3]
    if size < max(h, w):
        raise ValueError(f"data.pad_to={size} is smaller than the {h}x{w} images; use 0 (no padding) or >= {max(h, w)}")
    top, left = (size - h) // 2, (size - w) // 2
    return pad(images, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)))


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


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """uint8 images (N, H, W, C) -> float32 model inputs, with statistics fitted on a training split: zero-padding
    to ``pad_to`` x ``pad_to`` (0: none), then ``x * scale + shift`` per channel (``scale``, ``shift``: (C,), the
    [0, 1] scaling and standardization folded together) or, with ``zca_matrix``, ZCA whitening of the [0, 1] images
    ``(x - zca_mean) @ zca_matrix`` (D = H * W * C after padding: (D,), (D, D)).

    What a run saves (``arrays``) to preprocess new images exactly as its training and evaluation did."""

    pad_to: int = 0
    scale: np.ndarray | None = None
    shift: np.ndarray | None = None
    zca_mean: np.ndarray | None = None
    zca_matrix: np.ndarray | None = None

    @classmethod
    def fit(cls, train: np.ndarray, config) -> Preprocessing:
        """Fits on a uint8 training split (N, H, W, C) as the data section ``config`` asks (keys pad_to,
        standardize, zca, zca_epsilon)."""
        padded = pad_images(train, config.pad_to) if config.pad_to else train
        if config.zca:
            mean, matrix = fit_zca(padded.astype(np.float32) / 255.0, config.zca_epsilon)
            return cls(config.pad_to, zca_mean=mean, zca_matrix=matrix)
        scale, shift = np.full(train.shape[-1], 1 / 255.0), np.zeros(train.shape[-1])
        if config.standardize:
            mean, std = fit_standardize(padded)
            scale, shift = scale / np.maximum(std, 1e-8), -mean / np.maximum(std, 1e-8)
        return cls(config.pad_to, scale.astype(np.float32), shift.astype(np.float32))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """The float32 model inputs of uint8 images (N, H, W, C)."""
        x = pad_images(images, self.pad_to) if self.pad_to else images
        if self.zca_matrix is not None:
            flat = (x.astype(np.float32) / 255.0).reshape(len(x), -1)
            return ((flat - self.zca_mean) @ self.zca_matrix).astype(np.float32).reshape(x.shape)
        return _affine(x, self.scale, self.shift)

    def jax_fn(self):
        """The same mapping as a jittable function of uint8 (N, H, W, C) with a symbolic-friendly batch size (for
        export); float32 statistics, so it agrees with ``__call__`` to float32 rounding."""
        import jax.numpy as jnp

        arrays = {k: jnp.asarray(v, jnp.float32) for k, v in self.arrays().items()}

        def preprocess(images):
            x = images
            if self.pad_to:
                x = pad_images(x, self.pad_to, jnp.pad)
            x = x.astype(jnp.float32)
            if self.zca_matrix is not None:
                flat = (x / 255.0).reshape(x.shape[0], -1)
                return ((flat - arrays["zca_mean"]) @ arrays["zca_matrix"]).reshape(x.shape)
            return x * arrays["scale"].reshape(1, 1, 1, -1) + arrays["shift"].reshape(1, 1, 1, -1)

        return preprocess

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted statistics by name (for saving)."""
        names = ("scale", "shift", "zca_mean", "zca_matrix")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def describe(self) -> dict:
        """The JSON description of this preprocessing: its kind, pad_to and a digest of its statistics."""
        digest = hashlib.sha256()
        for name, array in sorted(self.arrays().items()):
            digest.update(name.encode() + np.ascontiguousarray(array).tobytes())
        kind = "zca" if self.zca_matrix is not None else "affine"
        return {"kind": kind, "pad_to": self.pad_to, "sha256": digest.hexdigest()}


def preprocess(train: np.ndarray, others: list[np.ndarray], config) -> list[np.ndarray]:
    """Pads uint8 images, scales them to [0, 1], then standardizes or ZCA-whitens with statistics of ``train``.

    Args:
      train: uint8 (N, H, W, C), the split the statistics come from.
      others: further uint8 splits (validation, test) transformed the same way.
      config: the ``data`` config (pad_to, standardize, zca, ...).

    Returns:
      The float32 arrays [train, *others].
    """
    fitted = Preprocessing.fit(train, config)
    return [fitted(x) for x in (train, *others)]


def _affine(images: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``images * scale + shift`` per channel in float32, in place on one float copy."""
    result = images.astype(np.float32)
    result *= scale
    result += shift
    return result


def load_raw(config) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], tuple[str, ...]]:
    """The raw (train, test, class names) of a ``data`` config section: uint8 NHWC images and int64 labels.

    An image folder without ``test/``, or a TFDS dataset without a test split, has ``data.test_fraction`` of its
    training images held out as its test split (deterministically, from ``data.split_seed``)."""
    if config.name == image_folder.NAME:
        if config.data_dir is None:
            raise DataError(
                "data.name='image_folder' reads your own images: set --config.data.data_dir=ROOT, a folder "
                "holding train/<class>/ image folders (and optionally test/<class>/)"
            )
        folder = image_folder.load(
            config.data_dir, image_size=config.image_size, channels=config.channels,
            cache_dir=tfds_data_dir(config.tfds_dir),
        )  # fmt: skip
        if folder.skipped:
            logging.warning("%s: skipped %d files that are not images (PNG, JPEG, BMP, GIF)", config.data_dir,
                            folder.skipped)  # fmt: skip
        if folder.test is not None:
            return folder.train, folder.test, folder.class_names
        return (*held_out_test(*folder.train, config), folder.class_names)
    train = load(config.name, "train", data_dir=config.data_dir, tfds_dir=config.tfds_dir)
    if has_test_split(config.name, config.tfds_dir):
        test = load(config.name, "test", data_dir=config.data_dir, tfds_dir=config.tfds_dir)
    else:
        train, test = held_out_test(*train, config)
    spec = DATASETS.get(config.name)
    num_classes = int(max(y.max(initial=0) for y in (train[1], test[1]))) + 1
    return train, test, spec.class_names if spec else tuple(str(c) for c in range(num_classes))


def has_test_split(name: str, tfds_dir: str | None) -> bool:
    """Whether dataset ``name`` has an official test split (a TFDS dataset not prepared yet is assumed to: loading
    it then says what is missing)."""
    if name in DATASETS:
        return "test" in DATASETS[name].splits
    from cnnjax.data import tfds_builders

    splits = tfds_builders.split_names(name, tfds_dir)
    return not splits or "test" in splits


def held_out_test(images: np.ndarray, labels: np.ndarray, config) -> tuple[tuple, tuple]:
    """((train images, labels), (test images, labels)): ``data.test_fraction`` of the examples held out as the
    test split, the same ones for the same ``data.split_seed``."""
    count = validation_count(
        len(labels), fraction=config.test_fraction, keys=f"data.test_fraction={config.test_fraction}"
    )
    return split_validation(images, labels, count, [config.split_seed, 1])


def load_splits(config) -> Splits:
    """The train / validation / test splits an experiment's ``data`` config section describes.

    Keys: name, data_dir, tfds_dir, image_size, channels, test_fraction, validation_fraction, validation_size,
    split_seed, balance, pad_to, standardize, zca, zca_epsilon.
    """
    (train_images, train_labels), (test_images, test_labels), class_names = load_raw(config)
    count = validation_count(len(train_images), fraction=config.validation_fraction, size=config.validation_size)
    (train_images, train_labels), (val_images, val_labels) = split_validation(
        train_images, train_labels, count, config.split_seed
    )
    train_images, train_labels = balance_classes(train_images, train_labels, config.balance, config.split_seed)
    input_shape = tuple(int(d) for d in train_images.shape[1:])
    preprocessing = Preprocessing.fit(train_images, config)
    train_images, val_images, test_images = (preprocessing(x) for x in (train_images, val_images, test_images))
    labels = [y.astype(np.int32) for y in (train_labels, val_labels, test_labels)]
    return Splits(
        (train_images, labels[0]), (val_images, labels[1]), (test_images, labels[2]), tuple(class_names),
        preprocessing, input_shape,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Batching: index arrays, so that the data can stay on the device and be gathered inside the jitted step
# ----------------------------------------------------------------------------------------------------------------------


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full training batches per epoch (the last partial batch is dropped)."""
    if batch_size < 1 or num_examples < batch_size:
        raise DataError(f"data.batch_size={batch_size} must be between 1 and the {num_examples} training examples")
    return num_examples // batch_size


def train_batches(num_examples: int, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
    """The batches of one training epoch as indices: a permutation that depends only on (seed, epoch).

    Args:
      num_examples: the training split's size.
      batch_size: examples per step; the last partial batch is dropped.
      seed: the run's data seed.
      epoch: the epoch's number.

    Returns:
      int (num_examples // batch_size, batch_size).

    >>> train_batches(10, 4, seed=0, epoch=0).shape
    (2, 4)
    """
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
