"""The vanishing gradient: ``experiments/lenet_sigmoid.py`` against the same network with ReLU, one process.

    PYTHONPATH=. .venv/bin/python bench/vanishing_gradients.py [--epochs=2]

Trains both for ``--epochs`` epochs on the prepared Fashion-MNIST (plain SGD, as the experiment) through
``train.train_and_evaluate`` and reports, per activation: each layer's gradient norm at the first logged step, the
input layer's over the output layer's (conv1 / logits), the dead ReLU units and the test accuracy. Writes
``bench/results/vanishing_gradients-<cpu>.json``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import workloads

from cnnjax import metrics, train
from experiments import lenet_sigmoid


def run(activation: str, epochs: int) -> dict:
    config = lenet_sigmoid.get_config()
    with config.unlocked():
        config.model.activation = activation
        config.train.num_epochs = epochs
    workdir = Path(tempfile.mkdtemp(prefix="cnnjax-vanishing-")) / activation
    results = train.train_and_evaluate(config, workdir)
    first = next(r for r in metrics.read_records(workdir / "metrics.jsonl") if r["kind"] == "train")
    norms = {k.removeprefix("grad_norm/"): v for k, v in first.items() if k.startswith("grad_norm/")}
    return {"first_step_grad_norms": norms, "input_over_output": norms["conv1"] / norms["logits"],
            "test_accuracy": results["test_accuracy"], "dead_units": results["dead_units"],
            "chance_level_epochs": results["chance_level_epochs"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    runs = {activation: run(activation, args.epochs) for activation in ("sigmoid", "relu")}
    for activation, r in runs.items():
        layers = ", ".join(f"{k} {v:.2g}" for k, v in r["first_step_grad_norms"].items())
        print(f"{activation}: first-step gradient norms {layers} (conv1 / logits {r['input_over_output']:.3g}); "
              f"test accuracy {100 * r['test_accuracy']:.2f}% after {args.epochs} epochs")  # fmt: skip
    path = workloads.write_result("vanishing_gradients", {"epochs": args.epochs, "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
