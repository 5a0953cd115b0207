"""What each option of the training recipe costs on an experiment's training step, side by side in one process.

    PYTHONPATH=. .venv/bin/python bench/recipe_cost.py [--experiments=lenet,resnet9] [--rounds=3] [--steps=4]

For each experiment the step is compiled as its config has it ('baseline') and once per option below added to it,
all from the same initial state on random data of the experiment's shapes; the variants then run in interleaved
rounds. Prints images/s and each option's step time over the baseline's; writes
``bench/results/recipe_cost-<cpu>.json``.
"""

from __future__ import annotations

import argparse
import copy
import importlib

import jax
import numpy as np
import workloads

from cnnjax import data, models, train

OPTIONS = {
    "ema_decay=0.999": {"train.ema_decay": 0.999},
    "grad_accum_steps=2": {"train.grad_accum_steps": 2},
    "mixup_alpha=0.2": {"data.mixup_alpha": 0.2},
    "cutmix_alpha=1.0": {"data.cutmix_alpha": 1.0},
    "randaugment=rand-m9-n2": {"data.randaugment": "rand-m9-n2"},
    "trivialaugment": {"data.trivialaugment": True},
    "color_jitter=0.4": {"data.color_jitter": 0.4},
    "random_scale=(0.8, 1.2)": {"data.random_scale": (0.8, 1.2)},
    "random_erasing=0.25": {"data.random_erasing": 0.25},
    "lookahead=5": {"optim.lookahead": 5},
    "schedule=plateau": {"optim.schedule": "plateau"},
}


def variant(config, overrides: dict):
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def step_runners(base, steps: int) -> dict:
    """label -> a callable running ``steps`` training steps of that variant of ``base``."""
    model = models.get(base.model.name, **{k: v for k, v in base.model.items() if k != "name"})
    shape = train.expected_image_shape(base.data)
    rng = np.random.default_rng(0)
    batch = base.data.batch_size
    images = jax.device_put(rng.standard_normal((steps * batch, *shape)).astype(np.float32))
    labels = jax.device_put(rng.integers(0, 10, steps * batch).astype(np.int32))
    preprocessing = data.Preprocessing(0, np.full(shape[-1], 1 / 255 / 0.3, np.float32),
                                       np.full(shape[-1], -0.5 / 0.3, np.float32))  # fmt: skip
    runners = {}
    for label, overrides in {"baseline": {}, **OPTIONS}.items():
        config = variant(base, overrides)
        optimizer, _, step, _, _ = train.compiled_steps(config, model, steps, preprocessing)
        state, key = train.run_state(config, model, optimizer, shape)
        batches = [(images, labels, jax.device_put(index), key)
                   for index in np.arange(steps * batch, dtype=np.int32).reshape(steps, batch)]  # fmt: skip
        runners[label] = workloads.runner(step, state, batches)
    return runners


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", default="lenet,resnet9")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    results = {}
    for name in args.experiments.split(","):
        base = importlib.import_module(f"experiments.{name}").get_config()
        medians = workloads.interleaved_medians(step_runners(base, args.steps), args.rounds)
        batch = base.data.batch_size
        results[name] = {
            "batch_size": batch,
            "images_per_sec": {label: args.steps * batch / seconds for label, seconds in medians.items()},
            "cost": {label: seconds / medians["baseline"] for label, seconds in medians.items() if label != "baseline"},
        }
        for label, cost in results[name]["cost"].items():
            print(f"{name:8} {label:26} {cost:5.2f}x the baseline step", flush=True)
    path = workloads.write_result("recipe_cost", {"rounds": args.rounds, "steps": args.steps, "experiments": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
