"""data.name='image_folder': layout, decoding, the decoded-array cache, held-out test split and the error cases."""

import os
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cnnjax import data
from cnnjax.config import base_config
from cnnjax.data import image_folder, pipeline
from tests import fakes

NAMES = ("cat", "dog", "emu")


def write_folder(root: Path, n: int = 12, split: str = "train", shape=(8, 8, 1), seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    labels = np.arange(n) % len(NAMES)
    fakes.make_image_folder(root, images, labels, NAMES, split)
    return images, labels


def folder_config(root: Path, tmp_path: Path, **overrides) -> ml_collections.ConfigDict:
    config = base_config().data
    config.name, config.data_dir, config.tfds_dir = "image_folder", str(root), str(tmp_path / "cache")
    config.validation_fraction = 0.25
    config.update(overrides)
    return config


def by_pixels(images, labels):
    order = np.lexsort(images.reshape(len(images), -1).T)
    return images[order], labels[order]


def test_folder_decodes_to_the_written_images_with_sorted_class_names(tmp_path):
    images, labels = write_folder(tmp_path / "root")
    test_images, test_labels = write_folder(tmp_path / "root", n=6, split="test", seed=1)
    folder = image_folder.load(tmp_path / "root", cache_dir=tmp_path / "cache")
    assert folder.class_names == NAMES and folder.skipped == 0
    for got, want in ((folder.train, (images, labels)), (folder.test, (test_images, test_labels))):
        np.testing.assert_array_equal(by_pixels(*got)[0], by_pixels(*want)[0])
        np.testing.assert_array_equal(by_pixels(*got)[1], by_pixels(*want)[1])


def test_the_cache_is_reused_and_a_changed_folder_is_noticed(tmp_path, monkeypatch):
    write_folder(tmp_path / "root")
    first = image_folder.load(tmp_path / "root", cache_dir=tmp_path / "cache")
    decoded = []
    real_decode = image_folder.decode
    monkeypatch.setattr(image_folder, "decode", lambda *a, **k: decoded.append(a) or real_decode(*a, **k))
    again = image_folder.load(tmp_path / "root", cache_dir=tmp_path / "cache")
    assert decoded == [] and isinstance(again.train[0], np.memmap)
    np.testing.assert_array_equal(again.train[0], first.train[0])
    changed = tmp_path / "root" / "train" / "dog" / "00001.png"
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a new mtime (and content) is a new folder
    third = image_folder.load(tmp_path / "root", cache_dir=tmp_path / "cache")
    assert len(decoded) == 12 and (third.train[0] == 7).all(axis=(1, 2, 3)).sum() == 1
    assert len(list((tmp_path / "cache" / "image_folder").iterdir())) == 1  # the stale entry is gone


def test_without_test_folder_a_test_split_is_held_out_deterministically(tmp_path):
    images, _ = write_folder(tmp_path / "root", n=40)
    config = folder_config(tmp_path / "root", tmp_path, test_fraction=0.25, standardize=False)
    splits = data.load_splits(config)
    again = data.load_splits(config)
    assert (len(splits.train[1]), len(splits.validation[1]), len(splits.test[1])) == (22, 8, 10)
    np.testing.assert_array_equal(splits.test[0], again.test[0])
    other = data.load_splits(folder_config(tmp_path / "root", tmp_path, test_fraction=0.25, split_seed=1))
    assert not np.array_equal(other.test[0], splits.test[0])
    assert splits.class_names == NAMES and splits.input_shape == (8, 8, 1)
    every = np.concatenate([splits.train[0], splits.validation[0], splits.test[0]])  # each image in one split
    np.testing.assert_array_equal(by_pixels(np.rint(every * 255).astype(np.uint8), np.zeros(40))[0],
                                  by_pixels(images, np.zeros(40))[0])  # fmt: skip


def test_the_65_25_10_split_of_a_folder_without_test_images(tmp_path):
    write_folder(tmp_path / "root", n=200)
    config = folder_config(tmp_path / "root", tmp_path, test_fraction=0.25, validation_fraction=0.10 / 0.75)
    splits = data.load_splits(config)
    assert (len(splits.train[1]), len(splits.test[1]), len(splits.validation[1])) == (130, 50, 20)


def test_image_size_and_channels_make_mixed_folders_usable(tmp_path):
    root = tmp_path / "root"
    write_folder(root, n=6, shape=(8, 8, 1))
    rgb = np.random.default_rng(2).integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
    fakes.make_image_folder(root, rgb, np.arange(3), NAMES, "train")  # 00000..00002 replaced by RGB 12x10 images
    with pytest.raises(data.DataError, match=r"differ in shape: .*00000.png and .*00003.png .*data.image_size=N"):
        image_folder.load(root, cache_dir=tmp_path / "cache")
    with pytest.raises(data.DataError, match=r"3 vs 1 channels.*data.channels=1 \(grayscale\) or 3 \(RGB\)"):
        image_folder.load(root, image_size=8, cache_dir=tmp_path / "cache")
    folder = image_folder.load(root, image_size=8, channels=3, cache_dir=tmp_path / "cache")
    assert folder.train[0].shape == (6, 8, 8, 3)
    gray = image_folder.load(root, image_size=5, channels=1, cache_dir=tmp_path / "cache")
    assert gray.train[0].shape == (6, 5, 5, 1)


def test_non_image_files_are_skipped_and_counted(tmp_path, caplog):
    write_folder(tmp_path / "root")
    (tmp_path / "root" / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "root" / "train" / "README").write_text("beside the class folders")
    config = folder_config(tmp_path / "root", tmp_path)
    with caplog.at_level("WARNING"):
        splits = data.load_splits(config)
    assert len(splits.train[1]) + len(splits.validation[1]) + len(splits.test[1]) == 12
    assert "skipped 2 files that are not images" in caplog.text


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: None, "is not a folder; point --config.data.data_dir at a folder holding train/<class>/"),
        (lambda root: (root / "test" / "cat").mkdir(parents=True), "has no train/ folder .* expects"),
        (lambda root: (write_folder(root), (root / "train" / "fox").mkdir()), r"train/fox holds no images .* add"),
        (lambda root: (root / "train" / "cat").mkdir(parents=True), r"holds 1 class folder \(cat\); .* at least two"),
        (lambda root: (write_folder(root), (root / "train" / "cat" / "00000.png").write_bytes(b"\x89PNG broken")),
         r"cannot read the image .*train/cat/00000.png .*replace or delete"),
        (lambda root: (write_folder(root), write_folder(root, 3, "test"), (root / "test" / "yak").mkdir(),
                       (root / "test" / "yak" / "a.png").write_bytes(b"")), "test has class folder.*yak.* lacks"),
    ],
)  # fmt: skip
def test_bad_folders_are_one_line_errors_naming_the_problem(tmp_path, damage, message):
    root = tmp_path / "root"
    damage(root)
    with pytest.raises(data.DataError, match=message) as error:
        image_folder.load(root, cache_dir=tmp_path / "cache")
    assert "\n" not in str(error.value)
    assert not list((tmp_path / "cache").glob("image_folder/*"))  # nothing half-prepared looks prepared


