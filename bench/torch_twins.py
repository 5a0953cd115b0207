"""The PyTorch twins of the zoo models the benchmarks train (NCHW), importing only torch, and their training step
served to a benchmark from a process of their own:

    python bench/torch_twins.py MODEL STEPS HEIGHT WIDTH CHANNELS BATCH

trains MODEL on STEPS fixed random batches once per line read from stdin and answers each with a line. PyTorch runs
8-20% slower in a process that has loaded JAX (measured for LeNet on a 2-core Xeon), so the comparisons keep it in
one that has not.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn as tnn


def torch_lenet():
    return tnn.Sequential(
        tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10),
    )  # fmt: skip


def torch_mnist_cnn():
    return tnn.Sequential(
        tnn.Conv2d(1, 32, 3, padding=1), tnn.ReLU(), tnn.AvgPool2d(2), tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(),
        tnn.AvgPool2d(2), tnn.Flatten(), tnn.Linear(3136, 256), tnn.ReLU(), tnn.Linear(256, 10),
    )  # fmt: skip


def torch_cifar_cnn():
    lrn = lambda: tnn.LocalResponseNorm(9, alpha=9 * 0.001 / 9.0, beta=0.75, k=1.0)  # noqa: E731 - TF semantics
    return tnn.Sequential(
        tnn.Conv2d(3, 64, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(3, 2, padding=1), lrn(),
        tnn.Conv2d(64, 64, 5, padding=2), tnn.ReLU(), lrn(), tnn.MaxPool2d(2), tnn.Flatten(),
        tnn.Linear(4096, 256), tnn.ReLU(), tnn.Linear(256, 10),
    )  # fmt: skip


class TorchBasicBlock(tnn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False), tnn.BatchNorm2d(cout)
        self.conv2, self.bn2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False), tnn.BatchNorm2d(cout)
        self.shortcut = tnn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def torch_resnet20(in_channels: int = 3):
    layers, cin = [tnn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU()], 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for block in range(3):
            layers.append(TorchBasicBlock(cin, cout, stride if block == 0 else 1))
            cin = cout
    return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, 10))


def torch_resnet9(width: int = 16):
    def conv(cin, cout):
        return [tnn.Conv2d(cin, cout, 3, padding=1, bias=False), tnn.BatchNorm2d(cout), tnn.ReLU()]

    class Residual(tnn.Module):
        def __init__(self, channels):
            super().__init__()
            self.body = tnn.Sequential(*conv(channels, channels), *conv(channels, channels))

        def forward(self, x):
            return x + self.body(x)

    w = width
    return tnn.Sequential(
        *conv(1, w), *conv(w, 2 * w), tnn.MaxPool2d(2), Residual(2 * w), *conv(2 * w, 4 * w), tnn.MaxPool2d(2),
        *conv(4 * w, 8 * w), tnn.MaxPool2d(2), Residual(8 * w), tnn.AdaptiveMaxPool2d(1), tnn.Flatten(),
        tnn.Linear(8 * w, 10),
    )  # fmt: skip


TORCH_MODELS = {
    "lenet": torch_lenet,
    "mnist_cnn": torch_mnist_cnn,
    "cifar_cnn": torch_cifar_cnn,
    "resnet20": torch_resnet20,
    "resnet9": torch_resnet9,
}


def train_steps(name: str, steps: int, shape: tuple[int, int, int], batch: int):
    """A function running ``steps`` Adam (1e-3) training steps of TORCH_MODELS[name] on fixed random (batch, C, H, W)
    batches of ``shape`` (H, W, C)."""
    h, w, c = shape
    model = TORCH_MODELS[name]()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(steps, batch, c, h, w, generator=generator)
    labels = torch.randint(0, 10, (steps, batch), generator=generator)
    loss_fn = tnn.CrossEntropyLoss()

    def run():
        for x, y in zip(images, labels):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()

    return run


if __name__ == "__main__":
    name, steps, height, width, channels, batch = sys.argv[1], *map(int, sys.argv[2:])
    torch.set_num_threads(os.cpu_count())
    run = train_steps(name, steps, (height, width, channels), batch)
    for _ in sys.stdin:
        run()
        print("done", flush=True)
