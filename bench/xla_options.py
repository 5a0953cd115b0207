"""Training throughput under different XLA:CPU YNNPACK settings, compiled side by side in one process.

    PYTHONPATH=. .venv/bin/python bench/xla_options.py [--rounds=5] [--steps=10] [--models=lenet,mnist_cnn,...]

Each model's real train step is compiled once per setting of ``xla_cpu_experimental_ynn_fusion_type`` (as
``compiler_options``, so one process compares them all), then the settings run in interleaved rounds from the same
initial state. Prints median images/s and the ratio to XLA's default. cnnjax.backend picks its flag from this.
"""

from __future__ import annotations

import argparse
import os

os.environ["CNNJAX_XLA_FLAGS"] = "0"  # compare against XLA's own default

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import workloads  # noqa: E402

OPTION = "xla_cpu_experimental_ynn_fusion_type"
SETTINGS = {  # label -> YNNPACK fusion types (None: XLA's default list; "": none)
    "default": None,
    "none": "",
    "individual_dot": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "individual_dot,reduce": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
    "dot,eltwise,reduce": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE",
}


def compiler_options(types: str | None) -> dict:
    return {} if types is None else {OPTION: types}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--models", default=",".join(workloads.MODELS))
    args = parser.parse_args()
    workloads.split_cpu_for(args.models.split(","))
    print(f"jax {jax.__version__}; batch {workloads.BATCH}, {args.steps} steps per round, medians of {args.rounds}")
    for name in args.models.split(","):
        _, _, step, state, batches = workloads.train_workload(name, args.steps)
        lowered = step.lower(state, *batches[0])
        runs = {  # each with its own copy of the state, which the step donates
            label: workloads.runner(lowered.compile(compiler_options(types)), jax.tree.map(jnp.copy, state), batches)
            for label, types in SETTINGS.items()
        }
        seconds = workloads.interleaved_medians(runs, args.rounds)
        print(f"{name:>10}: " + "  ".join(
            f"{label} {args.steps * workloads.BATCH / s:,.0f} img/s ({seconds['default'] / s:.2f}x)"
            for label, s in seconds.items()
        ))  # fmt: skip


if __name__ == "__main__":
    main()
