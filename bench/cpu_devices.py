"""Training throughput on one CPU device against data parallelism over several (``config.train.cpu_devices``).

    PYTHONPATH=. .venv/bin/python bench/cpu_devices.py [--devices=2] [--rounds=5] [--steps=20] [--models=lenet,...]

JAX normally makes the host CPU one device. Split into N devices (``parallel.split_cpu``), each device runs its 1/N
of the batch; XLA:CPU sums the gradients with one all-reduce. Each model's real train step (global batch 128,
bench/workloads.py) is timed on 1 and on N devices in alternating worker processes, one setting per process: a
process that runs both settings (as the other benchmarks do for their variants) ran the N-device step at either
its full speed or that of one device, by chance, while processes that run one setting each agree run after run.
Prints the medians over the rounds of each setting's images/s and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def worker(name: str, devices: int, steps: int) -> None:
    """Prints the images/s of ``steps`` train steps on ``devices`` CPU devices (median of 3, after a warm-up)."""
    import jax
    import workloads

    from cnnjax import parallel

    parallel.split_cpu(devices)  # JAX has not started yet
    _, _, step, state, batches = workloads.train_workload(name, steps, devices)
    run = workloads.runner(step, state, batches)
    seconds = workloads.interleaved_medians({"run": run}, 3)["run"]
    print(json.dumps({"images_per_s": steps * workloads.BATCH / seconds, "devices": jax.device_count()}))


def measure(name: str, devices: int, steps: int) -> float:
    command = [sys.executable, __file__, "--worker", f"--models={name}", f"--devices={devices}", f"--steps={steps}"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2, help="CPU devices to compare with one")
    parser.add_argument("--rounds", type=int, default=5, help="worker processes per setting, alternating")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", default="lenet,mnist_cnn,cifar_cnn,resnet20,resnet9")
    parser.add_argument("--worker", action="store_true", help="(internal) time one setting in this process")
    args = parser.parse_args()
    if args.worker:
        worker(args.models, args.devices, args.steps)
        return
    print(f"{os.cpu_count()} cores; batch 128, {args.steps} steps per process, medians of {args.rounds} alternating "
          f"processes per setting")  # fmt: skip
    images_per_s = {}
    for name in args.models.split(","):
        started = time.perf_counter()
        rates = {1: [], args.devices: []}
        for _ in range(args.rounds):
            for devices in rates:
                rates[devices].append(measure(name, devices, args.steps))
        one, many = statistics.median(rates[1]), statistics.median(rates[args.devices])
        images_per_s[name] = {"1 device": one, f"{args.devices} devices": many, "ratio": many / one}
        print(f"{name:>10}: 1 device {one:8,.0f} img/s  {args.devices} devices {many:8,.0f} img/s  ratio "
              f"{many / one:.2f}x  (ratios per round {', '.join(f'{b / a:.2f}' for a, b in zip(*rates.values()))}; "
              f"{time.perf_counter() - started:.0f} s)")  # fmt: skip
    import workloads  # after the workers: it starts JAX in this process

    result = {"devices": args.devices, "steps": args.steps, "rounds": args.rounds, "images_per_sec": images_per_s}
    print(f"wrote {workloads.write_result('cpu_devices', result)}")


if __name__ == "__main__":
    main()
