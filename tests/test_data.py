"""cnnjax.data offline: generated IDX and CIFAR files, TFDS mock data, the Debian restore step, splits,
preprocessing, batching, augmentation and the error cases."""

import dataclasses
import gzip
import hashlib
import os
import pickle
import struct
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnnjax import data
from cnnjax.data import augmentation, pipeline, sources, split_cache, tfds_builders
from tests import fakes

RNG = np.random.default_rng(0)
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def make_idx_dataset(directory: Path, n_train: int = 50, n_test: int = 20) -> dict:
    return fakes.make_idx_dataset(directory, n_train, n_test)


def _sorted_by_image(images, labels):
    """TFDS stores examples in a hashed order: compare datasets as multisets of (image, label)."""
    order = np.lexsort(images.reshape(len(images), -1).T)
    return images[order], labels[order]


def assert_same_examples(loaded, expected_images, expected_labels):
    images, labels = loaded
    assert images.dtype == np.uint8 and labels.dtype == np.int64 and images.ndim == 4
    got = _sorted_by_image(images, labels)
    want = _sorted_by_image(expected_images, expected_labels.astype(np.int64))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_uncompressed_idx_files_from_data_dir(tmp_path):
    arrays = make_idx_dataset(tmp_path / "src")
    for split, prefix in (("train", "train"), ("test", "t10k")):
        loaded = data.load("mnist", split, data_dir=str(tmp_path / "src"), tfds_dir=str(tmp_path / "tfds"))
        assert_same_examples(loaded, arrays[prefix][0][..., None], arrays[prefix][1])
    assert tfds_builders.builder("mnist", str(tmp_path / "tfds")).is_prepared()


def test_split_arrays_are_cached_next_to_tfds_and_rebuilt_when_they_do_not_match(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "src")
    tfds_dir = str(tmp_path / "tfds")
    first = data.load("mnist", "train", data_dir=str(tmp_path / "src"), tfds_dir=tfds_dir)
    assert split_cache.dataset_dir("mnist", tfds_dir) == Path(tfds_builders.builder("mnist", tfds_dir).data_dir)
    arrays = split_cache.dataset_dir("mnist", tfds_dir) / "arrays"
    assert sorted(p.name for p in arrays.iterdir()) == ["train.json", "train_images.npy", "train_labels.npy"]
    from_tfds = []
    read_tfds = tfds_builders.load
    monkeypatch.setattr(
        tfds_builders, "load", lambda *args, **kwargs: from_tfds.append(args) or read_tfds(*args, **kwargs)
    )
    cached = data.load("mnist", "train", tfds_dir=tfds_dir)
    assert from_tfds == [] and isinstance(cached[0], np.memmap)  # memory-mapped, TFDS untouched
    np.testing.assert_array_equal(cached[0], first[0])
    np.testing.assert_array_equal(cached[1], first[1])
    damaged = bytearray((arrays / "train_images.npy").read_bytes())
    damaged[-1] ^= 0xFF  # one flipped pixel: same size, other digest
    (arrays / "train_images.npy").write_bytes(bytes(damaged))
    np.testing.assert_array_equal(data.load("mnist", "train", tfds_dir=tfds_dir)[0], first[0])
    assert len(from_tfds) == 1
    assert split_cache.read("mnist", "train", tfds_dir) is not None  # rewritten
    source = next(split_cache.dataset_dir("mnist", tfds_dir).glob("*-train.array_record-*"))
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))  # TFDS re-prepared it
    assert split_cache.read("mnist", "train", tfds_dir) is None
    np.testing.assert_array_equal(data.load("mnist", "train", tfds_dir=tfds_dir)[0], first[0])
    assert len(from_tfds) == 2


def test_a_split_cache_that_cannot_be_written_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno

    make_idx_dataset(tmp_path / "src")

    def full_disk(file, array):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(split_cache.np, "save", full_disk)
    images, labels = data.load("mnist", "test", data_dir=str(tmp_path / "src"), tfds_dir=str(tmp_path / "tfds"))
    assert images.shape == (20, 28, 28, 1) and len(labels) == 20  # loaded from TFDS all the same
    arrays = split_cache.dataset_dir("mnist", str(tmp_path / "tfds")) / "arrays"
    assert list(arrays.iterdir()) == [] and split_cache.read("mnist", "test", str(tmp_path / "tfds")) is None


def _cifar_rows(n, label_bytes):
    labels = RNG.integers(0, 10, (n, label_bytes), dtype=np.uint8)
    pixels = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    images = pixels.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return labels, pixels, images


