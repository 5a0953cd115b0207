"""Vectorized sweep vs the same trials one after another: 8 learning rates of the modern LeNet.

    PYTHONPATH=. .venv/bin/python bench/sweep_vectorized.py [--rounds=5] [--steps=40] [--members=8] [--batch_sizes=8,32,128]
        [--grouped_convs]

Times ``--steps`` training steps of all members: once as the vmapped group step of ``cnnjax.sweep`` (stacked
params and optimizer states, learning rates as values in the state), once as ``--members`` solo runs of the shared
jitted step, in interleaved rounds. Prints trial-steps per second of both and the speed-up, per batch size: the
crossover where a group stops paying (small batches leave a solo step's fixed costs dominant; large ones its
per-example work). ``--grouped_convs`` also times the group with JAX's own batching of the convolutions (one
grouped convolution over the members, instead of cnnjax's one convolution per member on the CPU).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import workloads

from cnnjax import backend, models, optim, sweep, train
from experiments.lenet import get_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--model", default="lenet", help="lenet or resnet (ResNet-20 on 32x32x3)")
    parser.add_argument("--batch_sizes", default="128", help="comma-separated batch sizes to compare at")
    parser.add_argument(
        "--grouped_convs",
        action="store_true",
        help="also time the group mapped without the member axis name (XLA's convolutions then become grouped ones)",
    )
    args = parser.parse_args()
    by_batch = {batch: compare(args, batch) for batch in map(int, args.batch_sizes.split(","))}
    result = {"model": args.model, "members": args.members, "steps": args.steps, "rounds": args.rounds,
              "trial_steps_per_s": by_batch,
              "vectorized_over_sequential": {b: m["vectorized"] / m["sequential"] for b, m in by_batch.items()}}  # fmt: skip
    print(f"wrote {workloads.write_result(f'sweep_vectorized-{args.model}', result)}")


def compare(args, batch: int) -> dict[str, float]:
    """Prints and returns the interleaved medians (trial-steps/s) of the vectorized group and the sequential trials
    at ``batch``."""
    config = get_config()
    model = models.get("lenet") if args.model == "lenet" else models.get("resnet", depth=20)
    shape = (28, 28, 1) if args.model == "lenet" else (32, 32, 3)
    optimizer, train_fn, solo_step, eval_fn, _ = train.compiled_steps(config, model, args.steps)
    xla = backend.XlaOptions.of(config.train)
    group_steps = {"vectorized": sweep._group_steps(train_fn, eval_fn, xla)[0]}
    if args.grouped_convs:
        group_steps["grouped convs"] = sweep._group_steps(train_fn, eval_fn, xla, axis_name=None)[0]
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((args.steps * batch, *shape)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 10, args.steps * batch).astype(np.int32))
    batches = jnp.arange(args.steps * batch, dtype=jnp.int32).reshape(args.steps, batch)
    rates = np.geomspace(3e-4, 1e-2, args.members)
    key = jax.random.key(0)

    def member_state(rate):
        state = train.init_state(model, optimizer, shape, key)
        state["opt_state"] = optim.with_hyperparams(state["opt_state"], learning_rate=rate)
        return state

    def run_group(group_step):
        state = sweep._stack([member_state(r) for r in rates])
        alive = jnp.ones(args.members, bool)
        for index in batches:
            state, metrics, alive = group_step(state, images, labels, index, key, alive)
        return metrics

    def run_sequential():
        for rate in rates:
            state = member_state(rate)
            for index in batches:
                state, metrics = solo_step(state, images, labels, index, key)
        return metrics

    candidates = {name: functools.partial(run_group, step) for name, step in group_steps.items()}
    candidates["sequential"] = run_sequential
    for fn in candidates.values():
        jax.block_until_ready(fn())
    speeds = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            speeds[name].append(args.members * args.steps / (time.perf_counter() - start))
    medians = {name: statistics.median(s) for name, s in speeds.items()}
    print(
        f"{args.members} x {args.model} trials, {args.steps} steps of batch {batch}, medians of {args.rounds} "
        f"interleaved rounds, trial-steps/s: " + ", ".join(f"{name} {speed:.1f}" for name, speed in medians.items())
    )
    for name in group_steps:
        print(f"  {name} / sequential: {medians[name] / medians['sequential']:.2f}x")
    return medians


if __name__ == "__main__":
    main()
