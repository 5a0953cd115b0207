"""Speedruns: whole commands that must reach a test accuracy within a wall time, for several seeds.

    PYTHONPATH=. .venv/bin/python bench/speedrun.py --experiment=speedrun_90 [--seeds=0,1,2]

Runs ``python launch.py --experiment=NAME --config.train.seed=S`` once per seed, one after the other on the prepared
offline data, each in a fresh run directory and with an empty compilation cache (every run compiles, as a first run
does). The experiment module names its goal: ``TARGET_ACCURACY`` and ``TARGET_SECONDS``. The wall time is the whole
command's, start-up included. Prints each seed and whether all met the goal; writes
``bench/results/speedrun-<name>-<cpu>.json`` after each seed, with the seeds done so far.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import workloads

ROOT = Path(__file__).resolve().parents[1]
KEPT = ("test_accuracy", "val_accuracy", "train_time_s", "epochs", "images_per_sec")


def run(experiment: str, seed: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"cnnjax-{experiment}-"))
    command = [sys.executable, "launch.py", f"--experiment={experiment}", f"--config.train.seed={seed}"]
    env = {**os.environ, "CNNJAX_COMPILATION_CACHE": str(workdir / "xla")}
    start = time.time()
    subprocess.run([*command, f"--workdir={workdir / 'run'}"], cwd=ROOT, env=env, check=True)
    wall = time.time() - start
    results = json.loads((workdir / "run" / "results.json").read_text())
    return {"seed": seed, "wall_s": wall, "first_step_s": results["first_step_at"] - start,
            **{key: results[key] for key in KEPT}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    module = importlib.import_module(f"experiments.{args.experiment}")
    target, seconds = module.TARGET_ACCURACY, module.TARGET_SECONDS
    runs = []
    for seed in args.seeds.split(","):  # the result file is rewritten after each seed: a stopped bench keeps those done
        runs.append(r := run(args.experiment, int(seed)))
        print(f"seed {r['seed']}: {100 * r['test_accuracy']:.2f}% test ({100 * r['val_accuracy']:.2f}% validation) "
              f"in {r['wall_s']:.1f} s (first step at {r['first_step_s']:.1f} s, training {r['train_time_s']:.1f} s)")  # fmt: skip
        met = all(r["test_accuracy"] >= target and r["wall_s"] <= seconds for r in runs)
        path = workloads.write_result(
            f"speedrun-{args.experiment}",
            {"command": f"python launch.py --experiment={args.experiment}", "target_accuracy": target,
             "target_seconds": seconds, "met": met, "runs": runs},
        )  # fmt: skip
    print(
        f"{args.experiment}: {100 * target:.0f}% test in {seconds:.0f} s for seeds {args.seeds}: "
        f"{'met' if met else 'NOT met'}; wrote {path}"
    )


if __name__ == "__main__":
    main()
