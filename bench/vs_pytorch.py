"""Training throughput of cnnjax against PyTorch eager on this machine, measured side by side.

    .venv/bin/pip install torch==2.13.0   # the CPU wheel on this machine's disk
    PYTHONPATH=. .venv/bin/python bench/vs_pytorch.py [--rounds=5] [--steps=N] [--models=lenet,mnist_cnn,cifar_cnn,resnet20,resnet9]

For each model the same architecture, batch (128), optimizer (Adam 1e-3) and data shape are trained in rounds that
alternate cnnjax (its real jitted train step: device-resident data, donated state, on as many CPU devices as the
model's experiment splits the CPU into, bench/cpu_devices.py), the same step without oneDNN's convolutions
(``CNNJAX_ONEDNN=0``: XLA's and the banded ones, cnnjax.onednn), on a CPU that multiplies bfloat16 in hardware
the same step at ``train.matmul_precision=bfloat16`` (its convolutions multiplied in bfloat16), and PyTorch eager
(in a process of its own that has not loaded JAX: bench/torch_twins.py); the medians of images/s, the ratios
cnnjax / PyTorch, cnnjax / cnnjax without oneDNN and at bfloat16 precision / cnnjax, cnnjax's GFLOP/s (3x the forward FLOPs of
cnnjax.summary per image) and its fraction of the float32 matmul peak measured in the same run are printed. Each
model runs in a process of its own: splitting the CPU for a model enlarges XLA's thread pools for the whole process
(``parallel.split_cpu``), which cost LeNet ~5% when they shared one.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import workloads
from workloads import BATCH

from cnnjax import onednn, summary, train


def matmul_peak_gflops(rounds: int = 5) -> float:
    a = jnp.ones((2048, 2048), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    jax.block_until_ready(matmul(a))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / min(times) / 1e9


def cnnjax_runner(name: str, steps: int):
    model, shape, step, state, batches = workloads.train_workload(name, steps)
    compile_start = time.perf_counter()
    jax.block_until_ready(step.lower(state, *batches[0]).compile())
    compile_s = time.perf_counter() - compile_start
    flops = 3 * sum(r["flops"] for r in summary.summarize(model, shape))
    return workloads.runner(step, state, batches), flops, compile_s


def round_steps(name: str, seconds: float = 3.0) -> int:
    """Steps per round for rounds of about ``seconds`` of cnnjax's step, at least 30: PyTorch's eager step runs
    faster over long stretches than over a round's first steps (LeNet's by 20-30% from 30 steps to 421 on a 2-core
    Xeon), so short rounds would favour cnnjax."""
    run, _, _ = cnnjax_runner(name, 30)
    run()
    start = time.perf_counter()
    run()
    return max(30, round(seconds * 30 / (time.perf_counter() - start)))


def cnnjax_without_onednn_runner(name: str, steps: int):
    """The same step with conv2d's default lowering leaving oneDNN out; traced (by a first run) under the opt-out."""
    os.environ[onednn.OPT_OUT] = "0"
    try:
        _, _, step, state, batches = workloads.train_workload(name, steps)
        run = workloads.runner(step, state, batches)
        run()
    finally:
        del os.environ[onednn.OPT_OUT]
    return run


def cnnjax_bfloat16_runner(name: str, steps: int):
    """The same step traced at ``jax.default_matmul_precision('bfloat16')``, as ``train.matmul_precision`` does."""
    _, _, step, state, batches = workloads.train_workload(name, steps)
    return workloads.runner(train.with_matmul_precision(step, "bfloat16"), state, batches)


def torch_runner(name: str, steps: int):
    """A function running ``steps`` PyTorch eager training steps in a process without JAX (bench/torch_twins.py),
    timed from here: a round trip through its pipe costs well under 1 ms of a round's hundreds."""
    shape = workloads.MODELS[name].image_shape
    worker = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("torch_twins.py")), name, str(steps), *map(str, shape), str(BATCH)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip

    def run():
        worker.stdin.write("run\n")
        worker.stdin.flush()
        if worker.stdout.readline() != "done\n":
            raise RuntimeError(f"the PyTorch worker for {name} stopped (exit status {worker.poll()})")

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help="per round (default: round_steps)")
    parser.add_argument("--models", default=",".join(workloads.MODELS))
    args = parser.parse_args()
    names = args.models.split(",")
    if len(names) > 1:  # one process per model (see above)
        for name in names:
            command = [sys.executable, __file__, f"--models={name}", f"--rounds={args.rounds}", f"--steps={args.steps}"]
            subprocess.run(command, check=True)
        return
    workloads.split_cpu_for(names)
    torch_version = importlib.metadata.version("torch")
    peak = matmul_peak_gflops()
    (name,) = names
    args.steps = args.steps or round_steps(name)
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch_version}; batch {BATCH}, {args.steps} "
          f"steps per round, medians of {args.rounds} interleaved rounds; float32 matmul peak {peak:.0f} GFLOP/s")  # fmt: skip
    ours, flops, compile_s = cnnjax_runner(name, args.steps)
    runs = {
        "cnnjax": ours,
        "without": cnnjax_without_onednn_runner(name, args.steps),
        "torch": torch_runner(name, args.steps),
    }
    if onednn.native_bfloat16():
        runs["bfloat16"] = cnnjax_bfloat16_runner(name, args.steps)
    seconds = workloads.interleaved_medians(runs, args.rounds)
    rates = {label: args.steps * BATCH / seconds[label] for label in runs}
    cnnjax_rate, without_rate, torch_rate = rates["cnnjax"], rates["without"], rates["torch"]
    bfloat16_gain = rates["bfloat16"] / cnnjax_rate if "bfloat16" in rates else None
    gflops = cnnjax_rate * flops / 1e9
    print(f"{name:>10}: cnnjax {cnnjax_rate:8,.0f} img/s  torch eager {torch_rate:8,.0f} img/s  "
          f"ratio {cnnjax_rate / torch_rate:.2f}x  (without oneDNN {without_rate:8,.0f} img/s: {without_rate / torch_rate:.2f}x "
          f"torch, oneDNN's gain {cnnjax_rate / without_rate:.2f}x)  cnnjax {gflops:5.1f} GFLOP/s = "
          f"{100 * gflops / peak:4.1f}% of peak  (train step compile {compile_s:.1f} s; "
          f"{workloads.MODELS[name].cpu_devices} CPU device(s))")  # fmt: skip
    if bfloat16_gain:
        print(f"{name:>10}: at matmul_precision=bfloat16 {rates['bfloat16']:8,.0f} img/s: {bfloat16_gain:.2f}x cnnjax")
    path = workloads.write_result(
        f"vs_pytorch-{name}",
        {"model": name, "torch": torch_version, "batch": BATCH, "steps": args.steps, "rounds": args.rounds,
         "images_per_sec": {"cnnjax": cnnjax_rate, "cnnjax_without_onednn": without_rate, "torch_eager": torch_rate},
         "ratio_vs_torch": cnnjax_rate / torch_rate, "onednn_gain": cnnjax_rate / without_rate,
         "bfloat16_images_per_sec": rates.get("bfloat16"), "bfloat16_gain": bfloat16_gain, "gflops": gflops,
         "matmul_peak_gflops": peak, "compile_s": compile_s, "cpu_devices": workloads.MODELS[name].cpu_devices},
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
