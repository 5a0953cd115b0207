"""Your own images: a folder with one sub-folder of images per class, decoded once into a uint8 array cache.

``ROOT/train/<class>/*`` (and optionally ``ROOT/test/<class>/*``) holding PNG, JPEG, BMP or GIF files, decoded with
Pillow; class names are the sorted sub-folder names of ``train/``. The decoded arrays are cached as ``.npy`` files
under ``CACHE/image_folder/<key>/``, where the key is a hash of the folder's path, its file list with sizes and
modification times, and the decoding options: a second run memory-maps them instead of decoding, and a changed folder
gets a new key (the stale entry of the same folder is removed). A cache entry is written into a temporary directory
and renamed when complete, so an interrupted preparation never looks prepared.

Everything is held in memory; data larger than memory would be streamed (e.g. with grain) instead of cached whole.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from cnnjax.data.sources import DataError

NAME = "image_folder"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
CHANNEL_MODES = {1: "L", 3: "RGB"}  # data.channels -> Pillow mode
_CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class FolderImages:
    """The decoded images of an image folder: uint8 (N, H, W, C) and int64 (N,) per split; test is None without
    ``test/``."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray] | None
    class_names: tuple[str, ...]
    skipped: int  # files that are not images (by suffix)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _files(split_dir: Path, class_dir: Path) -> tuple[list[Path], int]:
    """(the image files under ``class_dir``, sorted; the number of other files), descending into sub-folders."""
    files = sorted(p for p in class_dir.rglob("*") if p.is_file())
    images = [p for p in files if _is_image(p)]
    if not images:
        raise DataError(
            f"{class_dir} holds no images ({', '.join(s[1:].upper() for s in IMAGE_SUFFIXES[:4])}, GIF); add "
            f"images or remove the folder from {split_dir}"
        )
    return images, len(files) - len(images)


def scan(root: str | Path) -> tuple[dict[str, list[tuple[Path, int]]], tuple[str, ...], int]:
    """({'train': [(file, label), ...], 'test': [...] if ROOT/test exists}, class names, non-image files), checking
    the layout; every problem is a DataError naming the folder and the fix."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.data_dir={str(root)!r} is not a folder; point --config.data.data_dir at a folder holding "
            "train/<class>/ image folders (and optionally test/<class>/)"
        )
    train_dir = root / "train"
    if not train_dir.is_dir():
        found = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())[:5]) or "no folders"
        raise DataError(
            f"{root} has no train/ folder (it holds {found}); data.name='image_folder' expects "
            f"{root}/train/<class>/*.png and optionally {root}/test/<class>/*.png"
        )
    class_names = tuple(sorted(p.name for p in train_dir.iterdir() if p.is_dir()))
    if len(class_names) < 2:
        raise DataError(
            f"{train_dir} holds {len(class_names)} class folder{'' if len(class_names) == 1 else 's'} "
            f"({', '.join(class_names) or 'none'}); a classifier needs at least two: one sub-folder of images per class"
        )
    skipped = sum(1 for p in train_dir.iterdir() if p.is_file())  # files beside the class folders
    splits = {}
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        present = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        unknown = [name for name in present if name not in class_names]
        if unknown:
            raise DataError(
                f"{split_dir} has class folder(s) {', '.join(unknown)} that {train_dir} lacks; the classes are the "
                f"folders of train/ ({', '.join(class_names)})"
            )
        entries = []
        for name in present:
            images, others = _files(split_dir, split_dir / name)
            entries += [(path, class_names.index(name)) for path in images]
            skipped += others
        splits[split] = entries
    return splits, class_names, skipped


def normalized_mode(image, channels: int) -> str:
    """The Pillow mode an image is decoded into: ``CHANNEL_MODES[channels]``, or for 0 its own mode with palettes
    expanded (to RGB, or RGBA when transparent) and other modes as L (one band) or RGB."""
    if channels:
        return CHANNEL_MODES[channels]
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image.mode
    if image.mode == "P":
        return "RGBA" if "transparency" in image.info else "RGB"
    return "L" if len(image.getbands()) == 1 else "RGB"


def decode(path: str | Path, *, image_size: int = 0, channels: int = 0) -> np.ndarray:
    """Decodes one image file with Pillow.

    Args:
      path: a PNG, JPEG, BMP or GIF file (the first frame).
      image_size: > 0 resizes to image_size x image_size (bilinear); 0 keeps the size.
      channels: 1 converts to grayscale, 3 to RGB; 0 keeps the decoded mode.

    Returns:
      uint8 (H, W, C).

    Raises:
      DataError: naming the file when it is unreadable or truncated.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            image = image.convert(normalized_mode(image, channels))
            if image_size and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            array = np.asarray(image, np.uint8)
    except (OSError, ValueError, SyntaxError) as error:  # Pillow's errors for broken or truncated files
        raise DataError(f"cannot read the image {path} ({error}); replace or delete the file") from None
    return array if array.ndim == 3 else array[..., None]


