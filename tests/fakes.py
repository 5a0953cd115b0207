"""Test helpers: generated datasets in the original file formats and image folders, small configs on them, and
reading a run's final state."""

import importlib
import pickle
import struct
from pathlib import Path

import numpy as np

from cnnjax import checkpoint, metrics


def learnable_images(labels: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """uint8 images (N, *shape) whose class shows as a bright horizontal band at a class-specific height, plus noise."""
    h = shape[0]
    images = rng.integers(0, 80, (len(labels), *shape), dtype=np.uint8)
    for i, label in enumerate(labels):
        top = int(label) * h // 10
        images[i, top : top + max(h // 10, 1)] = 230
    return images


def write_idx(path: Path, array: np.ndarray) -> None:
    path.write_bytes(bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def make_idx_dataset(directory: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict:
    """Uncompressed MNIST-format IDX files; returns {'train'|'t10k': (images (N, 28, 28), labels)}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = learnable_images(labels, (28, 28, 1), rng)[..., 0]
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return arrays


def make_cifar10_python(directory: Path, per_batch: int = 20, n_test: int = 20, seed: int = 0) -> None:
    """An extracted CIFAR-10 python version (cifar-10-batches-py) with learnable images."""
    rng = np.random.default_rng(seed)
    out = directory / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        labels = rng.integers(0, 10, n)
        images = learnable_images(labels, (32, 32, 3), rng)
        batch = {b"data": images.transpose(0, 3, 1, 2).reshape(n, 3072), b"labels": labels.tolist()}
        (out / name).write_bytes(pickle.dumps(batch))


def make_image_folder(root: Path, images: np.ndarray, labels: np.ndarray, class_names, split: str = "train") -> None:
    """Writes uint8 images (N, H, W, C) as PNG files root/split/<class name>/<index>.png."""
    from PIL import Image

    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / split / class_names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{index:05d}.png")


def make_learnable_folder(root: Path, n_train: int = 120, n_test: int = 30, classes: int = 4, seed: int = 0) -> tuple:
    """A learnable 28x28 grayscale image folder with train/ and test/ splits; returns the class names."""
    rng = np.random.default_rng(seed)
    names = tuple(f"class_{c}" for c in range(classes))
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % classes
        make_image_folder(root, learnable_images(labels * (10 // classes), (28, 28, 1), rng), labels, names, split)
    return names


def small_config(tmp_path: Path, experiment: str = "lenet", **train_overrides):
    """An experiment's config pointed at generated data, small enough for seconds of training."""
    config = importlib.import_module(f"experiments.{experiment}").get_config()
    src = tmp_path / "src"
    if config.data.name == "cifar10":
        make_cifar10_python(src, per_batch=24, n_test=20)
    else:
        config.data.name = "mnist"
        make_idx_dataset(src, n_train=120, n_test=30)
    config.data.data_dir = str(src)
    config.data.tfds_dir = str(tmp_path / "tfds")
    config.data.batch_size = 16
    config.data.eval_batch_size = 7  # partial evaluation batches
    config.data.validation_fraction = 0.2
    config.train.num_epochs = 3
    config.train.log_every = 2
    for key, value in train_overrides.items():
        config.train[key] = value
    return config


def comparable(records):
    return [{k: v for k, v in r.items() if k not in metrics.TIMING_KEYS} for r in records]


def final_state(workdir: Path):
    manager = checkpoint.Checkpoints(workdir / "checkpoints", 3)
    step = manager.latest_step()
    meta = manager.periodic.item_metadata(step)["state"].tree
    restored = manager.periodic.restore(step)
    manager.close()
    return step, restored["state"], meta


def on_training_step(monkeypatch, at_call: int, action) -> None:
    """Makes the training step call ``action()`` before its ``at_call``-th call (e.g. raise KeyboardInterrupt, or
    send this process a signal as a scheduler would)."""
    from cnnjax import train

    real_steps = train.compiled_steps

    def steps(*args):
        optimizer, train_fn, step, eval_fn, eval_step = real_steps(*args)
        calls = [0]

        def hooked(*step_args):
            calls[0] += 1
            if calls[0] == at_call:
                action()
            return step(*step_args)

        return optimizer, train_fn, hooked, eval_fn, eval_step

    monkeypatch.setattr(train, "compiled_steps", steps)
