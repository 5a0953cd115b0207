"""Optimizers from the ``optim`` config section, as Optax chains.

``[clip by global norm] -> [coupled L2] -> core (sgd / momentum / adam / rmsprop) -> [decoupled weight decay] ->
scale by -learning_rate``, wrapped in ``optax.inject_hyperparams`` so the learning rate lives in the optimizer state:
it is logged, and a sweep can vary (or vmap) it without recompiling. Weight decay and L2 apply to kernels (arrays of
rank >= 2), not to biases or normalization scales.
"""

from __future__ import annotations

import jax
import optax

# name -> core transformation from the optim config; sgd has none, nesterov forces Nesterov momentum.
CORES = {
    "sgd": lambda c: optax.identity(),
    "momentum": lambda c: optax.trace(decay=c.momentum, nesterov=c.nesterov),
    "nesterov": lambda c: optax.trace(decay=c.momentum, nesterov=True),
    "adam": lambda c: optax.scale_by_adam(b1=c.beta1, b2=c.beta2, eps=c.eps),
    "adamw": lambda c: optax.scale_by_adam(b1=c.beta1, b2=c.beta2, eps=c.eps),
    "rmsprop": lambda c: optax.scale_by_rms(decay=c.rms_decay, eps=c.eps),
}
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


def learning_rate_schedule(c, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
    """The learning rate per step: linear warmup over ``warmup_epochs``, then constant / step / exponential / cosine."""
    warmup = int(round(c.warmup_epochs * steps_per_epoch))
    decay_steps = max(int(round(c.decay_epochs * steps_per_epoch)), 1)
    after_warmup = max(num_epochs * steps_per_epoch - warmup, 1)
    schedules = {
        "constant": lambda: optax.constant_schedule(c.learning_rate),
        "step": lambda: optax.exponential_decay(c.learning_rate, decay_steps, c.decay_rate, staircase=True),
        "exponential": lambda: optax.exponential_decay(c.learning_rate, decay_steps, c.decay_rate),
        "cosine": lambda: optax.cosine_decay_schedule(c.learning_rate, after_warmup),
    }
    schedule = schedules[c.schedule]()
    if warmup == 0:
        return schedule
    return optax.join_schedules([optax.linear_schedule(0.0, c.learning_rate, warmup), schedule], [warmup])


def make_optimizer(c, steps_per_epoch: int, num_epochs: int) -> optax.GradientTransformation:
    """The optimizer the optim section ``c`` describes; its state holds ``hyperparams['learning_rate']``."""
    validate(c)

    def chain(learning_rate):
        parts = []
        if c.clip_norm > 0:
            parts.append(optax.clip_by_global_norm(c.clip_norm))
        if c.l2 > 0:
            parts.append(optax.add_decayed_weights(c.l2, kernels_mask))
        parts.append(CORES[c.name](c))
        if c.weight_decay > 0:
            parts.append(optax.add_decayed_weights(c.weight_decay, kernels_mask))
        parts.append(optax.scale_by_learning_rate(learning_rate))
        return optax.chain(*parts)

    return optax.inject_hyperparams(chain)(learning_rate=learning_rate_schedule(c, steps_per_epoch, num_epochs))


def current_learning_rate(opt_state):
    """The learning rate the last update used (``inject_hyperparams`` stores the value it computed for it)."""
    return opt_state.hyperparams["learning_rate"]
