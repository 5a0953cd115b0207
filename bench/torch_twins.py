"""The PyTorch twins of the zoo models the benchmarks train (NCHW), importing only torch: the whole-run comparison
runs them in processes that must not pay for importing JAX."""

from __future__ import annotations

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
