"""TFDS builders for mnist, fashion_mnist, cifar10 and cifar100 that need no TensorFlow, and ``load``.

TFDS's own builders for these datasets encode images as PNG and need TensorFlow to prepare and read them. These store
raw ``tfds.features.Tensor`` images as ``array_record`` (read back with ``as_data_source``), fetch the official files
through TFDS's download manager and verify them against the checksums TFDS registers for its own builders. Offline,
the same files are taken from a local directory (TFDS's manual-download mechanism, checksums verified), or read from
other layouts of the original files (uncompressed IDX, CIFAR python batches) with format checks.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.parse
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

from cnnjax.data import split_cache
from cnnjax.data.sources import (
    DATASETS,
    DataError,
    DatasetSpec,
    find_raw_source,
    has_registered_files,
    read_cifar_tarball,
    read_idx_split,
    restored_debian_files,
)


class RawImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the builders: ``{'image': uint8 (H, W, C), 'label': ClassLabel}`` from ``SPEC``'s official files."""

    SPEC: DatasetSpec
    VERSION = tfds.core.Version(split_cache.VERSION)
    RELEASE_NOTES = {"1.0.0": "Raw uint8 tensors in array_record, readable without TensorFlow."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the dataset's original files in the manual directory."

    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls):
        """TFDS's registered checksums for its builder of the same dataset."""
        return tfds.core.utils.tfds_path() / "url_checksums" / f"{cls.SPEC.name}.txt"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=self.SPEC.image_shape, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=list(self.SPEC.class_names)),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        read = self._local_reader(dl_manager) or self._download_reader(dl_manager)
        return {split: self._generate_examples(read, split) for split in self.SPEC.splits}

    def _generate_examples(self, read, split):
        images, labels = read(split)
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image, "label": label}

    def _local_reader(self, dl_manager):
        """A reader of original files in a layout TFDS cannot checksum (e.g. uncompressed), or None."""
        try:
            manual = Path(dl_manager.manual_dir)
        except AssertionError:  # no manual directory given, or it is empty
            return None
        return None if has_registered_files(self.SPEC, manual) else find_raw_source(self.SPEC, manual)

    def _download_reader(self, dl_manager):
        """Official files from the manual directory or the internet, verified against TFDS's checksums."""
        paths = {name: Path(p) for name, p in dl_manager.download(self.SPEC.urls).items()}
        if self.SPEC.family == "cifar":
            (tarball,) = paths.values()
            return lambda split: read_cifar_tarball(tarball, self.SPEC.name, "bin", split)
        return lambda split: read_idx_split(*(paths[f"{stem}.gz"] for stem in _idx_stems(split)))


