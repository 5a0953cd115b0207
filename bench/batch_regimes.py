"""One example at a time against mini-batches: accuracy after the same images, and the time it takes.

    PYTHONPATH=. .venv/bin/python bench/batch_regimes.py [--experiment=lenet] [--batch_sizes=1,8,32,128] [--epochs=1]

The classic comparison of per-example ("online") and batch training, on the prepared Fashion-MNIST: each batch
size trains the experiment's model with plain SGD (a constant rate, no momentum) for ``--epochs`` epochs, i.e. the
same 54,000 images per epoch, at five learning rates 0.01 * sqrt(batch) * 3^k for k = -2 ... 2; the rate with the
best validation accuracy is reported with its test accuracy, training time and whole-run time (a rate at which
training diverges is recorded as such). Writes
``bench/results/batch_regimes-<name>-<cpu>.json``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import tempfile
from pathlib import Path

import workloads

from cnnjax import train


def regime(name: str, batch_size: int, epochs: int) -> dict:
    """The best of five learning rates at ``batch_size``: its rate, accuracies and times, and every rate's."""
    tried = {}
    for factor in (1 / 9, 1 / 3, 1, 3, 9):
        config = importlib.import_module(f"experiments.{name}").get_config()
        rate = round(0.01 * math.sqrt(batch_size) * factor, 5)
        with config.unlocked():
            config.data.batch_size = batch_size
            config.optim.name, config.optim.schedule, config.optim.learning_rate = "sgd", "constant", rate
            config.train.num_epochs = epochs
        try:
            results = train.train_and_evaluate(config, Path(tempfile.mkdtemp(prefix="cnnjax-regime-")) / "run")
        except train.TrainingDiverged:
            tried[rate] = {"val_accuracy": None, "diverged": True}
            continue
        tried[rate] = {key: results[key] for key in ("val_accuracy", "test_accuracy", "train_time_s", "wall_time_s")}
    best = max(
        (rate for rate in tried if not tried[rate].get("diverged")), key=lambda rate: tried[rate]["val_accuracy"]
    )
    return {"learning_rate": best, **tried[best], "tried": tried}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiment", default="lenet")
    parser.add_argument("--batch_sizes", default="1,8,32,128")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    regimes = {}
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        regimes[batch_size] = r = regime(args.experiment, batch_size, args.epochs)
        print(f"batch {batch_size}: SGD lr {r['learning_rate']}: {100 * r['val_accuracy']:.2f}% validation, "
              f"{100 * r['test_accuracy']:.2f}% test after {args.epochs} epoch(s), trained in {r['train_time_s']:.1f} s "
              f"({r['wall_time_s']:.1f} s in all)", flush=True)  # fmt: skip
    path = workloads.write_result(f"batch_regimes-{args.experiment}",
                                  {"experiment": args.experiment, "epochs": args.epochs, "regimes": regimes})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
