"""Optimizers from the ``optim`` config section, as Optax chains.

``[clip by global norm] -> coupled L2 -> core (sgd / momentum / adam / rmsprop) -> decoupled weight decay ->
scale by -(learning_rate x schedule)``, wrapped in ``optax.inject_hyperparams``: the numeric hyperparameters
``learning_rate``, ``momentum``, ``weight_decay`` and ``l2`` (``INJECTED``) live in the optimizer state, so trials
that differ only in them share one compiled step, and a sweep can stack (vmap) them. The schedule is a shape with
peak 1, scaled by the learning rate. Weight decay and L2 apply to kernels (rank >= 2), not to biases or scales.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# name -> core transformation from (optim config, momentum); sgd has none, nesterov forces Nesterov momentum.
CORES = {
    "sgd": lambda c, momentum: optax.identity(),
    "momentum": lambda c, momentum: optax.trace(decay=momentum, nesterov=c.nesterov),
    "nesterov": lambda c, momentum: optax.trace(decay=momentum, nesterov=True),
    "adam": lambda c, momentum: optax.scale_by_adam(b1=c.beta1, b2=c.beta2, eps=c.eps),
    "adamw": lambda c, momentum: optax.scale_by_adam(b1=c.beta1, b2=c.beta2, eps=c.eps),
    "rmsprop": lambda c, momentum: optax.scale_by_rms(decay=c.rms_decay, eps=c.eps),
}
INJECTED = ("learning_rate", "momentum", "weight_decay", "l2")


class ScheduledRateState(NamedTuple):
    count: jax.Array
    learning_rate: jax.Array  # the rate the last update used


def scale_by_scheduled_rate(learning_rate, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Scales updates by ``-learning_rate * schedule(step)`` and keeps the rate used in its state (for logging)."""

    def init(params):
        del params
        return ScheduledRateState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))

    def update(updates, state, params=None):
        del params
        rate = jnp.asarray(learning_rate, jnp.float32) * schedule(state.count)
        updates = jax.tree_util.tree_map(lambda u: (-rate).astype(u.dtype) * u, updates)
        return updates, ScheduledRateState(state.count + 1, rate)

    return optax.GradientTransformation(init, update)


SCHEDULES = ("constant", "step", "exponential", "cosine", "cosine_restarts", "polynomial", "onecycle", "plateau")


def kernels_mask(params):
    """True for the leaves weight decay and L2 act on: kernels (rank >= 2), not biases or scales."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def validate(c) -> None:
    """Rejects an optim section that cannot work, naming the key."""

    def check(condition, key, requirement):
        if not condition:
            raise ValueError(f"config.optim.{key}={c[key]!r} is invalid: {requirement}")

    check(c.name in CORES, "name", f"choose one of {', '.join(CORES)}")
    check(c.schedule in SCHEDULES, "schedule", f"choose one of {', '.join(SCHEDULES)}")
    check(c.learning_rate > 0, "learning_rate", "must be > 0")
    check(0 <= c.momentum < 1, "momentum", "must lie in [0, 1)")
    check(0 <= c.beta1 < 1, "beta1", "must lie in [0, 1)")
    check(0 <= c.beta2 < 1, "beta2", "must lie in [0, 1)")
    check(c.eps > 0, "eps", "must be > 0")
    check(0 <= c.rms_decay < 1, "rms_decay", "must lie in [0, 1)")
    check(c.weight_decay >= 0, "weight_decay", "must be >= 0")
    check(c.l2 >= 0, "l2", "must be >= 0")
    check(c.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
    check(0 < c.decay_rate <= 1, "decay_rate", "must lie in (0, 1]")
    check(c.decay_epochs > 0, "decay_epochs", "must be > 0")
    check(c.clip_norm >= 0, "clip_norm", "must be >= 0 (0 disables clipping)")
    check(0 < c.onecycle_pct_start < 1, "onecycle_pct_start", "must lie in (0, 1)")
    check(c.schedule != "onecycle" or c.warmup_epochs == 0, "warmup_epochs",
          "must be 0 with schedule='onecycle', whose first onecycle_pct_start of the run is its warmup")  # fmt: skip
    check(c.poly_power > 0, "poly_power", "must be > 0")
    check(c.restart_epochs > 0, "restart_epochs", "must be > 0")
    check(0 < c.plateau_factor < 1, "plateau_factor", "must lie in (0, 1)")
    check(c.plateau_patience >= 1, "plateau_patience", "must be >= 1 (validations without improvement)")
    check(c.lookahead >= 0, "lookahead", "must be >= 0 (steps between synchronizations; 0: off)")
    check(0 < c.lookahead_alpha <= 1, "lookahead_alpha", "must lie in (0, 1]")


def learning_rate_schedule(c, steps_per_epoch: int, num_epochs: int, peak: float | None = None) -> optax.Schedule:
    """The learning rate per step, peaking at ``peak`` (default: ``c.learning_rate``): linear warmup over
    ``warmup_epochs``, then constant, step, exponential, cosine, cosine with restarts every ``restart_epochs``
    (SGDR), polynomial decay to 0 (``poly_power``), or the one-cycle policy (``onecycle_pct_start``: its own warmup).
    'plateau' is constant here: the rate falls when validation stalls (:func:`plateau`)."""
    peak = c.learning_rate if peak is None else peak
    warmup = int(round(c.warmup_epochs * steps_per_epoch))
    decay_steps = max(int(round(c.decay_epochs * steps_per_epoch)), 1)
    after_warmup = max(num_epochs * steps_per_epoch - warmup, 1)
    period = max(int(round(c.restart_epochs * steps_per_epoch)), 1)
    schedules = {
        "constant": lambda: optax.constant_schedule(peak),
        "plateau": lambda: optax.constant_schedule(peak),
        "step": lambda: optax.exponential_decay(peak, decay_steps, c.decay_rate, staircase=True),
        "exponential": lambda: optax.exponential_decay(peak, decay_steps, c.decay_rate),
        "cosine": lambda: optax.cosine_decay_schedule(peak, after_warmup),
        "cosine_restarts": lambda: optax.sgdr_schedule(
            [{"init_value": peak, "peak_value": peak, "warmup_steps": 0, "decay_steps": period, "end_value": 0.0}]
            * -(-after_warmup // period)
        ),
        "polynomial": lambda: optax.polynomial_schedule(peak, 0.0, c.poly_power, after_warmup),
        "onecycle": lambda: optax.cosine_onecycle_schedule(after_warmup, peak, c.onecycle_pct_start),
    }
    schedule = schedules[c.schedule]()
    if warmup == 0:
        return schedule
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), schedule], [warmup])


def plateau(c) -> optax.GradientTransformationExtraArgs:
    """``schedule='plateau'``: ``optax.contrib.reduce_on_plateau`` driven by the validation loss (one value per
    validation), whose ``scale`` multiplies the updates; the training loop keeps its state as ``state['plateau']``."""
    return optax.contrib.reduce_on_plateau(factor=c.plateau_factor, patience=c.plateau_patience)


def plateau_update(c, plateau_state, val_loss):
    """The plateau state after one validation loss (jittable and vmappable)."""
    return plateau(c).update({}, plateau_state, value=val_loss)[1]


def parameter_path(path) -> str:
    """A parameter's pytree path as the name users see and ``train.freeze`` matches: 'conv1/kernel'."""
    return "/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)


