"""Where a training step's time goes: per-operation times of the compiled step, with the layer each came from.

    PYTHONPATH=. .venv/bin/python bench/profile_step.py [--model=lenet] [--steps=10] [--top=25]

Runs the benchmark model's real train step (bench/workloads.py, on one CPU device, also for a model whose experiment
splits the CPU) under ``jax.profiler``, sums the time of every XLA operation over the steps, and prints the most
expensive ones per step with the JAX operation they lower (``op_name`` metadata of the optimized HLO: ``jvp(...)``
is the forward pass, ``transpose(jvp(...))`` the backward).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

import jax
import workloads


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its ``op_name`` metadata ('' where XLA added the instruction itself, e.g. the
    transposes of convolution gradients), from an optimized module's text."""
    pattern = re.compile(r"^\s*(?:ROOT )?%?([\w.-]+) = [^\n]*?(?:op_name=\"([^\"]+)\"|$)", re.MULTILINE)
    return dict(pattern.findall(hlo_text))


def layer_and_pass(source: str) -> tuple[str, str]:
    """('conv2', 'backward') from 'jit(train_step)/transpose(jvp(LeNet))/conv2/onednn_conv'; outside the model's
    forward and backward passes (the optimizer, the loss, the batch gather) and for what XLA added, ``(what, 'other')``."""
    if not source:
        return "added by XLA", "other"
    parts = source.split("/")
    if len(parts) < 4 or not parts[1].startswith(("jvp(", "transpose(jvp(")):
        return "optimizer, loss, batch gather", "other"
    return parts[2], "backward" if parts[1].startswith("transpose(") else "forward"


def operation_times(trace_dir: Path) -> collections.Counter:
    """Total microseconds per event name in the trace that jax.profiler wrote under ``trace_dir``."""
    (trace,) = trace_dir.glob("**/*.trace.json.gz")
    totals = collections.Counter()
    for event in json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]:
        if event.get("ph") == "X":
            totals[event["name"]] += event["dur"]
    return totals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="lenet", choices=list(workloads.MODELS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    _, _, step, state, batches = workloads.train_workload(args.model, args.steps, devices=1)
    names = op_names(step.lower(state, *batches[0]).compile().as_text())
    state = workloads.run_steps(step, state, batches)  # compile and warm up
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            start = time.perf_counter()
            workloads.run_steps(step, state, batches)
            wall = time.perf_counter() - start
        totals = operation_times(Path(trace_dir))
    operations = {name: us for name, us in totals.items() if name in names}
    total = sum(operations.values())
    print(
        f"{args.model}: {total / args.steps / 1e3:.2f} ms of traced XLA operations in {1e3 * wall / args.steps:.2f} ms "
        f"per step (batch {workloads.BATCH}); in the difference the profiler saw no operation run: XLA's own (Eigen) "
        "convolutions, such as kernel gradients after transpose_copy fusions, run on threads it does not trace, and "
        "it adds overhead of its own"
    )
    top = sorted(operations.items(), key=lambda item: -item[1])[: args.top]
    for name, us in top:
        print(
            f"{us / args.steps / 1e3:8.2f} ms  {100 * us / total:5.1f}%  {name:<28} {names[name] or '(added by XLA)'}"
        )
    by_layer = collections.defaultdict(collections.Counter)
    for name, us in operations.items():
        layer, part = layer_and_pass(names[name])
        by_layer[layer][part] += us / args.steps / 1e6
    result = {"model": args.model, "batch": workloads.BATCH, "steps": args.steps, "step_wall_s": wall / args.steps,
              "traced_s_per_step": total / args.steps / 1e6,
              "top_operations": [{"name": n, "s_per_step": us / args.steps / 1e6, "source": names[n]} for n, us in top],
              "s_per_step_by_layer": by_layer}  # fmt: skip
    print(f"wrote {workloads.write_result(f'profile_step-{args.model}', result)}")


if __name__ == "__main__":
    main()
