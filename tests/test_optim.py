"""cnnjax.optim: the optimizer factory against Optax applied by hand, coupled L2, schedules, injected
hyperparameters, frozen parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import optim
from cnnjax.config import base_config

pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


PARAMS = {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.array([0.1, -0.2])}
GRADS = [
    {"kernel": jnp.array([[0.3, -0.1], [0.2, 0.4]]) * (i + 1), "bias": jnp.array([0.05, -0.5]) * (i + 1)}
    for i in range(4)
]


def run_optimizer(optimizer):
    params, state = PARAMS, optimizer.init(PARAMS)
    for grads in GRADS:
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def optim_config(**overrides):
    c = base_config().optim
    for key, value in overrides.items():
        c[key] = value
    return c


@pytest.mark.parametrize(
    "overrides,reference",
    [
        (dict(name="sgd", learning_rate=0.1), optax.sgd(0.1)),
        (dict(name="momentum", learning_rate=0.1, momentum=0.8), optax.sgd(0.1, momentum=0.8)),
        (dict(name="nesterov", learning_rate=0.1, momentum=0.8), optax.sgd(0.1, momentum=0.8, nesterov=True)),
        (dict(name="momentum", nesterov=True, learning_rate=0.1), optax.sgd(0.1, momentum=0.9, nesterov=True)),
        (dict(name="adam", learning_rate=0.01), optax.adam(0.01)),
        (dict(name="adamw", learning_rate=0.01, weight_decay=0.1),
         optax.adamw(0.01, weight_decay=0.1, mask=optim.kernels_mask)),
        (dict(name="rmsprop", learning_rate=0.01), optax.rmsprop(0.01, decay=0.9, eps=1e-8)),
        (dict(name="sgd", learning_rate=0.1, l2=0.5),
         optax.chain(optax.add_decayed_weights(0.5, optim.kernels_mask), optax.sgd(0.1))),
        (dict(name="sgd", learning_rate=0.1, clip_norm=0.2),
         optax.chain(optax.clip_by_global_norm(0.2), optax.sgd(0.1))),
    ],
)  # fmt: skip
def test_optimizer_factory_matches_optax_by_hand(overrides, reference):
    ours = run_optimizer(optim.make_optimizer(optim_config(**overrides), steps_per_epoch=10, num_epochs=1))
    theirs = run_optimizer(reference)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)


def test_coupled_l2_equals_adding_the_penalty_to_the_loss():
    c = optim_config(name="sgd", learning_rate=0.1, l2=0.5)
    updates, _ = optim.make_optimizer(c, 10, 1).update(GRADS[0], optim.make_optimizer(c, 10, 1).init(PARAMS), PARAMS)
    penalty_grads = jax.grad(lambda p: 0.5 * 0.5 * jnp.sum(jnp.square(p["kernel"])))(PARAMS)
    expected = jax.tree_util.tree_map(lambda g, h: -0.1 * (g + h), GRADS[0], penalty_grads)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, expected)


def test_schedules_with_warmup():
    def lr(**overrides):
        return optim.learning_rate_schedule(
            optim_config(learning_rate=1.0, **overrides), steps_per_epoch=10, num_epochs=10
        )

    assert float(lr()(57)) == 1.0
    warm = lr(warmup_epochs=1.0)
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(0.5) and float(warm(10)) == pytest.approx(1.0)
    step = lr(schedule="step", decay_epochs=3.0, decay_rate=0.1)
    assert float(step(29)) == pytest.approx(1.0) and float(step(30)) == pytest.approx(0.1)
    assert float(lr(schedule="exponential", decay_epochs=1.0, decay_rate=0.5)(15)) == pytest.approx(0.5**1.5)
    cosine = lr(schedule="cosine", warmup_epochs=2.0)
    assert float(cosine(20)) == pytest.approx(1.0) and float(cosine(100)) == pytest.approx(0.0, abs=1e-7)
    restarts = lr(schedule="cosine_restarts", restart_epochs=4.0)  # periods of 40 steps
    assert float(restarts(20)) == pytest.approx(0.5) and float(restarts(39)) < 0.01 and float(restarts(40)) == 1.0
    assert float(restarts(80)) == 1.0 and float(restarts(100)) == pytest.approx(
        0.5
    )  # the last period runs past the end
    linear = lr(schedule="polynomial")
    assert float(linear(25)) == pytest.approx(0.75) and float(linear(100)) == 0.0
    assert float(lr(schedule="polynomial", poly_power=2.0)(50)) == pytest.approx(0.25)
    onecycle = lr(schedule="onecycle", onecycle_pct_start=0.25)
    assert float(onecycle(0)) == pytest.approx(1 / 25) and float(onecycle(25)) == pytest.approx(1.0)
    assert float(onecycle(100)) < 1e-4 and float(onecycle(10)) < float(onecycle(20)) < 1.0
    assert float(lr(schedule="plateau")(99)) == 1.0  # the plateau's scale lives in the training state
    with pytest.raises(ValueError, match="warmup_epochs=1.0 is invalid: must be 0 with schedule='onecycle'"):
        optim.validate(optim_config(schedule="onecycle", warmup_epochs=1.0))


def test_plateau_lowers_the_rate_when_the_validation_loss_stalls(tmp_path):
    from cnnjax import metrics, train
    from tests.fakes import small_config

    config = small_config(tmp_path, num_epochs=4)
    config.optim.schedule, config.optim.plateau_patience, config.optim.plateau_factor = "plateau", 1, 0.5
    config.optim.learning_rate = 1e-9  # the validation loss cannot improve by optax's rtol: each validation stalls
    with jax.numpy_dtype_promotion("standard"):
        train.train_and_evaluate(config, tmp_path / "run")
    rates = [
        r["learning_rate"] for r in metrics.read_records(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "epoch"
    ]
    assert rates == pytest.approx([1e-9, 1e-9, 5e-10, 2.5e-10])  # the first validation sets the best, then it halves


def test_learning_rate_lives_in_the_optimizer_state():
    optimizer = optim.make_optimizer(optim_config(learning_rate=0.25, schedule="cosine"), 10, 1)
    state = optimizer.init(PARAMS)
    _, state = optimizer.update(GRADS[0], state, PARAMS)
    assert float(optim.current_learning_rate(state)) == pytest.approx(0.25)  # the rate step 0 used
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.25)  # the peak, in the state
    _, state = optimizer.update(GRADS[1], state, PARAMS)
    assert float(optim.current_learning_rate(state)) == pytest.approx(0.25 * 0.5 * (1 + np.cos(np.pi / 10)))


def test_frozen_parameters_get_zero_updates_whatever_the_decay():
    optimizer = optim.make_optimizer(optim_config(name="adamw", weight_decay=0.1, l2=0.01), 10, 1, freeze="^kernel$")
    params = run_optimizer(optimizer)
    np.testing.assert_array_equal(params["kernel"], PARAMS["kernel"])
    assert not np.array_equal(params["bias"], PARAMS["bias"])
    assert float(optim.current_learning_rate(optimizer.init(PARAMS))) == 0.0  # found behind the freezing mask
