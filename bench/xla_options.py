"""Training throughput under different XLA settings, compiled side by side in one process: on the CPU YNNPACK fusions
and CSE, on a GPU deterministic operations.

    PYTHONPATH=. .venv/bin/python bench/xla_options.py [--rounds=5] [--steps=10] [--models=lenet,mnist_cnn,...]

Each model's real train step is compiled once per setting of ``xla_cpu_experimental_ynn_fusion_type`` and with or
without XLA's common-subexpression elimination (as ``compiler_options``, so one process compares them all), then the
settings run in interleaved rounds from the same initial state. Prints median images/s and the ratio to XLA's
default. cnnjax.backend picks its flag from this, and the experiments their ``train.xla_cpu_*`` settings; on a GPU it
prints the cost of ``train.xla_gpu_deterministic``.
"""

from __future__ import annotations

import argparse
import os

os.environ["CNNJAX_XLA_FLAGS"] = "0"  # compare against XLA's own default

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import workloads  # noqa: E402

from cnnjax import backend  # noqa: E402


def settings() -> dict[str, dict]:
    """label -> the step's compiler options; ratios are to XLA's default. Call it after splitting the CPU: the
    options ask JAX for its backend."""
    if jax.default_backend() == "gpu":
        return {"default": {}, "deterministic": backend.XlaOptions(gpu_deterministic=True).compiler_options()}
    return {
        "default": {},
        "none": {"xla_cpu_experimental_ynn_fusion_type": ""},  # no YNNPACK at all
        **{
            f"{types}{'' if cse else ' no cse'}": backend.XlaOptions(types, cse).compiler_options()
            for types, cse in [
                ("individual_dot", True),
                ("individual_dot,reduce", True),
                ("dot,eltwise,reduce", True),
                ("individual_dot", False),
                ("dot,eltwise,reduce", False),
            ]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--models", default=",".join(workloads.MODELS))
    args = parser.parse_args()
    workloads.split_cpu_for(args.models.split(","))
    print(f"jax {jax.__version__}; batch {workloads.BATCH}, {args.steps} steps per round, medians of {args.rounds}")
    images_per_s = {}
    for name in args.models.split(","):
        _, _, step, state, batches = workloads.train_workload(
            name, args.steps, xla=backend.XlaOptions(gpu_deterministic=False)
        )
        lowered = step.lower(state, *batches[0])
        runs = {  # each with its own copy of the state, which the step donates
            label: workloads.runner(lowered.compile(options), jax.tree.map(jnp.copy, state), batches)
            for label, options in settings().items()
        }
        seconds = workloads.interleaved_medians(runs, args.rounds)
        images_per_s[name] = {label: args.steps * workloads.BATCH / s for label, s in seconds.items()}
        print(f"{name:>10}: " + "  ".join(
            f"{label} {args.steps * workloads.BATCH / s:,.0f} img/s ({seconds['default'] / s:.2f}x)"
            for label, s in seconds.items()
        ))  # fmt: skip
    result = {"batch": workloads.BATCH, "steps": args.steps, "rounds": args.rounds, "images_per_sec": images_per_s}
    print(f"wrote {workloads.write_result('xla_options', result)}")


if __name__ == "__main__":
    main()