def test_cifar10_python_tarball(tmp_path):
    src = tmp_path / "src"
    (src / "cifar-10-batches-py").mkdir(parents=True)
    expected = {"train": [], "test": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels, pixels, images = _cifar_rows(4, 1)
        batch = {b"data": pixels, b"labels": labels[:, 0].tolist()}
        (src / "cifar-10-batches-py" / name).write_bytes(pickle.dumps(batch))
        expected["test" if name == "test_batch" else "train"].append((images, labels[:, 0]))
    with tarfile.open(src / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    tarball_only = tmp_path / "tarball"
    tarball_only.mkdir()
    (src / "cifar-10-python.tar.gz").rename(tarball_only / "cifar-10-python.tar.gz")
    for source in (src, tarball_only):  # extracted batches, then the tarball itself
        for split in ("train", "test"):
            images, labels = (np.concatenate(x) for x in zip(*expected[split]))
            loaded = data.load("cifar10", split, data_dir=str(source), tfds_dir=str(tmp_path / f"tfds-{source.name}"))
            assert_same_examples(loaded, images, labels)


def test_cifar100_binary_batches_use_the_fine_label(tmp_path):
    src = tmp_path / "cifar-100-binary"
    src.mkdir()
    expected = {}
    for split in ("train", "test"):
        labels, pixels, images = _cifar_rows(6, 2)
        (src / f"{split}.bin").write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
        expected[split] = (images, labels[:, 1])
    for split in ("train", "test"):
        loaded = data.load("cifar100", split, data_dir=str(tmp_path), tfds_dir=str(tmp_path / "tfds"))
        assert_same_examples(loaded, *expected[split])


def test_other_tfds_datasets_through_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=7):
        images, labels = data.load("kmnist", "train", tfds_dir=str(tmp_path))
    assert images.shape == (7, 28, 28, 1) and images.dtype == np.uint8 and labels.shape == (7,)


def test_a_tfds_dataset_without_a_test_split_holds_out_data_test_fraction(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_builders, "split_names", lambda name, tfds_dir: ("train",))
    loaded = []
    monkeypatch.setattr(pipeline, "load", lambda name, split, **kw: loaded.append(split) or tfds_builders.load(
        name, split, tfds_dir=kw["tfds_dir"]))  # fmt: skip
    config = data_config(name="kmnist", tfds_dir=str(tmp_path), test_fraction=0.25, validation_fraction=0.1333)
    with tfds.testing.mock_data(num_examples=40):
        splits = data.load_splits(config)
        again = data.load_splits(config)
    assert loaded == ["train", "train"]  # its test split is never asked for
    assert [len(s[1]) for s in (splits.train, splits.validation, splits.test)] == [26, 4, 10]  # 65 / 10 / 25 %
    np.testing.assert_array_equal(splits.test[0], again.test[0])  # the same examples for the same split_seed
    assert not pipeline.has_test_split("kmnist", str(tmp_path)) and pipeline.has_test_split("fashion_mnist", None)


def test_debian_gzip_header_restore_gives_back_the_original_bytes(tmp_path):
    payload = RNG.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    for name, mtime in (("train-images-idx3-ubyte", 1504176606), ("t10k-labels-idx1-ubyte", 1504176627)):
        original = tmp_path / f"{name}.gz"
        with open(original, "wb") as f, gzip.GzipFile(filename=name, mode="wb", fileobj=f, mtime=mtime) as gz:
            gz.write(payload)
        raw = original.read_bytes()
        # Debian's rewrite: no stored name (FNAME cleared), another timestamp, same stream
        debian = tmp_path / "debian" / f"{name}.gz"
        debian.parent.mkdir(exist_ok=True)
        name_end = raw.index(b"\x00", 10) + 1
        debian.write_bytes(b"\x1f\x8b\x08\x00" + struct.pack("<I", 1591000000) + raw[8:10] + raw[name_end:])
        restored = tmp_path / "restored.gz"
        sources.restore_debian_gzip(debian, restored)
        assert hashlib.sha256(restored.read_bytes()).digest() == hashlib.sha256(raw).digest()
        assert gzip.decompress(restored.read_bytes()) == payload


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


def test_dataset_not_found_offline_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_builders, "_reachable", lambda url: False)
    monkeypatch.setitem(
        tfds_builders.DATASETS, "fashion_mnist",
        dataclasses.replace(sources.DATASETS["fashion_mnist"], debian_dir=str(tmp_path / "no-debian")),
    )  # fmt: skip
    with pytest.raises(data.DataError) as error:
        data.load("fashion_mnist", "train", tfds_dir=str(tmp_path / "tfds"))
    message = str(error.value)
    for expected in ("not found offline", "downloads/manual/fashion_mnist", "no-debian", "apt-get install "
                     "dataset-fashion-mnist", "data.data_dir", "TFDS downloads"):  # fmt: skip
        assert expected in message
    with pytest.raises(data.DataError, match=r"looked in .*empty \(data.data_dir\)"):
        (tmp_path / "empty").mkdir()
        data.load("mnist", "train", data_dir=str(tmp_path / "empty"), tfds_dir=str(tmp_path / "tfds"))


