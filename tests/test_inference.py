"""Using a trained run: the run card, test metrics, cnnjax.load / predict / top_k, export, --predict and --export,
warm starts and frozen parameters; on small PNG folders written by the tests."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import cnnjax
from cnnjax import checkpoint, data, inference, models, onednn, optim, run_card, train
from cnnjax import functional as F
from cnnjax.config import base_config
from cnnjax.data import sources
from tests import fakes

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


def folder_config(root: Path, cache: Path, num_classes: int, **train_overrides):
    config = base_config()
    config.data.name, config.data.data_dir, config.data.tfds_dir = "image_folder", str(root), str(cache)
    config.data.batch_size, config.data.eval_batch_size = 16, 7  # partial evaluation batches
    config.data.validation_fraction = 0.2
    config.data.test_time_flip = True  # predict must average the same views as the evaluation
    config.model.num_classes = num_classes
    config.optim.learning_rate = 2e-3
    config.train.num_epochs = 2
    config.train.log_every = 5
    config.train.update(train_overrides)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished lenet run on a 4-class PNG folder: (run directory, config, folder)."""
    base = tmp_path_factory.mktemp("trained")
    names = fakes.make_learnable_folder(base / "folder", n_train=160, n_test=40, classes=4)
    config = folder_config(base / "folder", base / "cache", len(names))
    with jax.numpy_dtype_promotion("standard"):
        train.train_and_evaluate(config, base / "run")
    return base / "run", config, base / "folder"


def test_the_run_keeps_what_inference_needs_and_the_test_metrics(trained):
    run, config, folder = trained
    card = json.loads((run / "inference.json").read_text())
    assert card["class_names"] == ["class_0", "class_1", "class_2", "class_3"] and card["input_shape"] == [28, 28, 1]
    assert card["test_time_views"] == {"flip": True, "shift": 0} and card["model"]["num_classes"] == 4
    results = json.loads((run / "results.json").read_text())
    confusion = np.array(results["confusion_matrix"])
    assert confusion.sum() == 40 and confusion.sum(axis=1).tolist() == [10, 10, 10, 10]  # rows: true classes
    assert np.trace(confusion) / 40 == pytest.approx(results["test_accuracy"])
    assert results["top5_accuracy"] == 1.0  # 4 classes: the true one is always among the top 5
    assert set(results["per_class"]) == set(card["class_names"])
    recall = results["per_class"]["class_2"]["recall"]
    assert recall == pytest.approx(confusion[2, 2] / 10) and results["per_class"]["class_2"]["support"] == 10
    assert list((run / "tensorboard").glob("events*"))


