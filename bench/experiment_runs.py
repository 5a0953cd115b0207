"""Whole experiment runs, as a user starts them, with their results written as data.

    PYTHONPATH=. .venv/bin/python bench/experiment_runs.py [--experiments=lenet,lenet5_classic,mnist_cnn] [-- OVERRIDES]

Runs ``python launch.py --experiment=NAME`` (plus any ``--config.KEY=VALUE`` after ``--``) for each experiment in a
fresh run directory, one after the other, on the prepared offline data, and writes
bench/results/experiment-<name>-<cpu>.json: the command, the process's wall time, and from its results.json the test
and validation accuracy, parameters, epochs, training time, images/s and the time to the first step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import workloads

ROOT = Path(__file__).resolve().parents[1]
KEPT = ("test_accuracy", "val_accuracy", "top5_accuracy", "params", "epochs", "best_epoch", "train_time_s",
        "images_per_sec", "time_to_first_step_s", "wall_time_s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", default="lenet,lenet5_classic,mnist_cnn")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    for name in args.experiments.split(","):
        workdir = Path(tempfile.mkdtemp(prefix=f"cnnjax-{name}-")) / "run"
        command = [sys.executable, "launch.py", f"--experiment={name}", *overrides]
        start = time.perf_counter()
        subprocess.run([*command, f"--workdir={workdir}"], cwd=ROOT, check=True)
        process_s = time.perf_counter() - start
        results = json.loads((workdir / "results.json").read_text())
        shown = " ".join(["python launch.py", *command[2:]])
        path = workloads.write_result(
            f"experiment-{name}", {"command": shown, "process_wall_s": process_s, **{k: results[k] for k in KEPT}}
        )
        print(f"{name}: {100 * results['test_accuracy']:.2f}% test in {process_s:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
