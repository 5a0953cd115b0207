"""What ``train.diagnostics`` (per-layer gradient norms, dead ReLU units) costs, side by side in one process.

    PYTHONPATH=. .venv/bin/python bench/diagnostics_cost.py [--experiments=lenet,resnet9] [--rounds=7] [--steps=100]

For each experiment, its training step as the run compiles it (returning every layer's gradient norm, which it
computes for the global norm anyway) and the same step returning the global norm only, from the same state on random
data of its shapes (``--steps`` steps per call), and its evaluation pass over 6,000 images (lenet's validation split)
with and without the dead-unit counts; all four run in interleaved rounds. Prints images/s and each on/off time ratio; writes
``bench/results/diagnostics_cost-<cpu>.json``.
"""

from __future__ import annotations

import argparse
import importlib

import jax
import numpy as np
import workloads

from cnnjax import models, train

EVAL_IMAGES = 6000


def random_split(base, count: int):
    """(model, image shape, images, labels): ``count`` random examples of ``base``'s shapes on the device."""
    model = models.get(base.model.name, **{k: v for k, v in base.model.items() if k != "name"})
    shape = train.expected_image_shape(base.data)
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.standard_normal((count, *shape)).astype(np.float32))
    return model, shape, images, jax.device_put(rng.integers(0, 10, count).astype(np.int32))


def without_layer_norms(train_fn):
    """The training step returning the global gradient norm only."""

    def step(*args):
        state, step_metrics = train_fn(*args)
        return state, {k: v for k, v in step_metrics.items() if k != "layer_grad_norms"}

    return step


def train_runners(base, steps: int) -> dict:
    """'train on' / 'train off' -> a callable running ``steps`` training steps of ``base``."""
    model, shape, images, labels = random_split(base, steps * base.data.batch_size)
    optimizer, train_fn, _, _, _ = train.compiled_steps(base, model, steps)
    runners = {}
    for label, step_fn in (("train on", train_fn), ("train off", without_layer_norms(train_fn))):
        state, key = train.run_state(base, model, optimizer, shape)  # one each: the steps donate their states
        batches = [(images, labels, jax.device_put(index), key)
                   for index in np.arange(len(labels), dtype=np.int32).reshape(steps, -1)]  # fmt: skip
        runners[label] = workloads.runner(jax.jit(step_fn, donate_argnums=0), state, batches)
    return runners


def eval_runners(base) -> dict:
    """'eval on' / 'eval off' -> a callable running one evaluation pass of ``base``'s model over random images."""
    model, _, images, labels = random_split(base, EVAL_IMAGES)
    variables = dict(jax.jit(model.init)(jax.random.key(0), images[:1]))
    state = {"params": variables.pop("params"), "model_state": variables}
    runners = {}
    for label, diagnostics in (("eval on", True), ("eval off", False)):
        step = jax.jit(train.eval_step_fn(model, base.train.loss, diagnostics=diagnostics))
        runners[label] = lambda step=step: train.evaluate(step, state, images, labels, base.data.eval_batch_size, None)
    return runners


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", default="lenet,resnet9")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    results = {}
    for name in args.experiments.split(","):
        base = importlib.import_module(f"experiments.{name}").get_config()
        runs = {**train_runners(base, args.steps), **eval_runners(base)}
        medians = workloads.interleaved_medians(runs, args.rounds)
        batch = base.data.batch_size
        entry = {
            "batch_size": batch,
            "train_images_per_sec": {k: args.steps * batch / medians[f"train {k}"] for k in ("on", "off")},
            "eval_images_per_sec": {k: EVAL_IMAGES / medians[f"eval {k}"] for k in ("on", "off")},
            "train_cost": medians["train on"] / medians["train off"],
            "eval_cost": medians["eval on"] / medians["eval off"],
        }
        results[name] = entry
        print(f"{name}: training step {entry['train_images_per_sec']['on']:,.0f} vs "
              f"{entry['train_images_per_sec']['off']:,.0f} img/s with the diagnostics on vs off "
              f"({entry['train_cost']:.3f}x the time); evaluation {entry['eval_images_per_sec']['on']:,.0f} vs "
              f"{entry['eval_images_per_sec']['off']:,.0f} img/s ({entry['eval_cost']:.3f}x)", flush=True)  # fmt: skip
    path = workloads.write_result("diagnostics_cost", {"rounds": args.rounds, "steps": args.steps,
                                                       "experiments": results})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