def frozen_mask(pattern: str):
    """params -> a tree of bools, True where the parameter's path (:func:`parameter_path`) matches the regex
    ``pattern`` anywhere (``re.search``)."""
    regex = re.compile(pattern)
    return lambda params: jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.search(parameter_path(p))), params)


def make_optimizer(c, steps_per_epoch: int, num_epochs: int, freeze: str = "") -> optax.GradientTransformation:
    """The optimizer the optim section ``c`` describes; ``INJECTED`` hyperparameters live in its state. ``freeze``:
    a regex (``train.freeze``); the updates of the parameters whose paths match are zero (``optax.set_to_zero``
    on them, after weight decay), so they stay exactly as they started. With ``c.lookahead`` > 0 the chain is the
    fast optimizer of ``optax.lookahead`` (sync every ``lookahead`` steps, slow step ``lookahead_alpha``), which
    updates ``optax.LookaheadParams``: the training loop keeps the slow weights as ``state['slow']``."""
    validate(c)
    shape = learning_rate_schedule(c, steps_per_epoch, num_epochs, peak=1.0)

    def chain(learning_rate, momentum, weight_decay, l2):
        clip = [optax.clip_by_global_norm(c.clip_norm)] if c.clip_norm > 0 else []
        frozen = [optax.masked(optax.set_to_zero(), frozen_mask(freeze))] if freeze else []
        return optax.chain(
            *clip,
            optax.add_decayed_weights(l2, kernels_mask),
            CORES[c.name](c, momentum),
            optax.add_decayed_weights(weight_decay, kernels_mask),
            scale_by_scheduled_rate(learning_rate, shape),
            *frozen,
        )

    injected = optax.inject_hyperparams(chain)(**{name: c[name] for name in INJECTED})
    if not c.lookahead:
        return injected
    lookahead = optax.lookahead(injected, c.lookahead, c.lookahead_alpha)
    init = lambda params: lookahead.init(optax.LookaheadParams.init_synced(params))  # noqa: E731 - plain params in
    return optax.GradientTransformation(init, lookahead.update)


def _injected(opt_state):
    """The ``inject_hyperparams`` state inside ``opt_state`` (under lookahead's, where there is one)."""
    return opt_state.fast_state if isinstance(opt_state, optax.LookaheadState) else opt_state


def with_hyperparams(opt_state, **values):
    """``opt_state`` with some ``INJECTED`` hyperparameters replaced (e.g. each member of a vectorized sweep)."""
    inner = _injected(opt_state)
    inner = inner._replace(
        hyperparams={**inner.hyperparams, **{k: jnp.asarray(v, jnp.float32) for k, v in values.items()}}
    )
    return opt_state._replace(fast_state=inner) if isinstance(opt_state, optax.LookaheadState) else inner


def current_learning_rate(opt_state):
    """The learning rate the last update used (learning_rate x schedule)."""
    return next(s for s in _injected(opt_state).inner_state if isinstance(s, ScheduledRateState)).learning_rate