def test_eval_step_counts_top5_and_confusion_like_numpy(rng):
    model = models.get("lenet")
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    images = jnp.asarray(rng.normal(size=(9, 28, 28, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 9), jnp.int32)
    weights = jnp.asarray([1.0] * 8 + [0.0])  # the last example is padding
    eval_step = jax.jit(train.eval_step_fn(model, "cross_entropy"))
    sums = eval_step(variables["params"], {}, images, labels, jnp.arange(9), weights)["sums"]
    outputs = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))[:8]
    y = np.asarray(labels)[:8]
    top5 = np.argsort(-outputs, axis=1)[:, :5]
    confusion = np.zeros((10, 10))
    np.add.at(confusion, (y, outputs.argmax(1)), 1)
    assert sums.shape == (104,) and float(sums[2]) == 8
    assert float(sums[3]) == float(np.sum(np.any(top5 == y[:, None], axis=1)))
    np.testing.assert_array_equal(np.asarray(sums[4:]).reshape(10, 10), confusion)
    per_class = train.per_class_metrics(np.array([[3, 1], [0, 0]]), ("a", "b"))
    assert per_class["a"] == {"precision": 1.0, "recall": 0.75, "f1": pytest.approx(6 / 7), "support": 4}
    assert per_class["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_predict_on_the_test_split_gives_the_runs_test_accuracy(trained):
    run, _, folder = trained
    predictor = cnnjax.load(run)
    files = sorted((folder / "test").rglob("*.png"))
    labels = np.array([predictor.class_names.index(f.parent.name) for f in files])
    probabilities = predictor.predict(files)
    assert probabilities.shape == (40, 4) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    results = json.loads((run / "results.json").read_text())
    assert np.mean(probabilities.argmax(axis=1) == labels) == results["test_accuracy"]
    arrays = np.stack([np.asarray(Image.open(f))[..., None] for f in files])
    np.testing.assert_array_equal(predictor.predict(arrays), probabilities)
    np.testing.assert_allclose(predictor.predict(arrays[3]), probabilities[3:4], atol=1e-6)  # one (H, W, C) image
    top, classes = predictor.top_k(files[:5], k=3)
    assert top.shape == classes.shape == (5, 3) and (np.diff(top, axis=1) <= 0).all()
    np.testing.assert_array_equal(classes[:, 0], probabilities[:5].argmax(axis=1))
    with pytest.raises(ValueError, match=r"got float32 images of shape \(2, 28, 28, 1\); the model takes uint8"):
        predictor.predict(arrays[:2].astype(np.float32))
    Image.new("L", (10, 12)).save(run.parent / "small.png")
    with pytest.raises(ValueError, match=r"small.png is a 12x10x1 image; the model takes 28x28x1 images"):
        predictor.predict(run.parent / "small.png")
    last = cnnjax.load(run, which="last")
    assert "periodic" in last.source and "best" in predictor.source


def test_a_run_at_bfloat16_matmul_precision_is_tested_and_predicts_at_it(tmp_path):
    names = fakes.make_learnable_folder(tmp_path / "folder", n_train=96, n_test=40, classes=4)
    config = folder_config(tmp_path / "folder", tmp_path / "cache", len(names), matmul_precision="bfloat16")
    config.train.num_epochs, config.data.test_time_flip = 1, False
    with jax.numpy_dtype_promotion("standard"):
        results = train.train_and_evaluate(config, tmp_path / "run")
    predictor = cnnjax.load(tmp_path / "run")
    assert predictor.card["matmul_precision"] == "bfloat16"
    files = sorted((tmp_path / "folder" / "test").rglob("*.png"))
    labels = np.array([predictor.class_names.index(f.parent.name) for f in files])
    assert np.mean(predictor.predict(files).argmax(axis=1) == labels) == results["test_accuracy"]
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, *predictor.input_shape)), jnp.float32)
    with jax.default_matmul_precision("bfloat16"):
        expected = jax.jit(train.eval_outputs_fn(predictor.model))(predictor.variables, x)
    at_default = jax.jit(train.eval_outputs_fn(predictor.model))(predictor.variables, x)
    outputs = jax.jit(predictor.probabilities_fn())(predictor.variables, x)
    np.testing.assert_array_equal(outputs, jax.nn.softmax(expected, axis=-1))
    in_bfloat16 = onednn.native_bfloat16() and F.default_conv_lowering((5, 5, 6, 16)) == "onednn"  # lenet's conv2
    assert np.array_equal(expected, at_default) != in_bfloat16
    config.train.matmul_precision = "bf16"
    with pytest.raises(ValueError, match=r"config.train.matmul_precision='bf16' is invalid: choose one of "):
        train.check_config(config)


def test_export_runs_without_cnnjax_or_flax_and_agrees_with_predict(trained, tmp_path):
    run, _, folder = trained
    predictor = cnnjax.load(run)
    description = predictor.export(tmp_path / "export")
    assert description["class_names"] == list(predictor.class_names) and "cpu" in description["platforms"]
    assert json.loads((tmp_path / "export" / "model.json").read_text())["input_shape"] == ["batch", 28, 28, 1]
    images = np.stack([np.asarray(Image.open(f))[..., None] for f in sorted((folder / "test").rglob("*.png"))])
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, jax, numpy as np\n"
        f"exported = jax.export.deserialize(open({str(tmp_path / 'export' / 'model.jax')!r}, 'rb').read())\n"
        f"images = np.load({str(tmp_path / 'images.npy')!r})\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, np.concatenate([exported.call(images), exported.call(images[:3])]))\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('cnnjax', 'flax')], 'imported cnnjax or flax'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = np.load(tmp_path / "out.npy")
    expected = predictor.predict(images)
    np.testing.assert_allclose(out[:40], expected, atol=1e-5)
    np.testing.assert_allclose(out[40:], expected[:3], atol=1e-5)  # the batch dimension is symbolic


