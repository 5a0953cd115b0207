"""The cost of the test metrics (top-5 accuracy, confusion counts) in the evaluation step, side by side in one process.

    PYTHONPATH=. .venv/bin/python bench/eval_metrics.py [--rounds=7]

Times one evaluation pass of the default ``lenet`` run's shape (its 6,000 validation images at eval batch 1,000) with
the evaluation step of ``cnnjax.train`` (loss, correct, count, top-5 and the K x K confusion counts) against the same
step summing only loss, correct and count, in interleaved rounds. A default run evaluates 11 times (10 validations,
one test of 10,000), so it prints the added seconds per run. Writes bench/results/eval_metrics-<cpu>.json.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import workloads

from cnnjax import models, parallel, train


def sums_only(eval_step):
    """The evaluation step without the added metrics: loss, correct, count."""
    return lambda *args: eval_step(*args)["sums"][:3]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    model = models.get("lenet")
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.normal(size=(6000, 28, 28, 1)).astype(np.float32))
    labels = jax.device_put(rng.integers(0, 10, 6000).astype(np.int32))
    step = train.eval_step_fn(model, "cross_entropy")
    state = {"params": variables["params"], "model_state": {}}
    mesh = parallel.make_mesh(1)
    steps = {"loss, correct, count": jax.jit(sums_only(step)), "+ top-5 and confusion": jax.jit(step)}

    def pass_of(eval_step):
        def run():
            index, weights = train.data.eval_batches(len(labels), 1000)
            totals = 0.0
            for batch_index, batch_weights in zip(index, weights):
                batch_index, batch_weights = parallel.shard_batch((batch_index, batch_weights), mesh)
                totals = totals + eval_step(state["params"], {}, images, labels, batch_index, batch_weights)["sums"]
            np.asarray(totals)

        return run

    medians = workloads.interleaved_medians({label: pass_of(s) for label, s in steps.items()}, args.rounds)
    base, full = medians.values()
    per_run = (full - base) * (10 + 10000 / 6000)
    for label, seconds in medians.items():
        print(f"{label:>24}: {1000 * seconds:7.1f} ms per 6,000-image pass")
    print(f"ratio {full / base:.3f}; {per_run * 1000:+.0f} ms per default lenet run (10 validations + 1 test)")
    path = workloads.write_result(
        "eval_metrics",
        {"rounds": args.rounds, "pass_images": 6000, "eval_batch": 1000, "median_s": medians,
         "ratio": full / base, "added_s_per_lenet_run": per_run},
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