def stack_images(paths: list[Path], *, image_size: int = 0, channels: int = 0) -> np.ndarray:
    """Decodes files on all cores into one array.

    Args:
      paths: the image files.
      image_size, channels: as for :func:`decode`.

    Returns:
      uint8 (N, H, W, C).

    Raises:
      DataError: images of different shapes, naming two of them and the keys that make them agree.
    """
    if not paths:
        return np.zeros((0, image_size or 1, image_size or 1, channels or 1), np.uint8)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # Pillow decodes without the GIL
        arrays = list(pool.map(lambda p: decode(p, image_size=image_size, channels=channels), paths))
    first = arrays[0].shape
    for path, array in zip(paths, arrays):
        if array.shape != first:
            if array.shape[:2] != first[:2]:
                what, fix = f"{first[1]}x{first[0]} vs {array.shape[1]}x{array.shape[0]} pixels", "data.image_size=N"
                fix += " (resize every image to N x N)"
            else:
                what, fix = f"{first[2]} vs {array.shape[2]} channels", "data.channels=1 (grayscale) or 3 (RGB)"
            raise DataError(
                f"the images differ in shape: {paths[0]} and {path} ({what}); set --config.{fix} to use them together"
            )
    return np.stack(arrays)


def _cache_tag(root: Path, image_size: int, channels: int) -> str:
    """A hash of the folder's path and the decoding options: the cache entries of one folder as one config reads it."""
    return hashlib.sha256(json.dumps([_CACHE_FORMAT, str(root), image_size, channels]).encode()).hexdigest()[:12]


def _contents_key(root: Path, files: dict[str, list[tuple[Path, int]]]) -> str:
    """A hash of the folder's contents as listed: every file's split, path, label, size and modification time."""
    digest = hashlib.sha256()
    for split, entries in sorted(files.items()):
        for path, label in entries:
            stat = path.stat()
            digest.update(f"{split}\0{path.relative_to(root)}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def load(root: str | Path, *, image_size: int = 0, channels: int = 0, cache_dir: str | Path) -> FolderImages:
    """The images of an image folder, decoded once and cached (see the module docstring).

    Args:
      root: the folder holding ``train/<class>/*`` and optionally ``test/<class>/*``.
      image_size: resize every image to image_size x image_size (0: keep; then all must have one size).
      channels: 1 grayscale, 3 RGB, 0 as decoded (then all must have one mode).
      cache_dir: where ``image_folder/<key>/`` caches the arrays (``data.tfds_dir``).

    Returns:
      ``FolderImages``: uint8 (N, H, W, C) images (memory-mapped) and int64 labels per split, the class names and the
      number of skipped non-image files. Every problem with the folder is a DataError naming it.
    """
    if channels not in (0, *CHANNEL_MODES):
        raise DataError(f"config.data.channels={channels!r} is invalid: 0 (as decoded), 1 (grayscale) or 3 (RGB)")
    root = Path(root).expanduser().absolute()
    files, class_names, skipped = scan(root)
    cache = Path(cache_dir).expanduser() / NAME
    entry = cache / f"{_cache_tag(root, image_size, channels)}-{_contents_key(root, files)}"
    if not (entry / "meta.json").is_file():
        _prepare(entry, files, class_names, image_size, channels)
    meta = json.loads((entry / "meta.json").read_text())
    arrays = {name: np.load(entry / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}
    test = (arrays["test_images"], arrays["test_labels"]) if "test_images" in arrays else None
    return FolderImages((arrays["train_images"], arrays["train_labels"]), test, tuple(meta["class_names"]), skipped)


def _prepare(entry: Path, files, class_names, image_size: int, channels: int) -> None:
    """Decodes every split into ``entry`` (atomically) and removes the older entries of the same folder and options."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        names = []
        for split, entries in files.items():
            images = stack_images([p for p, _ in entries], image_size=image_size, channels=channels)
            np.save(tmp / f"{split}_images.npy", images)
            np.save(tmp / f"{split}_labels.npy", np.array([label for _, label in entries], np.int64))
            names += [f"{split}_images", f"{split}_labels"]
        shapes = {np.load(tmp / f"{s}_images.npy", mmap_mode="r").shape[1:] for s in files if files[s]}
        if len(shapes) > 1:
            raise DataError(
                f"train/ and test/ images differ in shape ({' vs '.join(map(str, sorted(shapes)))}); set "
                "--config.data.image_size=N and/or --config.data.channels=1|3 so that they agree"
            )
        (tmp / "meta.json").write_text(json.dumps({"class_names": list(class_names), "arrays": names}))
        try:
            os.rename(tmp, entry)
        except OSError:  # another process prepared the same entry first
            if not (entry / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in entry.parent.glob(f"{entry.name.split('-')[0]}-*"):
        if stale != entry:
            shutil.rmtree(stale, ignore_errors=True)