def _idx_stems(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


BUILDERS: dict[str, type[RawImageBuilder]] = {
    name: type(
        f"{''.join(p.title() for p in name.split('_'))}Raw", (RawImageBuilder,), {"SPEC": spec, "__module__": __name__}
    )
    for name, spec in DATASETS.items()
}


def default_tfds_dir() -> str:
    """TFDS's data directory: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
    return str(tfds.core.constants.DATA_DIR)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of ``url`` answers within ``timeout`` (an offline TFDS download retries for minutes)."""
    parsed = urllib.parse.urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _source_dir(spec: DatasetSpec, data_dir: str | None, tfds_dir: str, stack: contextlib.ExitStack) -> Path | None:
    """The local directory holding ``spec``'s original files, or None to download; raises if offline and absent."""
    if data_dir is not None:
        candidates = [Path(data_dir).expanduser()]
    else:
        manual = Path(tfds_dir) / "downloads" / "manual"
        candidates = [manual / spec.name, manual]
    for directory in candidates:
        if has_registered_files(spec, directory) or find_raw_source(spec, directory):
            return directory
    if data_dir is None and (debian := restored_debian_files(spec)) is not None:
        return Path(stack.enter_context(debian))
    if data_dir is None and _reachable(next(iter(spec.urls.values()))):
        return None
    looked = [str(d) for d in candidates] + ([spec.debian_dir] if spec.debian_dir and data_dir is None else [])
    hints = []
    if spec.debian_dir:
        hints.append("install Debian's package (apt-get install dataset-fashion-mnist)")
    hints.append(
        f"put the original files ({', '.join(spec.urls)} or their extracted forms) in a directory and set "
        "data.data_dir (--config.data.data_dir=DIR)"
    )
    hints.append("or run once with internet access and TFDS downloads and verifies them")
    raise DataError(
        f"dataset {spec.name!r} not found offline: looked in {', '.join(looked)}"
        f"{'' if data_dir is None else ' (data.data_dir)'}. To fix it, " + "; ".join(hints) + "."
    )


def builder(name: str, tfds_dir: str | None = None) -> RawImageBuilder:
    """The TFDS builder of dataset ``name`` storing into ``tfds_dir`` (TFDS's default data directory if None)."""
    return BUILDERS[name](data_dir=tfds_dir or default_tfds_dir(), file_format="array_record")


def prepare(name: str, *, data_dir: str | None = None, tfds_dir: str | None = None) -> RawImageBuilder:
    """Makes dataset ``name`` ready in ``tfds_dir`` (from local files or the internet) and returns its builder.

    TFDS writes into a temporary directory and renames it when complete, so a failure never leaves a dataset that
    looks prepared, and processes preparing the same dataset at once all end with the one that finished first.

    Args:
      name: a dataset of :data:`DATASETS`.
      data_dir: a folder holding the dataset's original files, or None to look in the usual places and download.
      tfds_dir: where TFDS keeps prepared datasets (default ``~/tensorflow_datasets``).

    Returns:
      The prepared builder.
    """
    ds_builder = builder(name, tfds_dir)
    if ds_builder.is_prepared():
        return ds_builder
    with contextlib.ExitStack() as stack:
        source = _source_dir(DATASETS[name], data_dir, str(ds_builder.data_dir_root), stack)
        config = tfds.download.DownloadConfig(manual_dir=None if source is None else str(source))
        tfds.disable_progress_bar()  # one preparation: cnnjax's log lines say what happens
        try:
            ds_builder.download_and_prepare(download_config=config)
        except FileExistsError:  # another process (a sweep worker, a data-parallel peer) finished it first
            if not builder(name, tfds_dir).is_prepared():
                raise
        except NonMatchingChecksumError as error:
            raise DataError(
                f"{name}: a file does not match the checksum TFDS registers for the official release, so it is "
                f"corrupt, truncated or not the original ({error}). Replace it with the original file."
            ) from None
    return ds_builder


def stack_examples(examples, image_key: str = "image", label_key: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """Decoded TFDS examples as arrays.

    Args:
      examples: an iterable of example dicts.
      image_key: the key of the image feature.
      label_key: the key of the label feature.

    Returns:
      (images uint8 (N, H, W, C), labels int64 (N,)).
    """
    images = np.stack([np.asarray(e[image_key]) for e in examples])
    labels = np.array([e[label_key] for e in examples], np.int64)
    return (images if images.ndim == 4 else images[..., None]), labels


def load(name: str, split: str, *, data_dir: str | None = None, tfds_dir: str | None = None):
    """The raw ``split`` of dataset ``name``.

    Args:
      name: a TFDS name. mnist, fashion_mnist, cifar10 and cifar100 need no TensorFlow; they are prepared once from
        ``data_dir``, Debian's package, TFDS's manual directory, or the internet. Other TFDS image-classification
        datasets are read through TFDS (TensorFlow needed unless already prepared as array_record).
      split: 'train' or 'test' (and any split the dataset has).
      data_dir: a directory with the dataset's original files (any layout cnnjax reads), or None.
      tfds_dir: TFDS's data directory (default ``~/tensorflow_datasets``).

    Returns:
      ``(images, labels)``: uint8 (N, H, W, C) and int64 (N,) arrays.
    """
    if name not in DATASETS:
        return _load_other(name, split, tfds_dir)
    if split not in DATASETS[name].splits:
        raise DataError(f"{name} has no split {split!r}; its splits are {', '.join(DATASETS[name].splits)}")
    source = prepare(name, data_dir=data_dir, tfds_dir=tfds_dir).as_data_source(split)
    return stack_examples(source.__getitems__(range(len(source))))  # batched reads: ~5x faster than one by one


def split_names(name: str, tfds_dir: str | None) -> tuple[str, ...]:
    """The splits of a prepared TFDS dataset (empty when it is not prepared in ``tfds_dir``)."""
    try:
        return tuple(tfds.builder(name, data_dir=tfds_dir).info.splits)
    except Exception:  # noqa: BLE001 - an unknown or unreadable dataset: loading it reports the problem
        return ()


def _load_other(name: str, split: str, tfds_dir: str | None):
    """Any other TFDS dataset with an image and a label."""
    from cnnjax.models import did_you_mean

    if name not in tfds.list_builders(with_community_datasets=False):
        raise DataError(
            f"unknown dataset {name!r}.{did_you_mean(name, DATASETS)} cnnjax's offline-capable datasets are "
            f"{', '.join(DATASETS)}; any other TFDS image-classification dataset name works with TensorFlow installed."
        )
    try:
        source = tfds.data_source(name, split=split, data_dir=tfds_dir, download=False)
        return stack_examples([source[i] for i in range(len(source))])
    except Exception as error:  # noqa: BLE001 - not prepared as array_record: fall back to tf.data when possible
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            raise DataError(
                f"dataset {name!r} is not prepared as array_record in {tfds_dir or default_tfds_dir()} ({error}); "
                "reading or downloading it through TFDS needs TensorFlow (pip install tensorflow), or use one of "
                f"{', '.join(DATASETS)}"
            ) from None
    images, labels = tfds.as_numpy(tfds.load(name, split=split, data_dir=tfds_dir, batch_size=-1, as_supervised=True))
    return (images if images.ndim == 4 else images[..., None]), labels.astype(np.int64)
