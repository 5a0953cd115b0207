"""The raw splits of the built-in datasets, cached as uint8 ``.npy`` arrays next to their prepared TFDS files.

Reading Fashion-MNIST back from TFDS deserializes its 70,000 examples one by one (3 s on a 2-core Xeon); its cached
arrays are memory-mapped and verified in a fraction of that, without importing TFDS. TFDS stays the source of truth
(download, checksums, preparation): an entry ``<tfds_dir>/<name>_raw/<version>/arrays/<split>_{images,labels}.npy``
records, in ``<split>.json``, the sizes and modification times of the split's TFDS files and each array's size and
BLAKE2 digest. An entry that does not match (TFDS re-prepared the dataset, a file was damaged or cut short) is read
from TFDS again and rewritten; entries are written to temporary files and renamed, so a half-written one never counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from cnnjax.data.sources import DATASETS

VERSION = "1.0.0"  # the version of cnnjax's TFDS builders (tfds_builders.RawImageBuilder), part of their directory
_ARRAYS = ("images", "labels")


def tfds_data_dir(tfds_dir: str | None = None) -> Path:
    """TFDS's data directory: ``tfds_dir``, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (as TFDS chooses)."""
    return Path(tfds_dir or os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets").expanduser()


def dataset_dir(name: str, tfds_dir: str | None = None) -> Path:
    """Where TFDS keeps cnnjax's prepared dataset ``name`` (its builder's ``data_dir``)."""
    return tfds_data_dir(tfds_dir) / f"{name}_raw" / VERSION


def _digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "blake2b").hexdigest()


def _sources(name: str, split: str, tfds_dir: str | None) -> list[list]:
    """[file name, size, mtime_ns] of the TFDS files holding ``split`` (empty if the dataset is not prepared)."""
    files = sorted(dataset_dir(name, tfds_dir).glob(f"{name}_raw-{split}.array_record-*"))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def read(name: str, split: str, tfds_dir: str | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached ``(images, labels)`` of ``split`` (memory-mapped uint8 (N, H, W, C), int64 (N,)), or None when there
    is no entry or it does not match its TFDS files or its recorded sizes and digests."""
    arrays = dataset_dir(name, tfds_dir) / "arrays"
    try:
        record = json.loads((arrays / f"{split}.json").read_text())
        if record["sources"] != _sources(name, split, tfds_dir) or not record["sources"]:
            return None
        paths = {key: arrays / f"{split}_{key}.npy" for key in _ARRAYS}
        for key, path in paths.items():
            if path.stat().st_size != record[key]["size"] or _digest(path) != record[key]["blake2b"]:
                return None
        return tuple(np.load(paths[key], mmap_mode="r") for key in _ARRAYS)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _replace(path: Path, write) -> None:
    """Writes ``path`` through ``write(file)`` into a temporary file renamed over it; removes the temporary file if
    writing fails."""
    file = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}-", delete=False)
    try:
        with file:
            write(file)
        os.replace(file.name, path)
    except BaseException:
        Path(file.name).unlink(missing_ok=True)
        raise


def write(name: str, split: str, images: np.ndarray, labels: np.ndarray, tfds_dir: str | None = None) -> None:
    """Caches ``split``'s arrays (atomically); a directory that cannot be written (or a full disk) leaves the split
    uncached and nothing half-written."""
    arrays = dataset_dir(name, tfds_dir) / "arrays"
    record = {"sources": _sources(name, split, tfds_dir)}
    with contextlib.suppress(OSError):
        arrays.mkdir(exist_ok=True)
        for key, array in zip(_ARRAYS, (images, labels)):
            path = arrays / f"{split}_{key}.npy"
            _replace(path, lambda file, array=array: np.save(file, array))
            record[key] = {"size": path.stat().st_size, "blake2b": _digest(path)}
        _replace(arrays / f"{split}.json", lambda file: file.write(json.dumps(record).encode()))


def load(name: str, split: str, *, data_dir: str | None = None, tfds_dir: str | None = None):
    """The raw ``split`` of dataset ``name``: ``(images, labels)``, uint8 (N, H, W, C) and int64 (N,) arrays.

    The built-in datasets (mnist, fashion_mnist, cifar10, cifar100) come from their cached arrays when these match;
    otherwise, and for any other TFDS dataset, from ``tfds_builders.load`` (which prepares the dataset from
    ``data_dir``, Debian's package, TFDS's manual directory or the internet), caching the built-in ones.
    """
    if name in DATASETS and (cached := read(name, split, tfds_dir)) is not None:
        return cached
    from cnnjax.data import tfds_builders  # imports TFDS: only when the arrays are not cached

    images, labels = tfds_builders.load(name, split, data_dir=data_dir, tfds_dir=tfds_dir)
    if name in DATASETS:
        write(name, split, images, labels, tfds_dir)
    return images, labels
