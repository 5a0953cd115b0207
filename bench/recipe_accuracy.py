"""Accuracy of training recipes at one budget: whole runs of an experiment, chosen on validation.

    PYTHONPATH=. .venv/bin/python bench/recipe_accuracy.py [--experiment=resnet9] [--epochs=6] [--recipes=...]

Runs ``python launch.py --experiment=NAME --config.train.num_epochs=EPOCHS`` once per recipe below (its overrides
added), one after the other on the prepared offline data, each in a fresh run directory. The recipes cost the same
per step within noise on ``resnet9`` (bench/results/recipe_cost-*.json), so equal epochs are an equal time budget;
The winner is the recipe with the best validation accuracy; every test
accuracy is recorded, but only the winner's is the result. Writes ``bench/results/recipe_accuracy-<name>-<cpu>.json``.
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
RECIPES = {
    "own": [],  # the experiment as it is
    "ema": ["--config.train.ema_decay=0.998"],
    "ema+lookahead": ["--config.train.ema_decay=0.998", "--config.optim.lookahead=5"],
    "ema+smoothing": ["--config.train.ema_decay=0.998", "--config.train.label_smoothing=0.1"],
    "ema+cutmix": ["--config.train.ema_decay=0.998", "--config.data.cutmix_alpha=1.0", "--config.data.mix_prob=0.5"],
}


def run(experiment: str, epochs: int, overrides: list[str]) -> dict:
    """One whole run; its command, process wall time and results (validation and test accuracy, times)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"cnnjax-{experiment}-")) / "run"
    command = [sys.executable, "launch.py", f"--experiment={experiment}", f"--config.train.num_epochs={epochs}",
               *overrides]  # fmt: skip
    start = time.perf_counter()
    subprocess.run([*command, f"--workdir={workdir}"], cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    results = json.loads((workdir / "results.json").read_text())
    return {
        "command": " ".join(["python launch.py", *command[2:]]),
        "process_wall_s": wall,
        **{key: results[key] for key in ("val_accuracy", "test_accuracy", "best_epoch", "train_time_s")},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiment", default="resnet9")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args()
    runs = {}
    for name in args.recipes.split(","):
        runs[name] = run(args.experiment, args.epochs, RECIPES[name])
        print(f"{name}: {100 * runs[name]['val_accuracy']:.2f}% validation in {runs[name]['process_wall_s']:.0f} s")
    winner = max(runs, key=lambda name: runs[name]["val_accuracy"])
    path = workloads.write_result(
        f"recipe_accuracy-{args.experiment}",
        {
            "experiment": args.experiment,
            "epochs": args.epochs,
            "selected_on": "val_accuracy",
            "winner": winner,
            "runs": runs,
        },  # fmt: skip
    )
    print(f"winner on validation: {winner}, {100 * runs[winner]['test_accuracy']:.2f}% test; wrote {path}")


if __name__ == "__main__":
    main()