def test_onnx_export_agrees_with_predict_under_onnxruntime(trained, tmp_path):
    import onnxruntime

    run, _, folder = trained
    predictor = cnnjax.load(run)
    assert predictor.export(tmp_path, onnx=True)["files"] == ["model.jax", "model.onnx"]
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    images = np.stack([np.asarray(Image.open(f))[..., None] for f in sorted((folder / "test").rglob("*.png"))])
    for batch in (images, images[:1]):
        (probabilities,) = session.run(["probabilities"], {"images": batch})
        np.testing.assert_allclose(probabilities, predictor.predict(batch), atol=1e-4)


def test_conv_lowering_block_makes_programs_portable():
    x, kernel = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    with F.conv_lowering("xla"):
        portable = jax.jit(lambda x, k: F.conv2d(x, k)).lower(x, kernel).as_text()
    assert "custom_call" not in portable and "convolution" in portable
    if F.default_conv_lowering(kernel.shape) == "onednn":
        assert "custom_call" in jax.jit(lambda x, k: F.conv2d(x, k)).lower(x, kernel).as_text()
    with pytest.raises(ValueError, match="conv_lowering: lowering must be one of"):
        with F.conv_lowering("fast"):
            pass


def test_launch_predict_and_export(trained, tmp_path):
    run, _, folder = trained
    result = subprocess.run(
        [sys.executable, "launch.py", f"--workdir={run}", f"--predict={folder / 'test' / 'class_1'}",
         f"--predict={folder}/test/class_3/0000*.png", f"--predict_out={tmp_path}", f"--export={tmp_path / 'x'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(folder))]
    assert len(lines) == 12 and all("%" in line for line in lines)  # 10 of class_1, 00003 and 00007 of class_3
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert [r["path"] for r in rows] == [line.split(": ")[0] for line in lines]
    assert all(len(r["top5"].split()) == 4 and r["top5"].startswith(r["class"]) for r in rows)
    assert (tmp_path / "x" / "model.jax").stat().st_size > 0 and "exported" in result.stdout


def test_bad_uses_of_a_run_are_one_line_errors(trained, tmp_path):
    run, config, _ = trained
    with pytest.raises(ValueError, match=r"--predict=.*nothing\*.png names no image file"):
        inference.expand_paths([str(tmp_path / "nothing*.png")])
    with pytest.raises(ValueError, match="is not a run directory"):
        cnnjax.load(tmp_path)
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "inference.json").unlink()
    with pytest.raises(ValueError, match="has no inference.json: the run was written before .* writes the file"):
        cnnjax.load(old)
    train.train_and_evaluate(config, old)  # finished: nothing trains again, but the card is written
    assert cnnjax.load(old).class_names == cnnjax.load(run).class_names
    shutil.rmtree(old / "checkpoints")
    with pytest.raises(ValueError, match="holds no finished checkpoint"):
        cnnjax.load(old)
    wrong = folder_config(Path(config.data.data_dir), Path(config.data.tfds_dir), 10)
    with pytest.raises(ValueError, match="outputs 10 classes but the dataset has 4; set --config.model.num_classes=4"):
        train.train_and_evaluate(wrong, tmp_path / "wrong")  # after scanning the folder, before compiling
    splits = data.load_splits(config.data)
    config.data.test_time_shift = 1
    with pytest.raises(ValueError, match="describes another model than this config and data .*test_time_views"):
        run_card.write_or_check(old, config, splits)


# ----------------------------------------------------------------------------------------------------------------------
# Warm starts and frozen parameters
# ----------------------------------------------------------------------------------------------------------------------


def fashion_images(n: int, classes) -> tuple[np.ndarray, np.ndarray]:
    """n training images of the given classes from Debian's Fashion-MNIST, or learnable generated ones."""
    if DEBIAN.is_dir():
        images, labels = sources.read_idx_split(*sources.find_idx_files(DEBIAN, "train"))
    else:
        labels = np.arange(10 * n) % 10
        images = fakes.learnable_images(labels, (28, 28, 1), np.random.default_rng(0))
    keep = np.flatnonzero(np.isin(labels, classes))[:n]
    return images[keep], labels[keep]


@pytest.fixture(scope="module")
def donor(tmp_path_factory):
    """A lenet pretrained on Fashion-MNIST classes 0-4: (run directory, folder, cache)."""
    base = tmp_path_factory.mktemp("donor")
    images, labels = fashion_images(1000, [0, 1, 2, 3, 4])
    fakes.make_image_folder(base / "folder", images, labels, [f"c{c}" for c in range(10)])
    config = folder_config(base / "folder", base / "cache", 5, num_epochs=3)
    with jax.numpy_dtype_promotion("standard"):
        train.train_and_evaluate(config, base / "run")
    return base / "run", base / "folder", base / "cache"


def test_fine_tuning_on_new_classes_with_frozen_convolutions(donor, tmp_path):
    run, _, cache = donor
    images, labels = fashion_images(1000, [5, 6, 7, 8, 9])
    fakes.make_image_folder(tmp_path / "folder", images, labels, [f"c{c}" for c in range(10)])
    config = folder_config(tmp_path / "folder", cache, 5, init_from=str(run), freeze="conv", num_epochs=3)
    results = train.train_and_evaluate(config, tmp_path / "run")
    assert results["warm_start"]["loaded"] == 10 and results["warm_start"]["reinitialized"] == []
    assert results["trainable_params"] == results["params"] - (156 + 2416)  # conv1 and conv2 fixed
    assert results["test_accuracy"] > 0.6  # 5 classes: chance is 0.2
    donor_params, _, _ = checkpoint.read_variables(run)
    tuned_params, _, _ = checkpoint.read_variables(tmp_path / "run", "last")
    for layer in ("conv1", "conv2"):
        for name in ("kernel", "bias"):
            np.testing.assert_array_equal(tuned_params[layer][name], donor_params[layer][name])
    assert not np.array_equal(tuned_params["fc1"]["kernel"], donor_params["fc1"]["kernel"])
    assert cnnjax.load(tmp_path / "run").class_names == tuple(f"c{c}" for c in range(5, 10))


def test_a_warm_start_on_the_same_data_starts_at_the_donors_accuracy(donor, tmp_path):
    run, folder, cache = donor
    config = folder_config(folder, cache, 5, init_from=str(run), num_epochs=1)
    train.train_and_evaluate(config, tmp_path / "run")
    start = next(r for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if r["kind"] == "warm_start")
    donor_results = json.loads((run / "results.json").read_text())
    assert start["step"] == 0 and start["val_accuracy"] == donor_results["val_accuracy"] > 0.6


def test_warm_start_reinitializes_what_does_not_fit_and_freeze_is_validated(donor):
    run, _, _ = donor
    model = models.get("lenet", num_classes=3)
    optimizer = optim.make_optimizer(base_config().optim, 10, 1)
    state, _ = train.run_state(base_config(), model, optimizer, (28, 28, 1))
    warm, report = train.warm_start(state, str(run / "checkpoints" / "best"))
    assert report["loaded"] == 8 and len(report["reinitialized"]) == 2
    assert report["reinitialized"][0] == "logits/bias: (3,) here, (5,) in the donor"
    np.testing.assert_array_equal(warm["params"]["logits"]["kernel"], state["params"]["logits"]["kernel"])
    donor_params, _, _ = checkpoint.read_variables(run)
    np.testing.assert_array_equal(warm["params"]["fc2"]["kernel"], donor_params["fc2"]["kernel"])
    with pytest.raises(ValueError, match=r"train.freeze='deconv' matches no parameter; .* conv1/bias, conv1/kernel"):
        train.trainable_params(state["params"], "deconv")
    with pytest.raises(ValueError, match="holds no finished checkpoint"):
        train.warm_start(state, str(run.parent))