def test_bad_idx_magic_and_truncated_files_name_the_file(tmp_path):
    make_idx_dataset(tmp_path / "src")
    labels = tmp_path / "src" / "train-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte is not an IDX file .* magic number is 00000803"):
        data.load("mnist", "train", data_dir=str(tmp_path / "src"), tfds_dir=str(tmp_path / "tfds"))
    assert not tfds_builders.builder("mnist", str(tmp_path / "tfds")).is_prepared()
    make_idx_dataset(tmp_path / "src")
    images = tmp_path / "src" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte is truncated or corrupt: its header promises"):
        data.load("mnist", "test", data_dir=str(tmp_path / "src"), tfds_dir=str(tmp_path / "tfds"))
    # nothing half-written looks prepared; the fixed files then prepare normally
    assert not tfds_builders.builder("mnist", str(tmp_path / "tfds")).is_prepared()
    make_idx_dataset(tmp_path / "src")
    assert len(data.load("mnist", "test", data_dir=str(tmp_path / "src"), tfds_dir=str(tmp_path / "tfds"))[0]) == 20


def test_corrupt_gzip_and_cifar_records(tmp_path):
    bad = tmp_path / "x.gz"
    bad.write_bytes(gzip.compress(RNG.integers(0, 256, 1000, dtype=np.uint8).tobytes())[:500])
    with pytest.raises(data.DataError, match="corrupt or truncated gzip"):
        sources.read_idx(bad, ndim=1)
    with pytest.raises(data.DataError, match="not a multiple of 3073-byte records"):
        sources.parse_cifar_binary(b"\x00" * 5000, 1, "batch.bin")
    with pytest.raises(data.DataError, match="not a readable CIFAR python batch"):
        sources.parse_cifar_python(b"garbage", "data_batch_1")


def test_official_file_names_with_wrong_content_fail_the_tfds_checksum(tmp_path):
    src = tmp_path / "src"
    make_idx_dataset(src)
    for path in list(src.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    with pytest.raises(data.DataError, match="does not match the checksum TFDS registers"):
        data.load("mnist", "train", data_dir=str(src), tfds_dir=str(tmp_path / "tfds"))
    assert not tfds_builders.builder("mnist", str(tmp_path / "tfds")).is_prepared()


def test_unknown_names_and_splits():
    with pytest.raises(data.DataError, match="unknown dataset 'fashion_mnst'. Did you mean fashion_mnist"):
        data.load("fashion_mnst", "train")
    with pytest.raises(data.DataError, match="mnist has no split 'validation'; its splits are train, test"):
        data.load("mnist", "validation")


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_debian_fashion_mnist(tmp_path_factory):
    tfds_dir = str(tmp_path_factory.mktemp("tfds"))
    train_images, train_labels = data.load("fashion_mnist", "train", tfds_dir=tfds_dir)
    test_images, test_labels = data.load("fashion_mnist", "test", tfds_dir=tfds_dir)
    assert train_images.shape == (60_000, 28, 28, 1) and test_images.shape == (10_000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(train_labels), [6_000] * 10)
    np.testing.assert_array_equal(np.bincount(test_labels), [1_000] * 10)


# ----------------------------------------------------------------------------------------------------------------------
# Splits, preprocessing, batching
# ----------------------------------------------------------------------------------------------------------------------


def data_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(
            name="mnist",
            data_dir=None,
            tfds_dir=None,
            validation_fraction=0.2,
            validation_size=0,
            split_seed=0,
            balance="none",
            pad_to=0,
            standardize=True,
            zca=False,
            zca_epsilon=0.1,
        )  # fmt: skip
    )
    config.update(overrides)
    return config


