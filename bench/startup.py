"""Start-up: from the command to the first finished training step, for whole ``launch.py`` processes.

    PYTHONPATH=. .venv/bin/python bench/startup.py [--experiment=lenet] [--rounds=3]

Each round runs ``python launch.py --experiment=NAME --config.train.max_steps=1`` (on the prepared offline data)
twice: once with an empty compilation cache ('cold': every program compiles) and once more with the cache the first
run filled ('warm': a user's second run of the experiment). The time to the first step is the run's
``first_step_at`` (results.json) minus the moment this script started the process. Also timed: importing what the
launcher imports. Prints the medians; writes ``bench/results/startup-<name>-<cpu>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import workloads

ROOT = Path(__file__).resolve().parents[1]


def first_step_s(experiment: str, cache: Path) -> float:
    """Seconds from starting ``launch.py`` to its first finished training step, with compilation cache ``cache``."""
    workdir = Path(tempfile.mkdtemp(prefix=f"cnnjax-{experiment}-")) / "run"
    command = [sys.executable, "launch.py", f"--experiment={experiment}", "--config.train.max_steps=1",
               f"--workdir={workdir}"]  # fmt: skip
    environ = {**os.environ, "CNNJAX_COMPILATION_CACHE": str(cache)}
    start = time.time()
    subprocess.run(command, cwd=ROOT, env=environ, check=True, capture_output=True)
    return json.loads((workdir / "results.json").read_text())["first_step_at"] - start


def import_s() -> float:
    """Seconds for a fresh interpreter to import what ``launch.py`` imports before it trains."""
    code = "import time; t = time.time(); import launch, cnnjax.train; print(time.time() - t)"
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return float(output.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiment", default="lenet")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cold, warm, imports = [], [], []
    for _ in range(args.rounds):
        cache = Path(tempfile.mkdtemp(prefix="cnnjax-xla-cache-"))
        cold.append(first_step_s(args.experiment, cache))
        warm.append(first_step_s(args.experiment, cache))
        imports.append(import_s())
    result = {
        "command": f"python launch.py --experiment={args.experiment}",
        "rounds": args.rounds,
        "first_step_cold_cache_s": statistics.median(cold),
        "first_step_warm_cache_s": statistics.median(warm),
        "imports_s": statistics.median(imports),
        "all_cold_s": cold,
        "all_warm_s": warm,
    }
    path = workloads.write_result(f"startup-{args.experiment}", result)
    print(f"{args.experiment}: first step {result['first_step_cold_cache_s']:.1f} s after the command (empty "
          f"compilation cache), {result['first_step_warm_cache_s']:.1f} s (warm); imports "
          f"{result['imports_s']:.1f} s; wrote {path}")  # fmt: skip


if __name__ == "__main__":
    main()
