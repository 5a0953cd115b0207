"""The learning-rate range test (Smith, 2017; Lightning's ``lr_find``): ``launch.py --experiment=NAME --lr_find``.

Two ways, the same answer to look for: the loss against the learning rate, and a suggested rate where the loss
falls fastest before its minimum.

- ``sequential``: one run whose rate grows exponentially from ``min_lr`` to ``max_lr`` over a fraction of an epoch,
  one step per rate; the loss is smoothed (exponential average, 0.98) and the test stops once it exceeds four times
  its best. This is Lightning's and fastai's test.
- ``vectorized``: every candidate rate trains from the same initialization for the same few steps, all at once as
  one vmapped group (the sweep executor's machinery, rates as values in the stacked optimizer states); each rate's
  loss is its mean over the last half of the steps. Each point is then a short training run at that rate, not one
  step of a drifting run. It is chosen where a vectorized group is faster than trials in turn (accelerators; the
  CPU at batches up to ``sweep.CPU_VECTORIZED_MAX_BATCH``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import backend, data, metrics, optim, plots, sweep, train


def suggestion(rates: np.ndarray, losses: np.ndarray) -> float | None:
    """The rate of the steepest descent of ``losses`` before their minimum (Lightning's rule), or None when the
    curve has too few finite points to tell."""
    finite = np.isfinite(losses)
    rates, losses = rates[finite], losses[finite]
    if len(losses) < 3:
        return None
    lowest = int(np.argmin(losses))
    descent = np.gradient(losses[: lowest + 1]) if lowest >= 2 else np.gradient(losses)
    return float(rates[int(np.argmin(descent))])


def _finder_config(config):
    """``config`` with a constant schedule: the test sets the rate itself."""
    config = copy.deepcopy(config)
    config.optim.schedule, config.optim.warmup_epochs = "constant", 0.0
    return config


def _setup(config):
    model = train.check_config(config)
    splits = data.load_splits(config.data)
    train.check_against_data(model, config.data, splits)
    steps_per_epoch = train.epoch_steps(config, len(splits.train[1]))
    steps = train.compiled_steps(config, model, steps_per_epoch, splits.preprocessing)
    state, key = train.run_state(config, model, steps[0], splits.image_shape)
    return splits, steps_per_epoch, steps, state, key


def sequential(config, min_lr: float, max_lr: float, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(rates, smoothed losses) of one run whose rate grows exponentially, one step per rate, over ``fraction`` of
    an epoch (20 to 300 steps)."""
    splits, steps_per_epoch, (_, _, train_step, _, _), state, key = _setup(config)
    num_steps = int(np.clip(fraction * steps_per_epoch, 20, 300))
    images, labels = jax.device_put(splits.train)
    batches = data.train_batches(len(labels), config.data.batch_size, seed=config.train.seed, epoch=0)
    rates = np.geomspace(min_lr, max_lr, num_steps)
    losses, average, best = [], 0.0, np.inf
    for i, rate in enumerate(rates):
        state["opt_state"] = optim.with_hyperparams(state["opt_state"], learning_rate=rate)
        state, step_metrics = train_step(state, images, labels, jnp.asarray(batches[i % len(batches)]), key)
        average = 0.98 * average + 0.02 * float(step_metrics["loss"])
        smoothed = average / (1 - 0.98 ** (i + 1))
        losses.append(smoothed)
        best = min(best, smoothed)
        if not np.isfinite(smoothed) or smoothed > 4 * best:
            break
    return rates[: len(losses)], np.array(losses)


def vectorized(config, min_lr: float, max_lr: float, num_rates: int, num_steps: int):
    """(rates, losses): each rate trained ``num_steps`` steps from the same initialization, as one vmapped group;
    its loss is the mean over the last half of the steps (inf where it diverged)."""
    splits, _, (_, train_fn, _, eval_fn, _), state, key = _setup(config)
    images, labels = jax.device_put(splits.train)
    batches = data.train_batches(len(labels), config.data.batch_size, seed=config.train.seed, epoch=0)
    rates = np.geomspace(min_lr, max_lr, num_rates)
    members = [{**state, "opt_state": optim.with_hyperparams(state["opt_state"], learning_rate=r)} for r in rates]
    group_step, _ = sweep._group_steps(train_fn, eval_fn, backend.XlaOptions.of(config.train))
    stacked, alive, losses = sweep._stack(members), jnp.ones(num_rates, bool), []
    for i in range(num_steps):
        stacked, step_metrics, alive = group_step(stacked, images, labels, jnp.asarray(batches[i % len(batches)]),
                                                  key, alive)  # fmt: skip
        losses.append(np.where(np.asarray(alive), np.asarray(step_metrics["loss"]), np.inf))
    return rates, np.mean(np.array(losses[num_steps // 2 :]), axis=0)


def lr_find(config, workdir: str | Path, *, way: str = "auto", min_lr: float = 1e-6, max_lr: float = 1.0,
            fraction: float = 0.3) -> dict:  # fmt: skip
    """Runs the range test of ``config`` and writes ``lr_find.png`` and ``lr_find.json`` into ``workdir``.

    Args:
      config: an experiment config (its schedule is replaced by a constant rate for the test).
      workdir: where the figure and the numbers go.
      way: 'sequential', 'vectorized', or 'auto' (``sweep.vectorizes`` decides, as for a sweep).
      min_lr, max_lr: the range of rates.
      fraction: the share of an epoch the sequential test spans (at least 20 and at most 300 steps).

    Returns:
      {'way', 'rates', 'losses', 'suggested_learning_rate', 'figure'}.
    """
    config = _finder_config(config)
    if way == "auto":
        way = "vectorized" if sweep.vectorizes("auto", config.data.batch_size) else "sequential"
    if way not in ("sequential", "vectorized"):
        raise ValueError(f"lr_find: way={way!r}; choose 'sequential', 'vectorized' or 'auto'")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if way == "sequential":
        rates, losses = sequential(config, min_lr, max_lr, fraction)
    else:
        rates, losses = vectorized(config, min_lr, max_lr, num_rates=16, num_steps=20)
    suggested = suggestion(rates, losses)
    figure = workdir / "lr_find.png"
    plots.lr_find(rates, losses, suggested, figure, f"{config.model.name} on {config.data.name}: range test ({way})")
    result = {"way": way, "rates": rates.tolist(), "losses": [float(v) if np.isfinite(v) else None for v in losses],
              "suggested_learning_rate": suggested, "figure": str(figure)}  # fmt: skip
    metrics.write_json(workdir / "lr_find.json", result)
    return result
