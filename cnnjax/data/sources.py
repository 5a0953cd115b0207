"""The datasets cnnjax knows by their TFDS names, and readers for their original files.

Readers validate what they read (IDX magic numbers and sizes, CIFAR record sizes) and raise ``DataError`` naming the
file and what is wrong. Images come back as uint8 NHWC arrays, labels as int64 vectors.
"""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A dataset that cannot be found or read; the message says what was looked at and what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What cnnjax knows of a dataset: shape, classes and the official files with the URLs TFDS registers."""

    name: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    urls: dict[str, str]  # file name -> official URL (checksums come from TFDS's registry)
    family: str  # 'idx' or 'cifar'
    debian_dir: str | None = None  # where a Debian package installs the files

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle "
    "caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant "
    "flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man "
    "maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail "
    "snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout "
    "tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()


def _idx_urls(base: str) -> dict[str, str]:
    return {f"{name}.gz": f"{base}{name}.gz" for pair in _MNIST_FILES.values() for name in pair}


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", (28, 28, 1), tuple(str(d) for d in range(10)), ("train", "test"),
        _idx_urls(_MNIST_URL), "idx",
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", (28, 28, 1),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        ("train", "test"), _idx_urls(_FASHION_URL), "idx", "/usr/share/datasets/fashion-mnist",
    ),
    "cifar10": DatasetSpec(
        "cifar10", (32, 32, 3),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        ("train", "test"), {"cifar-10-binary.tar.gz": f"{_CIFAR_URL}cifar-10-binary.tar.gz"}, "cifar",
    ),
    "cifar100": DatasetSpec(
        "cifar100", (32, 32, 3), tuple(CIFAR100_CLASSES), ("train", "test"),
        {"cifar-100-binary.tar.gz": f"{_CIFAR_URL}cifar-100-binary.tar.gz"}, "cifar",
    ),
}  # fmt: skip

# ----------------------------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ----------------------------------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is a gzip file; corrupt or truncated gzip is a DataError."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} is a corrupt or truncated gzip file ({error}); delete it and fetch it again") from None


def read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """Reads an IDX file of unsigned bytes (gzipped or not) with ``ndim`` dimensions, checking magic and size."""
    data = _read_bytes(path)
    magic = data[:4]
    if len(data) < 4 + 4 * ndim or magic != bytes([0, 0, 0x08, ndim]):
        raise DataError(
            f"{path} is not an IDX file of unsigned bytes with {ndim} dimensions: its magic number is "
            f"{magic.hex() or 'missing'}, expected {bytes([0, 0, 0x08, ndim]).hex()}"
        )
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise DataError(
            f"{path} is truncated or corrupt: its header promises shape {shape} ({int(np.prod(shape))} bytes) but "
            f"it holds {len(body)} bytes of data"
        )
    return np.frombuffer(body, np.uint8).reshape(shape)


def read_idx_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28, 1) uint8 and labels (N,) int64 from a pair of IDX files."""
    images, labels = read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return images[..., None], labels.astype(np.int64)


