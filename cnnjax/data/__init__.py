"""Datasets by their TFDS names, offline sources, preprocessing, augmentation and batching.

``load(name, split)`` gives a raw split as NumPy arrays (uint8 NHWC images, int64 labels); ``load_splits(config)``
the preprocessed train / validation / test splits of an experiment's ``data`` config section (a TFDS dataset or
your own folder of images, :mod:`cnnjax.data.image_folder`) and their fitted ``Preprocessing``; ``train_batches`` and
``eval_batches`` the index arrays a training loop gathers its batches with; ``augment`` the on-device augmentations.
"""

from cnnjax.data.augmentation import (
    Mixing,
    augment,
    mix,
    random_crop,
    random_flip,
    random_translate,
    test_time_views,
)
from cnnjax.data.image_folder import IMAGE_SUFFIXES
from cnnjax.data.pipeline import Preprocessing, Splits, eval_batches, load_splits, steps_per_epoch, train_batches
from cnnjax.data.policies import Policies
from cnnjax.data.sources import DATASETS, DataError, DatasetSpec
from cnnjax.data.split_cache import load


def prepare(name: str, *, data_dir: str | None = None, tfds_dir: str | None = None):
    """Makes dataset ``name`` ready in ``tfds_dir`` and returns its TFDS builder (:func:`tfds_builders.prepare`; this
    imports TFDS, which loading cached splits does not)."""
    from cnnjax.data import tfds_builders

    return tfds_builders.prepare(name, data_dir=data_dir, tfds_dir=tfds_dir)


__all__ = [
    "DATASETS",
    "DataError",
    "DatasetSpec",
    "IMAGE_SUFFIXES",
    "Preprocessing",
    "Splits",
    "Mixing",
    "Policies",
    "augment",
    "mix",
    "eval_batches",
    "load",
    "load_splits",
    "prepare",
    "random_crop",
    "random_flip",
    "random_translate",
    "steps_per_epoch",
    "test_time_views",
    "train_batches",
]