def test_a_truncated_image_is_named(tmp_path):
    write_folder(tmp_path / "root")
    path = tmp_path / "root" / "train" / "emu" / "00002.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(data.DataError, match="cannot read the image .*00002.png"):
        image_folder.load(tmp_path / "root", cache_dir=tmp_path / "cache")


def test_data_dir_is_required_and_data_keys_are_validated(tmp_path):
    config = folder_config(tmp_path, tmp_path)
    config.data_dir = None
    with pytest.raises(data.DataError, match="set --config.data.data_dir=ROOT"):
        pipeline.load_raw(config)
    with pytest.raises(data.DataError, match="config.data.channels=2 is invalid"):
        image_folder.load(tmp_path, channels=2, cache_dir=tmp_path / "cache")


def test_decode_modes(tmp_path):
    palette = Image.new("P", (4, 3))
    palette.putpalette([255, 0, 0] * 256)
    palette.save(tmp_path / "p.gif")
    Image.new("RGBA", (4, 3), (1, 2, 3, 4)).save(tmp_path / "a.png")
    Image.new("L", (4, 3), 9).save(tmp_path / "g.bmp")
    Image.new("RGB", (4, 3), (10, 20, 30)).save(tmp_path / "c.jpg", quality=100)
    assert image_folder.decode(tmp_path / "p.gif").shape == (3, 4, 3)
    assert image_folder.decode(tmp_path / "a.png")[0, 0].tolist() == [1, 2, 3, 4]
    assert image_folder.decode(tmp_path / "g.bmp").shape == (3, 4, 1)
    assert image_folder.decode(tmp_path / "c.jpg", channels=1, image_size=2).shape == (2, 2, 1)
    assert image_folder.decode(tmp_path / "g.bmp", channels=3)[0, 0].tolist() == [9, 9, 9]