def find_idx_files(directory: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of ``split`` in ``directory``, gzipped or not, or None."""
    found = []
    for stem in _MNIST_FILES[split]:
        candidates = [directory / f"{stem}.gz", directory / stem]
        found.append(next((p for p in candidates if p.is_file()), None))
    return tuple(found) if all(found) else None


def restore_debian_gzip(src: Path, dst: Path) -> None:
    """Rebuilds the gzip header Debian rewrote, giving back the byte-exact file that Zalando published.

    Debian's files keep the compressed stream but drop the stored file name and change the timestamp; the originals
    have FNAME set, the original name, and mtime 1504176606 (train) or 1504176627 (t10k).
    """
    data = src.read_bytes()
    if data[:3] != b"\x1f\x8b\x08" or data[3] & ~0x01:  # only FTEXT may be set: no name, comment or extra field
        raise DataError(f"{src} is not a gzip file with the plain header Debian writes; cannot restore it")
    mtime = 1504176606 if src.name.startswith("train") else 1504176627
    header = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + data[8:10] + src.name.removesuffix(".gz").encode()
    dst.write_bytes(header + b"\x00" + data[10:])


# ----------------------------------------------------------------------------------------------------------------------
# CIFAR-10/100: binary or python versions, as a tarball or extracted
# ----------------------------------------------------------------------------------------------------------------------

_CIFAR_MEMBERS = {  # (name, version) -> split -> file names inside the extracted directory
    ("cifar10", "bin"): {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
    ("cifar10", "py"): {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    ("cifar100", "bin"): {"train": ["train.bin"], "test": ["test.bin"]},
    ("cifar100", "py"): {"train": ["train"], "test": ["test"]},
}
_CIFAR_DIRS = {
    ("cifar10", "bin"): "cifar-10-batches-bin",
    ("cifar10", "py"): "cifar-10-batches-py",
    ("cifar100", "bin"): "cifar-100-binary",
    ("cifar100", "py"): "cifar-100-python",
}
_CIFAR_TARBALLS = {
    ("cifar10", "bin"): "cifar-10-binary.tar.gz",
    ("cifar10", "py"): "cifar-10-python.tar.gz",
    ("cifar100", "bin"): "cifar-100-binary.tar.gz",
    ("cifar100", "py"): "cifar-100-python.tar.gz",
}


def _cifar_images(flat: np.ndarray) -> np.ndarray:
    """(N, 3072) rows of 1024 red, 1024 green, 1024 blue bytes -> (N, 32, 32, 3)."""
    return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def parse_cifar_binary(data: bytes, label_bytes: int, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """Decodes CIFAR's binary format: records of ``label_bytes`` label bytes then 3072 image bytes (3x32x32, planar).

    Args:
      data: the file's bytes.
      label_bytes: 1 for CIFAR-10, 2 for CIFAR-100 (coarse, fine: the last label, the fine one, is kept).
      origin: the file's name, used in the error message.

    Returns:
      (images uint8 (N, 32, 32, 3), labels int64 (N,)).
    """
    record = label_bytes + 3072
    if not data or len(data) % record:
        raise DataError(
            f"{origin} is truncated or corrupt: {len(data)} bytes is not a multiple of {record}-byte records"
        )
    rows = np.frombuffer(data, np.uint8).reshape(-1, record)
    return _cifar_images(rows[:, label_bytes:]), rows[:, label_bytes - 1].astype(np.int64)


def parse_cifar_python(data: bytes, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """A pickled CIFAR python batch: {b'data': (N, 3072) uint8, b'labels' or b'fine_labels': N ints}."""
    try:
        batch = pickle.loads(data, encoding="bytes")
        flat, labels = np.asarray(batch[b"data"], np.uint8), batch.get(b"fine_labels", batch.get(b"labels"))
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise DataError(f"{origin} is not a readable CIFAR python batch ({type(error).__name__}: {error})") from None
    if labels is None or flat.ndim != 2 or flat.shape[1] != 3072 or len(labels) != len(flat):
        raise DataError(f"{origin} is not a CIFAR python batch: expected (N, 3072) data with N labels")
    return _cifar_images(flat), np.asarray(labels, np.int64)


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _cifar_parser(name: str, version: str) -> Callable[[bytes, str], tuple[np.ndarray, np.ndarray]]:
    if version == "py":
        return parse_cifar_python
    label_bytes = 2 if name == "cifar100" else 1
    return lambda data, origin: parse_cifar_binary(data, label_bytes, origin)


def read_cifar_tarball(path: Path, name: str, version: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of a CIFAR tarball, read without extracting it to disk.

    Args:
      path: the ``.tar.gz`` as downloaded.
      name: 'cifar10' or 'cifar100'.
      version: the TFDS version the files belong to.
      split: 'train' or 'test'.

    Returns:
      (images uint8 (N, 32, 32, 3), labels int64 (N,)).
    """
    parse, wanted = _cifar_parser(name, version), _CIFAR_MEMBERS[name, version][split]
    try:
        with tarfile.open(path) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [w for w in wanted if w not in members]
            if missing:
                raise DataError(f"{path} lacks {', '.join(missing)}: it is not the {name} {version} tarball")
            return _concat([parse(tar.extractfile(members[w]).read(), f"{path}:{w}") for w in wanted])
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(f"{path} is a corrupt or truncated tarball ({error}); delete it and fetch it again") from None


def read_cifar_directory(directory: Path, name: str, version: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of an extracted CIFAR directory.

    Args:
      directory: the extracted ``cifar-10-batches-bin`` or ``cifar-100-binary`` folder.
      name, version, split: as for :func:`read_cifar_tarball`.

    Returns:
      (images uint8 (N, 32, 32, 3), labels int64 (N,)).
    """
    parse = _cifar_parser(name, version)
    return _concat(
        [parse((directory / f).read_bytes(), str(directory / f)) for f in _CIFAR_MEMBERS[name, version][split]]
    )


def find_cifar_source(directory: Path, name: str) -> Callable[[str], tuple[np.ndarray, np.ndarray]] | None:
    """A reader split -> (images, labels) for the first CIFAR layout found in ``directory`` (itself or an extracted
    sub-directory, binary or python version, tarball or extracted), or None."""
    for version in ("bin", "py"):
        for candidate in (directory / _CIFAR_DIRS[name, version], directory):
            if all((candidate / f).is_file() for files in _CIFAR_MEMBERS[name, version].values() for f in files):
                return lambda split, c=candidate, v=version: read_cifar_directory(c, name, v, split)
        tarball = directory / _CIFAR_TARBALLS[name, version]
        if tarball.is_file():
            return lambda split, t=tarball, v=version: read_cifar_tarball(t, name, v, split)
    return None


def find_raw_source(spec: DatasetSpec, directory: Path) -> Callable[[str], tuple[np.ndarray, np.ndarray]] | None:
    """A reader split -> (images, labels) for original files of ``spec`` in ``directory`` (any layout), or None."""
    if not directory.is_dir():
        return None
    if spec.family == "cifar":
        return find_cifar_source(directory, spec.name)
    if all(find_idx_files(directory, split) for split in _MNIST_FILES):
        return lambda split: read_idx_split(*find_idx_files(directory, split))
    return None


def has_registered_files(spec: DatasetSpec, directory: Path) -> bool:
    """Whether ``directory`` holds every official file of ``spec`` under its registered name (checksums verifiable)."""
    return directory.is_dir() and all((directory / name).is_file() for name in spec.urls)


def restored_debian_files(spec: DatasetSpec) -> tempfile.TemporaryDirectory | None:
    """A temporary directory with the Debian package's files restored to the official bytes, or None if absent."""
    if spec.debian_dir is None or not has_registered_files(spec, Path(spec.debian_dir)):
        return None
    tmp = tempfile.TemporaryDirectory(prefix=f"cnnjax-{spec.name}-")
    for name in spec.urls:
        restore_debian_gzip(Path(spec.debian_dir) / name, Path(tmp.name) / name)
    return tmp