def test_load_splits_sizes_determinism_and_standardization(tmp_path):
    make_idx_dataset(tmp_path / "src", n_train=100, n_test=30)
    config = data_config(data_dir=str(tmp_path / "src"), tfds_dir=str(tmp_path / "tfds"), pad_to=32)
    splits = data.load_splits(config)
    assert [len(s[0]) for s in (splits.train, splits.validation, splits.test)] == [80, 20, 30]
    assert splits.image_shape == (32, 32, 1) and splits.num_classes == 10 and splits.train[1].dtype == np.int32
    assert abs(float(splits.train[0].mean())) < 1e-5 and abs(float(splits.train[0].std()) - 1) < 1e-4
    again = data.load_splits(config)
    np.testing.assert_array_equal(again.validation[0], splits.validation[0])
    other_seed = data.load_splits(data_config(**{**config.to_dict(), "split_seed": 1}))
    assert not np.array_equal(other_seed.validation[1], splits.validation[1]) or not np.array_equal(
        other_seed.validation[0], splits.validation[0]
    )
    assert len(data.load_splits(data_config(**{**config.to_dict(), "validation_size": 7})).validation[0]) == 7


def test_validation_split_is_disjoint_and_bad_fractions_are_errors():
    images, labels = np.arange(100)[:, None], np.arange(100)
    (train, _), (val, _) = pipeline.split_validation(images, labels, 10, seed=3)
    assert len(val) == 10 and len(train) == 90 and not set(train.ravel()) & set(val.ravel())
    with pytest.raises(ValueError, match="data.validation_fraction=1.5"):
        pipeline.validation_count(100, fraction=1.5)
    with pytest.raises(ValueError, match="choose a fraction in"):
        pipeline.validation_count(100, fraction=0.1, size=100)


def test_class_balancing():
    labels = np.array([0] * 10 + [1] * 4 + [2] * 6)
    images = np.arange(20)[:, None]
    for mode, count in (("undersample", 4), ("oversample", 10)):
        _, balanced = pipeline.balance_classes(images, labels, mode, seed=0)
        np.testing.assert_array_equal(np.bincount(balanced), [count] * 3)
    with pytest.raises(ValueError, match="data.balance must be one of"):
        pipeline.balance_classes(images, labels, "smote", seed=0)


def test_standardization_statistics_and_preprocessing_match_the_float_formula():
    train, test = (
        RNG.integers(0, 256, (50, 5, 6, 3), dtype=np.uint8),
        RNG.integers(0, 256, (7, 5, 6, 3), dtype=np.uint8),
    )
    floats = np.pad(train / 255.0, ((0, 0), (1, 2), (1, 1), (0, 0)))  # pad_to=8 puts the zeros in the statistics
    mean, std = pipeline.fit_standardize(pipeline.pad_images(train, 8))
    np.testing.assert_allclose(mean, floats.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, floats.std(axis=(0, 1, 2)), rtol=1e-12)
    out_train, out_test = pipeline.preprocess(train, [test], data_config(pad_to=8))
    assert out_train.dtype == out_test.dtype == np.float32 and out_test.shape == (7, 8, 8, 3)
    np.testing.assert_allclose(out_train, (floats - mean) / std, atol=1e-6)
    np.testing.assert_allclose(out_test[:, 1:6, 1:7], (test / 255.0 - mean) / std, atol=1e-6)
    raw = pipeline.preprocess(train, [], data_config(standardize=False))[0]
    np.testing.assert_allclose(raw, train / 255.0, atol=1e-7)
    with pytest.raises(data.DataError, match="data.standardize needs the raw uint8 images"):
        pipeline.fit_standardize(train.astype(np.float32))


def test_zca_whitening_gives_identity_covariance_on_train():
    x = RNG.standard_normal((4000, 3, 3, 1)) @ np.ones((1, 1))  # (N, 3, 3, 1)
    x = x + 0.5 * np.roll(x, 1, axis=1)  # correlated pixels
    mean, matrix = pipeline.fit_zca(x, epsilon=1e-6)
    white = (x.reshape(len(x), -1) - mean) @ matrix
    np.testing.assert_allclose(np.cov(white, rowvar=False, bias=True), np.eye(9), atol=1e-3)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-10)  # ZCA: symmetric, unlike PCA whitening


def test_padding_centres_the_image():
    padded = pipeline.pad_images(np.ones((1, 28, 28, 1)), 32)
    assert (
        padded.shape == (1, 32, 32, 1) and padded.sum() == 784 and padded[0, 2, 2, 0] == 1 and padded[0, 1, 1, 0] == 0
    )
    with pytest.raises(ValueError, match="data.pad_to=20 is smaller"):
        pipeline.pad_images(np.ones((1, 28, 28, 1)), 20)


