"""The training recipe's options: Mixup/CutMix, the weights' moving average, gradient accumulation, and their
agreement between solo runs and vectorized sweep groups."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cnnjax
from cnnjax import data, metrics, models, optim, sweep, train
from cnnjax.config import base_config
from tests.fakes import final_state, small_config

pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


def images_and_labels(n: int = 8):
    images = jnp.asarray(np.random.default_rng(0).standard_normal((n, 28, 28, 1)), jnp.float32)
    return images, jnp.arange(n, dtype=jnp.int32) % 10


def test_mixup_and_cutmix_follow_timms_batch_mode():
    images, _ = images_and_labels()
    key = jax.random.key(3)
    mixed, lam = data.mix(key, images, data.Mixing(mixup_alpha=0.4))
    assert 0 < float(lam) < 1
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], rtol=1e-6)
    cut, lam = data.mix(key, images, data.Mixing(cutmix_alpha=1.0))
    from_partner = np.asarray(cut != images).any(axis=(0, 3))  # the pasted box, the same for every example
    assert from_partner.mean() == pytest.approx(1 - float(lam)) and 0 < float(lam) < 1
    np.testing.assert_array_equal(np.asarray(cut)[:, from_partner], np.asarray(images[::-1])[:, from_partner])
    unmixed, lam = data.mix(key, images, data.Mixing(mixup_alpha=0.4, prob=0.0))
    assert float(lam) == 1.0 and np.array_equal(unmixed, images)


def test_mixing_trains_on_soft_targets_with_smoothed_labels():
    model = models.get("lenet")
    optimizer = optim.make_optimizer(base_config().optim, steps_per_epoch=1, num_epochs=1)
    images, labels = images_and_labels()
    key = jax.random.key(0)
    state = train.init_state(model, optimizer, (28, 28, 1), key)
    mixing = data.Mixing(mixup_alpha=0.4)
    step = train.train_step_fn(model, optimizer, "cross_entropy", lambda k, x: x, label_smoothing=0.1, mixing=mixing)
    step_key = jax.random.fold_in(key, 0)
    mixed, lam = data.mix(jax.random.fold_in(step_key, 2), images, mixing)
    logits = model.apply({"params": state["params"]}, mixed)
    target = optax.smooth_labels(jax.nn.one_hot(labels, 10), 0.1)
    expected = jnp.mean(optax.softmax_cross_entropy(logits, lam * target + (1 - lam) * target[::-1]))
    loss = step(state, images, labels, jnp.arange(8), key)[1]["loss"]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_k_accumulated_micro_batches_equal_one_step_over_the_whole_batch():
    model = models.get("lenet")  # no batch norm, no dropout
    optimizer = optim.make_optimizer(base_config().optim, steps_per_epoch=1, num_epochs=1)
    images, labels = images_and_labels(16)
    state = train.init_state(model, optimizer, (28, 28, 1), jax.random.key(0))
    batch = (images, labels, jnp.arange(16), jax.random.key(1))
    whole, whole_metrics = train.train_step_fn(model, optimizer, "cross_entropy", lambda k, x: x)(state, *batch)
    four, four_metrics = train.train_step_fn(model, optimizer, "cross_entropy", lambda k, x: x,
                                             grad_accum_steps=4)(state, *batch)  # fmt: skip
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                           whole["params"], four["params"])  # fmt: skip
    np.testing.assert_allclose(whole_metrics["loss"], four_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(whole_metrics["grad_norm"], four_metrics["grad_norm"], rtol=1e-5)


def test_the_moving_average_is_validated_tested_checkpointed_and_predicted_with(tmp_path):
    config = small_config(tmp_path)
    config.train.ema_decay = 0.9
    results = train.train_and_evaluate(config, tmp_path / "run")
    epochs = [r for r in metrics.read_records(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert all("val_accuracy_raw" in r and "val_loss_raw" in r for r in epochs)  # logged both ways
    assert any(r["val_loss"] != r["val_loss_raw"] for r in epochs)
    step, state, _ = final_state(tmp_path / "run")
    assert set(state["ema"]) == {"params", "model_state"}
    assert not np.array_equal(state["ema"]["params"]["conv1"]["kernel"], state["params"]["conv1"]["kernel"])
    images, labels = data.load("mnist", "test", data_dir=config.data.data_dir, tfds_dir=config.data.tfds_dir)
    predicted = cnnjax.load(tmp_path / "run").predict(images).argmax(axis=1)
    assert np.mean(predicted == labels) == pytest.approx(results["test_accuracy"], abs=1e-6)  # the EMA was tested


def test_lookahead_synchronizes_and_its_slow_weights_are_evaluated(tmp_path):
    config = small_config(tmp_path)
    config.optim.lookahead, config.optim.lookahead_alpha = 4, 0.5
    results = train.train_and_evaluate(config, tmp_path / "run")
    step, state, _ = final_state(tmp_path / "run")
    assert step == 18 and int(state["opt_state"]["steps_since_sync"]) == 18 % 4
    assert not np.array_equal(state["slow"]["conv1"]["kernel"], state["params"]["conv1"]["kernel"])
    images, labels = data.load("mnist", "test", data_dir=config.data.data_dir, tfds_dir=config.data.tfds_dir)
    predicted = cnnjax.load(tmp_path / "run").predict(images).argmax(axis=1)
    assert np.mean(predicted == labels) == pytest.approx(results["test_accuracy"], abs=1e-6)
    model = models.get("lenet")
    optimizer = optim.make_optimizer(config.optim, steps_per_epoch=6, num_epochs=3)
    state = train.run_state(config, model, optimizer, (28, 28, 1))[0]
    step = train.train_step_fn(model, optimizer, "cross_entropy", lambda k, x: x)
    images, labels = images_and_labels()
    for i in range(4):
        state, _ = step(state, images, labels, jnp.arange(8), jax.random.key(i))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-8),
                           state["params"], state["slow"])  # synchronized (to the rounding of fast + update)  # fmt: skip


RECIPE = {"train.ema_decay": 0.8, "train.grad_accum_steps": 2, "data.mixup_alpha": 0.3, "data.cutmix_alpha": 1.0,
          "optim.schedule": "plateau", "optim.plateau_patience": 1, "optim.lookahead": 4,
          "data.randaugment": "rand-m9-n2", "data.random_erasing": 0.25, "data.random_scale": (0.9, 1.1),
          "data.color_jitter": 0.2}  # fmt: skip


def test_recipe_options_give_vectorized_members_their_solo_results(tmp_path):
    base = sweep.trial_config(small_config(tmp_path, num_epochs=3), RECIPE)
    points = sweep.grid(**{"optim.learning_rate": [1e-3, 3e-3]})
    solo = {r["trial"]: r for r in sweep.run_sweep(base, points, tmp_path / "solo", executor="sequential")}
    vectorized = sweep.run_sweep(base, points, tmp_path / "vectorized", executor="vectorized")
    for row in vectorized:
        assert (
            row["status"] == "done"
            and json.loads((tmp_path / "vectorized" / row["trial"] / "results.json").read_text())["executor"]
            == "vectorized"
        )
        assert row["val_accuracy"] == pytest.approx(solo[row["trial"]]["val_accuracy"], abs=1e-6)
        assert row["test_accuracy"] == pytest.approx(solo[row["trial"]]["test_accuracy"], abs=1e-6)
        for executor in ("solo", "vectorized"):
            records = metrics.read_records(tmp_path / executor / row["trial"] / "metrics.jsonl")
            row.setdefault("losses", []).append([r["train_loss"] for r in records if r["kind"] == "epoch"])
        np.testing.assert_allclose(*row["losses"], rtol=1e-4)


def test_recipe_options_resume_bitwise(tmp_path):
    config = sweep.trial_config(small_config(tmp_path), RECIPE)
    train.train_and_evaluate(config, tmp_path / "whole")
    config.train.max_steps = 9  # stop mid-run (mid-epoch), then resume to the end
    train.train_and_evaluate(config, tmp_path / "resumed")
    config.train.max_steps = 0
    train.train_and_evaluate(config, tmp_path / "resumed")
    whole, resumed = final_state(tmp_path / "whole"), final_state(tmp_path / "resumed")
    assert whole[0] == resumed[0] and "ema" in whole[1] and "plateau" in whole[1]
    jax.tree_util.tree_map(np.testing.assert_array_equal, whole[1], resumed[1])


@pytest.mark.parametrize("channels", [1, 3])
def test_every_policy_op_keeps_the_shape_and_the_unit_range(channels):
    from cnnjax.data import policies

    image = jax.random.uniform(jax.random.key(0), (12, 12, channels))
    for name, op in policies.OPS.items():
        out = jax.jit(lambda k, x, op=op: jnp.clip(op(k, x, 0.7), 0, 1))(jax.random.key(1), image)
        assert out.shape == image.shape and float(out.min()) >= 0 and float(out.max()) <= 1, name
    np.testing.assert_allclose(policies.OPS["Invert"](None, image, 0.5), 1 - image)
    posterized = np.asarray(policies.OPS["Posterize"](None, image, 1.0)) * 255  # 4 bits: multiples of 16
    np.testing.assert_allclose(posterized % 16, 0, atol=1e-3)
    equalized = policies.OPS["Equalize"](None, image, 1.0)
    assert float(equalized.max()) == 1.0 and float(equalized.min()) == 0.0
    zoomed = policies.random_scale(jax.random.key(2), jnp.ones((12, 12, channels)), (0.5, 0.5))  # zoomed out
    assert float(zoomed[0, 0].max()) == 0.0 and float(zoomed[6, 6].min()) == 1.0  # black border, the centre kept
    np.testing.assert_allclose(policies.color_jitter(jax.random.key(3), image, 0.0), image, atol=1e-6)


def test_policies_map_standardized_images_to_the_unit_range_and_back():
    from cnnjax.data import policies

    scale, shift = jnp.array([1 / 255 / 0.3]), jnp.array([-0.5 / 0.3])  # mean 0.5, std 0.3
    unit = jax.random.uniform(jax.random.key(0), (4, 10, 10, 1))
    standardized = unit * 255 * scale.reshape(1, 1, 1, 1) + shift.reshape(1, 1, 1, 1)
    same = policies.apply_policies(jax.random.key(1), standardized, data.Policies(color_jitter=1e-7), scale, shift)
    np.testing.assert_allclose(same, standardized, atol=1e-4)
    erased = policies.apply_policies(jax.random.key(1), standardized,
                                     data.Policies(random_erasing=1.0, random_erasing_area=(0.25, 0.25)))  # fmt: skip
    share = np.mean(np.asarray(erased != standardized), axis=(1, 2, 3))
    assert np.all((share > 0.1) & (share < 0.45))  # a quarter of each image, to the rounding of its sides
    trivial = policies.apply_policies(jax.random.key(2), standardized, data.Policies(trivialaugment=True), scale, shift)
    assert trivial.shape == standardized.shape and np.isfinite(np.asarray(trivial)).all()
    assert policies.parse_randaugment("rand-m9-n2-mstd0.5") == (0.9, 2, 0.05)
    with pytest.raises(ValueError, match="data.randaugment='rand-m11-n2' is invalid"):
        policies.parse_randaugment("rand-m11-n2")


def test_randaugment_trains_an_rgb_model(tmp_path):
    config = small_config(tmp_path, "cifar_cnn", num_epochs=1)
    config.data.randaugment, config.data.random_erasing, config.data.color_jitter = "rand-m9-n2", 0.5, 0.3
    results = train.train_and_evaluate(config, tmp_path / "run")
    assert results["status"] == "done" and np.isfinite(results["test_loss"])


def test_the_suggested_rate_is_the_steepest_descent_before_the_minimum():
    from cnnjax import lr_find

    rates = np.geomspace(1e-5, 1, 11)
    losses = np.array([2.3, 2.3, 2.29, 2.2, 1.6, 0.9, 0.7, 0.65, 0.9, 3.0, np.inf])
    assert lr_find.suggestion(rates, losses) == pytest.approx(rates[4])
    assert lr_find.suggestion(rates[:2], losses[:2]) is None


@pytest.mark.parametrize("way", ["sequential", "vectorized"])
def test_the_range_test_draws_the_loss_against_the_rate_and_suggests_one(tmp_path, way):
    from cnnjax import lr_find

    config = small_config(tmp_path)
    result = lr_find.lr_find(config, tmp_path / "find", way=way, min_lr=1e-5, max_lr=10.0)
    assert result["way"] == way and (tmp_path / "find" / "lr_find.png").stat().st_size > 10_000
    rates = np.array(result["rates"])
    assert np.all(np.diff(rates) > 0) and rates[0] == pytest.approx(1e-5)
    if way == "vectorized":
        assert len(rates) == 16
    else:  # 6 steps per epoch: the 20-step minimum, cut where the smoothed loss passed four times its best
        assert 3 <= len(rates) <= 20 and rates[-1] < 10.0 and max(result["losses"]) > 4 * min(result["losses"])
    assert 1e-5 <= result["suggested_learning_rate"] <= 10.0
    saved = json.loads((tmp_path / "find" / "lr_find.json").read_text())
    assert saved["suggested_learning_rate"] == result["suggested_learning_rate"]
    if way == "vectorized":  # at rate 10 Adam does not train this model: the largest rates end worse than the best
        losses = np.array([np.inf if v is None else v for v in result["losses"]])
        assert losses[-1] > np.min(losses)
