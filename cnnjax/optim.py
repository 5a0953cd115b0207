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


SCHEDULES = ("constant", "step", "exponential", "cosine")


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


def learning_rate_schedule(c, steps_per_epoch: int, num_epochs: int, peak: float | None = None) -> optax.Schedule:
    """The learning rate per step: linear warmup over ``warmup_epochs``, then constant / step / exponential / cosine,
    peaking at ``peak`` (default: ``c.learning_rate``)."""
    peak = c.learning_rate if peak is None else peak
    warmup = int(round(c.warmup_epochs * steps_per_epoch))
    decay_steps = max(int(round(c.decay_epochs * steps_per_epoch)), 1)
    after_warmup = max(num_epochs * steps_per_epoch - warmup, 1)
    schedules = {
        "constant": lambda: optax.constant_schedule(peak),
        "step": lambda: optax.exponential_decay(peak, decay_steps, c.decay_rate, staircase=True),
        "exponential": lambda: optax.exponential_decay(peak, decay_steps, c.decay_rate),
        "cosine": lambda: optax.cosine_decay_schedule(peak, after_warmup),
    }
    schedule = schedules[c.schedule]()
    if warmup == 0:
        return schedule
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), schedule], [warmup])


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
    on them, after weight decay), so they stay exactly as they started."""
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

    return optax.inject_hyperparams(chain)(**{name: c[name] for name in INJECTED})


def with_hyperparams(opt_state, **values):
    """``opt_state`` with some ``INJECTED`` hyperparameters replaced (e.g. each member of a vectorized sweep)."""
    return opt_state._replace(
        hyperparams={**opt_state.hyperparams, **{k: jnp.asarray(v, jnp.float32) for k, v in values.items()}}
    )


def current_learning_rate(opt_state):
    """The learning rate the last update used (learning_rate x schedule)."""
    return next(s for s in opt_state.inner_state if isinstance(s, ScheduledRateState)).learning_rate
