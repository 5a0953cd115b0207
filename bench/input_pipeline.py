"""Input pipeline vs training step: is the data ever the bottleneck?

    PYTHONPATH=. .venv/bin/python bench/input_pipeline.py [--rounds=5]

Prints the time to prepare Fashion-MNIST from Debian's files into a fresh TFDS directory, the time to load the
prepared splits, and, measured in interleaved rounds in one process, images/s of (a) gathering batches from the
device-resident training set with and without augmentation and (b) the modern LeNet training step, with the ratio.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import workloads

from cnnjax import data, models, optim, train
from cnnjax.config import base_config


def timed(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tfds_dir:
        prepare_s = timed(lambda: data.prepare("fashion_mnist", tfds_dir=tfds_dir))
        load_s = timed(lambda: (data.load("fashion_mnist", "train", tfds_dir=tfds_dir),
                                data.load("fashion_mnist", "test", tfds_dir=tfds_dir)))  # fmt: skip
    print(
        f"prepare Fashion-MNIST from Debian's files: {prepare_s:.1f} s; load train+test once prepared: {load_s:.1f} s"
    )

    config = base_config()
    images, labels = data.load("fashion_mnist", "train")
    images = jax.device_put(images.astype(np.float32) / 255.0)
    labels = jax.device_put(labels.astype(np.int32))
    batch = config.data.batch_size
    batches = jnp.asarray(data.train_batches(len(labels), batch, seed=0, epoch=0)[: args.steps])
    augment = functools.partial(data.augment, crop_padding=2, flip=True, translate=0.0)

    gather = jax.jit(lambda idx: images[idx])
    gather_augment = jax.jit(lambda idx, key: augment(key, images[idx]))
    model = models.get("lenet")
    optimizer = optim.make_optimizer(config.optim, len(batches), 1)
    step = train.make_train_step(model, optimizer, "cross_entropy", lambda key, x: x)
    key = jax.random.key(0)

    def run_gather():
        return [gather(i) for i in batches][-1]

    def run_gather_augment():
        return [gather_augment(i, jax.random.fold_in(key, n)) for n, i in enumerate(batches)][-1]

    def run_train():
        state = train.init_state(model, optimizer, (28, 28, 1), key)
        for i in batches:
            state, metrics = step(state, images, labels, i, key)
        return metrics

    candidates = {"gather": run_gather, "gather+augment": run_gather_augment, "train step": run_train}
    for fn in candidates.values():  # compile
        timed(fn)
    rates = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, fn in candidates.items():
            rates[name].append(len(batches) * batch / timed(fn))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, rate in medians.items():
        print(f"{name:>15}: {rate:12,.0f} images/s (median of {args.rounds} interleaved rounds)")
    print(f"pipeline / train step: gather {medians['gather'] / medians['train step']:.0f}x, "
          f"gather+augment {medians['gather+augment'] / medians['train step']:.1f}x")  # fmt: skip
    result = {"prepare_s": prepare_s, "load_s": load_s, "batch": batch, "steps": len(batches), "rounds": args.rounds,
              "images_per_sec": medians}  # fmt: skip
    print(f"wrote {workloads.write_result('input_pipeline', result)}")


if __name__ == "__main__":
    main()
