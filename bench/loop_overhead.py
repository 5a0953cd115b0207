"""The training loop's speed against its own jitted step alone, in one process.

    PYTHONPATH=. .venv/bin/python bench/loop_overhead.py [--experiments=lenet,resnet9] [--rounds=3] [--steps=200]

For each experiment (on the prepared offline data), each round trains a fresh run of 2 epochs of ``--steps`` steps
(``train.limit_batches``) through ``train.train_and_evaluate`` — with everything it logs — and reads the second
epoch's images/s from its metrics.jsonl (the first includes compiling); then it runs the same compiled step on the
same data alone, ``--steps`` times from the batch indices already on the device. The loop's overhead is
1 - loop / step (medians over the rounds; every round's figures are kept too, as this machine's speed varies by
5-10% from one to the next). Writes ``bench/results/loop_overhead-<cpu>.json``, keeping the experiments this run
did not measure from the machine's earlier file (with the commit that measured them).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from pathlib import Path

import jax
import workloads

from cnnjax import data, metrics, parallel, train


def loop_images_per_sec(config) -> float:
    """The second epoch's training images/s of a fresh 2-epoch run of ``config``."""
    workdir = Path(tempfile.mkdtemp(prefix="cnnjax-loop-")) / "run"
    train.train_and_evaluate(config, workdir)
    epochs = [r for r in metrics.read_records(workdir / "metrics.jsonl") if r["kind"] == "epoch"]
    return epochs[1]["images_per_sec"]


def step_images_per_sec(config, splits, steps: int) -> float:
    """Images/s of the run's compiled training step alone, over ``steps`` batches prepared on the device."""
    model = train.check_config(config)
    steps_per_epoch = train.epoch_steps(config, len(splits.train[1]))
    optimizer, _, train_step, _, _ = train.compiled_steps(config, model, steps_per_epoch, splits.preprocessing)
    state, key = train.run_state(config, model, optimizer, splits.image_shape)
    mesh = parallel.make_mesh(config.train.num_devices)
    state, (images, labels) = parallel.replicate(state, mesh), parallel.replicate(splits.train, mesh)
    batches = data.train_batches(len(labels), config.data.batch_size, seed=config.train.seed, epoch=1)[:steps]
    batches = [parallel.shard_batch(batch, mesh) for batch in batches]
    state, step_metrics = train_step(state, images, labels, batches[0], key)  # compiled already: a warm-up
    jax.block_until_ready(step_metrics)
    start = time.perf_counter()
    for batch in batches:
        state, step_metrics = train_step(state, images, labels, batch, key)
    jax.block_until_ready(step_metrics)
    return len(batches) * config.data.batch_size / (time.perf_counter() - start)


def experiment_config(name: str, steps: int):
    config = importlib.import_module(f"experiments.{name}").get_config()
    with config.unlocked():
        config.train.num_epochs = 2
        config.train.limit_batches = steps
    return config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", default="lenet,resnet9")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    result = {"rounds": args.rounds, "steps": args.steps, "experiments": {}}
    for name in args.experiments.split(","):
        config = experiment_config(name, args.steps)
        splits = data.load_splits(config.data)
        loop, step = [], []
        for _ in range(args.rounds):
            loop.append(loop_images_per_sec(config))
            step.append(step_images_per_sec(config, splits, args.steps))
        entry = {"loop_images_per_sec": statistics.median(loop), "step_images_per_sec": statistics.median(step),
                 "all_loop_images_per_sec": loop, "all_step_images_per_sec": step}  # fmt: skip
        entry["overhead"] = 1 - entry["loop_images_per_sec"] / entry["step_images_per_sec"]
        result["experiments"][name] = entry
        print(f"{name}: loop {entry['loop_images_per_sec']:,.0f} img/s, step alone "
              f"{entry['step_images_per_sec']:,.0f} img/s: overhead {100 * entry['overhead']:.1f}%")  # fmt: skip
    result["measured_at"] = workloads.kept_from_before(result, "loop_overhead", same=("steps",))
    print(f"wrote {workloads.write_result('loop_overhead', result)}")


if __name__ == "__main__":
    main()
