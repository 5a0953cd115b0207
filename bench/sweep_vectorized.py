"""Vectorized sweep vs the same trials one after another: 8 learning rates of the modern LeNet.

    .venv/bin/python bench/sweep_vectorized.py [--rounds=5] [--steps=40] [--members=8] [--batch_sizes=8,32,128]

Times ``--steps`` training steps of all members: once as the vmapped group step of ``cnnjax.sweep`` (stacked
params and optimizer states, learning rates as values in the state), once as ``--members`` solo runs of the shared
jitted step, in interleaved rounds. Prints trial-steps per second of both and the speed-up, per batch size: the
crossover where a group stops paying (small batches leave a solo step's fixed costs dominant; large ones its
per-example work).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import models, optim, sweep, train
from experiments.lenet import get_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--model", default="lenet", help="lenet or resnet (ResNet-20 on 32x32x3)")
    parser.add_argument("--batch_sizes", default="128", help="comma-separated batch sizes to compare at")
    args = parser.parse_args()
    for batch in map(int, args.batch_sizes.split(",")):
        compare(args, batch)


def compare(args, batch: int) -> None:
    """Prints the interleaved medians of the vectorized group and the sequential trials at ``batch``."""
    config = get_config()
    model = models.get("lenet") if args.model == "lenet" else models.get("resnet", depth=20)
    shape = (28, 28, 1) if args.model == "lenet" else (32, 32, 3)
    optimizer, train_fn, solo_step, eval_fn, _ = train.compiled_steps(config, model, args.steps)
    group_step, _ = sweep._group_steps(train_fn, eval_fn, config.train.xla_cpu_ynn_fusion)
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

    def run_group():
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

    candidates = {"vectorized": run_group, "sequential": run_sequential}
    for fn in candidates.values():
        jax.block_until_ready(fn())
    speeds = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            speeds[name].append(args.members * args.steps / (time.perf_counter() - start))
    medians = {name: statistics.median(s) for name, s in speeds.items()}
    print(f"{args.members} x {args.model} trials, {args.steps} steps of batch {batch}, medians of {args.rounds} "
          f"interleaved rounds: vectorized {medians['vectorized']:.1f} trial-steps/s, sequential "
          f"{medians['sequential']:.1f} trial-steps/s, speed-up {medians['vectorized'] / medians['sequential']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
