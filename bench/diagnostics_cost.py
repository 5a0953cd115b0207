"""What ``train.diagnostics`` (per-layer gradient norms, dead ReLU units) costs, side by side in one process.

    PYTHONPATH=. .venv/bin/python bench/diagnostics_cost.py [--experiments=lenet,resnet9] [--rounds=7] [--steps=50]

For each experiment, its training step compiled with the diagnostics on and off (from the same state, on random
data of its shapes, ``--steps`` steps per call), and its evaluation pass over 6,000 images (lenet's validation
split) on and off; all four run in interleaved rounds. Prints images/s and each on/off time ratio; writes
``bench/results/diagnostics_cost-<cpu>.json``.
"""

from __future__ import annotations

import argparse
import importlib

import jax
import numpy as np
import recipe_cost
import workloads

from cnnjax import models, train

EVAL_IMAGES = 6000


def eval_runners(base) -> dict:
    """'eval on' / 'eval off' -> a callable running one evaluation pass of ``base``'s model over random images."""
    model = models.get(base.model.name, **{k: v for k, v in base.model.items() if k != "name"})
    shape = train.expected_image_shape(base.data)
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.standard_normal((EVAL_IMAGES, *shape)).astype(np.float32))
    labels = jax.device_put(rng.integers(0, 10, EVAL_IMAGES).astype(np.int32))
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
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    results = {}
    for name in args.experiments.split(","):
        base = importlib.import_module(f"experiments.{name}").get_config()
        variants = {"train on": {"train.diagnostics": True}, "train off": {"train.diagnostics": False}}
        runs = {**recipe_cost.step_runners(base, args.steps, variants), **eval_runners(base)}
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
