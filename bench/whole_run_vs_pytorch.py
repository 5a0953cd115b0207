"""Whole runs against PyTorch eager doing the same work: the command's wall time, start-up included.

    PYTHONPATH=. .venv/bin/python bench/whole_run_vs_pytorch.py [--experiments=lenet,resnet] [--epochs=...] [--rounds=2]

cnnjax: ``python launch.py --experiment=NAME --config.train.num_epochs=E`` on the prepared offline Fashion-MNIST, with
an empty compilation cache (a first run). PyTorch: this script with ``--torch=NAME`` in a process of its own, written
as a PyTorch user would: the same model (bench/torch_twins.py), optimizer, schedule, augmentation, batch 128,
the same 54,000 / 6,000 / 10,000 split read from Debian's files and standardized with the training split's mean and
standard deviation, a validation pass each epoch with the best weights kept, a checkpoint (model and optimizer) each
epoch, the test on the best weights at the end. The two alternate for ``--rounds`` rounds; the medians of the wall
times and their ratio are printed and written to ``bench/results/whole_run_vs_pytorch-<cpu>.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
EPOCHS = {"lenet": 10, "resnet": 2}  # lenet: its whole experiment; resnet (ResNet-20): 2 of its 30 epochs


def read_idx(path: Path):
    import numpy as np

    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def torch_run(name: str, epochs: int, workdir: Path) -> dict:
    """The PyTorch twin of ``launch.py --experiment=NAME`` for ``epochs`` epochs; its validation and test accuracy."""
    import copy
    import math

    import numpy as np
    import torch
    import torch_twins

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    train_x, train_y = (
        read_idx(FASHION_MNIST / "train-images-idx3-ubyte.gz"),
        read_idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz"),
    )
    test_x, test_y = (
        read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz"),
        read_idx(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz"),
    )
    order = np.random.default_rng(0).permutation(len(train_x))
    val_index, train_index = order[:6000], order[6000:]
    scaled = train_x[train_index] / 255.0
    mean, std = scaled.mean(), scaled.std()
    tensor = lambda x: torch.from_numpy(((x / 255.0 - mean) / std).astype(np.float32)[:, None])  # noqa: E731
    x_train, x_val, x_test = tensor(train_x[train_index]), tensor(train_x[val_index]), tensor(test_x)
    y_train, y_val, y_test = (
        torch.from_numpy(y.astype(np.int64)) for y in (train_y[train_index], train_y[val_index], test_y)
    )
    model = torch_twins.torch_resnet20(in_channels=1) if name == "resnet" else torch_twins.TORCH_MODELS[name]()
    steps_per_epoch = len(x_train) // 128
    total, warmup = epochs * steps_per_epoch, (steps_per_epoch if name == "resnet" else 0)
    if name == "resnet":  # modern_recipe: Nesterov SGD 0.1, L2 5e-4, one warmup epoch, cosine; crops of 2, flips
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:  # lenet: Adam 2e-3, cosine
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    cosine = lambda t: (
        t / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, total - warmup)))
    )  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    loss_fn = torch.nn.CrossEntropyLoss()

    def augment(x):
        """Per-image random crops from a 2-pixel zero padding and random left-right flips."""
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
        rows = torch.randint(0, 5, (n, 1)) + torch.arange(h)
        cols = torch.randint(0, 5, (n, 1)) + torch.arange(w)
        x = padded[torch.arange(n)[:, None, None], 0, rows[:, :, None], cols[:, None, :]][:, None]
        return torch.where(torch.rand(n, 1, 1, 1) < 0.5, x.flip(-1), x)

    def accuracy(x, y) -> float:
        model.eval()
        with torch.no_grad():
            correct = sum(
                (model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum().item() for i in range(0, len(x), 1000)
            )
        model.train()
        return correct / len(x)

    best, best_state = -1.0, None
    for epoch in range(epochs):
        permutation = torch.randperm(len(x_train))
        for i in range(steps_per_epoch):
            index = permutation[i * 128 : (i + 1) * 128]
            x, y = x_train[index], y_train[index]
            if name == "resnet":
                x = augment(x)
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()
            schedule.step()
        val = accuracy(x_val, y_val)
        if val > best:
            best, best_state = val, copy.deepcopy(model.state_dict())
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
            workdir / "checkpoint.pt",
        )
    model.load_state_dict(best_state)
    return {"val_accuracy": best, "test_accuracy": accuracy(x_test, y_test)}


def timed(command: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def run_phases(command_s: float, results: dict) -> dict:
    """Splits a cnnjax command's ``command_s`` seconds by its ``results.json``: start-up (to the end of the first
    training step, imports and compilation included), training (the epochs, that first step included), and the rest
    (validation passes, checkpoints, the test, exit: a lower bound, as the first step counts twice)."""
    start_up = command_s - results["wall_time_s"] + results["time_to_first_step_s"]
    training = results["train_time_s"]
    return {"start_up": start_up, "training": training, "rest": command_s - start_up - training}


def compare(name: str, epochs: int, rounds: int) -> dict:
    cnnjax_s, torch_s, phases, accuracies = [], [], [], {}
    for _ in range(rounds):
        workdir = Path(tempfile.mkdtemp(prefix=f"cnnjax-{name}-"))
        env = {**os.environ, "CNNJAX_COMPILATION_CACHE": str(workdir / "xla")}  # empty: compiles as a first run does
        command = [sys.executable, "launch.py", f"--experiment={name}", f"--config.train.num_epochs={epochs}"]
        cnnjax_s.append(timed([*command, f"--workdir={workdir / 'run'}"], env))
        results = json.loads((workdir / "run" / "results.json").read_text())
        phases.append(run_phases(cnnjax_s[-1], results))
        accuracies["cnnjax"] = {k: results[k] for k in ("val_accuracy", "test_accuracy")}
        torch_s.append(
            timed([sys.executable, __file__, f"--torch={name}", f"--epochs={epochs}", f"--workdir={workdir}"])
        )
        accuracies["torch"] = json.loads((workdir / "torch.json").read_text())
    entry = {
        "epochs": epochs,
        "cnnjax_s": statistics.median(cnnjax_s),
        "torch_s": statistics.median(torch_s),
        "all_cnnjax_s": cnnjax_s,
        "all_torch_s": torch_s,
        "accuracy": accuracies,
        "cnnjax_phases_s": {part: statistics.median(p[part] for p in phases) for part in phases[0]},
    }
    entry["ratio"] = entry["torch_s"] / entry["cnnjax_s"]
    return entry


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", default="lenet,resnet")
    parser.add_argument("--epochs", default="", help="comma-separated, one per experiment (default: EPOCHS)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--torch", help="(internal) run the PyTorch twin of this experiment")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    if args.torch:
        result = torch_run(args.torch, int(args.epochs), Path(args.workdir))
        (Path(args.workdir) / "torch.json").write_text(json.dumps(result))
        return
    import torch
    import workloads

    names = args.experiments.split(",")
    epochs = [int(e) for e in args.epochs.split(",")] if args.epochs else [EPOCHS[n] for n in names]
    result = {"torch": torch.__version__, "rounds": args.rounds, "experiments": {}}
    for name, count in zip(names, epochs):
        entry = result["experiments"][name] = compare(name, count, args.rounds)
        print(f"{name} ({count} epochs): cnnjax {entry['cnnjax_s']:.1f} s, PyTorch eager {entry['torch_s']:.1f} s: "
              f"{entry['ratio']:.2f}x; test accuracy {100 * entry['accuracy']['cnnjax']['test_accuracy']:.2f}% vs "
              f"{100 * entry['accuracy']['torch']['test_accuracy']:.2f}%")  # fmt: skip
    result["measured_at"] = workloads.kept_from_before(result, "whole_run_vs_pytorch", same=("torch",))
    print(f"wrote {workloads.write_result('whole_run_vs_pytorch', result)}")


if __name__ == "__main__":
    main()