def test_train_batches_depend_only_on_seed_and_epoch():
    a = data.train_batches(103, 10, seed=1, epoch=4)
    assert a.shape == (10, 10) and len(np.unique(a)) == 100  # no repeats, partial batch dropped
    np.testing.assert_array_equal(a, data.train_batches(103, 10, seed=1, epoch=4))
    assert not np.array_equal(a, data.train_batches(103, 10, seed=1, epoch=5))
    assert not np.array_equal(a, data.train_batches(103, 10, seed=2, epoch=4))
    with pytest.raises(data.DataError, match="data.batch_size=200 must be between 1 and the 103"):
        data.train_batches(103, 200, seed=1, epoch=0)


def test_eval_batches_weight_the_partial_batch():
    index, weights = data.eval_batches(23, 10)
    assert index.shape == weights.shape == (3, 10)
    assert weights.sum() == 23 and list(index.ravel()[weights.ravel() > 0]) == list(range(23))
    values = np.arange(23.0)
    assert (values[index] * weights).sum() / weights.sum() == pytest.approx(values.mean())


# ----------------------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------------------


def test_augmentations_are_deterministic_jittable_and_keep_shapes():
    images = jnp.asarray(RNG.standard_normal((8, 12, 12, 3)), jnp.float32)
    key = jax.random.key(0)
    run = jax.jit(lambda k, x: data.augment(k, x, crop_padding=2, flip=True, translate=1.5))
    out = run(key, images)
    assert out.shape == images.shape
    np.testing.assert_array_equal(out, run(key, images))
    assert not np.array_equal(out, run(jax.random.key(1), images))


def test_random_crop_is_a_shift_of_each_image_and_flip_mirrors():
    images = jnp.asarray(RNG.standard_normal((16, 8, 8, 1)), jnp.float32)
    crops = data.random_crop(jax.random.key(0), images, padding=2)
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for image, crop in zip(padded, np.asarray(crops)):
        windows = [image[i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        assert any(np.array_equal(w, crop) for w in windows)
    flipped = np.asarray(data.random_flip(jax.random.key(0), images))
    mirrored = [np.array_equal(f, x[:, ::-1]) for f, x in zip(flipped, np.asarray(images))]
    same = [np.array_equal(f, x) for f, x in zip(flipped, np.asarray(images))]
    assert all(m or s for m, s in zip(mirrored, same)) and 0 < sum(mirrored) < 16


def test_test_time_views_are_the_image_its_whole_pixel_shifts_and_their_mirrors():
    images = jnp.asarray(RNG.standard_normal((3, 6, 6, 2)), jnp.float32)
    assert len(data.test_time_views(images)) == 1 and len(data.test_time_views(images, flip=True)) == 2
    views = [np.asarray(v) for v in data.test_time_views(images, flip=True, shift=2)]
    assert len(views) == 10
    x = np.asarray(images)
    np.testing.assert_array_equal(views[0], x)
    np.testing.assert_array_equal(views[1][:, 2:], x[:, :-2])  # shifted down: zeros come in at the top
    np.testing.assert_array_equal(views[1][:, :2], 0.0)
    np.testing.assert_array_equal(views[2][:, :-2], x[:, 2:])  # up
    np.testing.assert_array_equal(views[3][:, :, 2:], x[:, :, :-2])  # right
    np.testing.assert_array_equal(views[4][:, :, :-2], x[:, :, 2:])  # left
    for view, mirrored in zip(views[:5], views[5:]):
        np.testing.assert_array_equal(mirrored, view[:, :, ::-1])


def test_translate_by_whole_pixels_shifts_in_zeros_and_random_translate_varies():
    images = jnp.asarray(RNG.standard_normal((2, 6, 6, 1)), jnp.float32)
    out = np.asarray(augmentation.translate(images, jnp.array([[1.0, 0.0], [0.0, -2.0]])))
    np.testing.assert_allclose(out[0, 1:], images[0, :-1], atol=1e-6)
    np.testing.assert_array_equal(out[0, 0], 0.0)
    np.testing.assert_allclose(out[1, :, :-2], images[1, :, 2:], atol=1e-6)
    np.testing.assert_array_equal(out[1, :, -2:], 0.0)
    moved = np.asarray(data.random_translate(jax.random.key(0), jnp.ones((64, 6, 6, 1)), max_shift=2.0))
    assert 0.0 <= moved.min() and moved.max() <= 1.0 + 1e-6 and len(np.unique(moved.sum(axis=(1, 2, 3)))) > 3
