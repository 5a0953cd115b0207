"""LeNet: the exact 1998 LeNet-5 and a configurable modern LeNet.

LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition", Proc. IEEE 1998.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import numpy as np

from cnnjax import functional as F
from cnnjax import nn as cnn
from cnnjax.models.blocks import activation, initializers

# LeNet-5's Table I: which of S2's 6 maps (rows) feed each of C3's 16 maps (columns).
C3_TABLE = np.array(
    [
        # 0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15
        [1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1],
        [1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1],
        [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 1],
        [0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 1, 1],
        [0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1],
        [0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 1],
    ],
    dtype=bool,
)

_DIGIT_BITMAPS = {
    "0": [".......", "..###..", ".#...#.", "#.....#", "#.....#", "#.....#",
          "#.....#", "#.....#", ".#...#.", "..###..", ".......", "......."],
    "1": [".......", "...#...", "..##...", ".#.#...", "...#...", "...#...",
          "...#...", "...#...", "...#...", ".#####.", ".......", "......."],
    "2": [".......", "..###..", ".#...#.", ".....#.", ".....#.", "....#..",
          "...#...", "..#....", ".#.....", ".#####.", ".......", "......."],
    "3": [".......", ".####..", ".....#.", ".....#.", "..###..", ".....#.",
          ".....#.", ".....#.", ".....#.", ".####..", ".......", "......."],
    "4": [".......", "....#..", "...##..", "..#.#..", ".#..#..", "#...#..",
          "#######", "....#..", "....#..", "....#..", ".......", "......."],
    "5": [".......", ".#####.", ".#.....", ".#.....", ".####..", ".....#.",
          ".....#.", ".....#.", ".#...#.", "..###..", ".......", "......."],
    "6": [".......", "..###..", ".#.....", "#......", "#.###..", "##...#.",
          "#.....#", "#.....#", ".#...#.", "..###..", ".......", "......."],
    "7": [".......", "#######", "......#", ".....#.", "....#..", "...#...",
          "...#...", "..#....", "..#....", "..#....", ".......", "......."],
    "8": [".......", "..###..", ".#...#.", ".#...#.", "..###..", ".#...#.",
          "#.....#", "#.....#", ".#...#.", "..###..", ".......", "......."],
    "9": [".......", "..###..", ".#...#.", "#.....#", "#.....#", ".#...##",
          "..###.#", "......#", ".....#.", "..###..", ".......", "......."],
}  # fmt: skip


def rbf_codes() -> np.ndarray:
    """The 10 x 84 RBF prototypes: a 7x12 bitmap per digit, +1 for ink and -1 for background.

    Drawn after Fig. 3 of the paper (stylized 7x12 characters; the paper's exact bitmaps are not published as data).
    """
    return np.array(
        [[1.0 if c == "#" else -1.0 for row in _DIGIT_BITMAPS[str(d)] for c in row] for d in range(10)],
        dtype=np.float32,
    )


class LeNet5Classic(nn.Module):
    """The 1998 LeNet-5 on 32x32x1 input (28x28 digits padded by 2), returning RBF penalties (N, 10).

    C1 conv 6@28x28 (5x5) - S2 trainable subsampling 6@14x14 - C3 partial conv 16@10x10 with Table I - S4 16@5x5 -
    C5 conv 120@1x1 (5x5) - F6 84 - output 10 Euclidean RBF units. Every layer up to F6 is squashed by the scaled
    tanh ``1.7159 tanh(2a/3)``. Weights start uniform in +-2.4 / fan_in. The output ``y_i`` is the squared distance
    from F6's state to the code of class i: the predicted class is the argmin (use ``-y`` as scores). With fixed
    codes the model has 60,840 parameters, 60,000 of them trainable.
    """

    rbf_trainable: bool = False

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train  # no dropout or batch statistics in LeNet-5
        init = F.lecun98_uniform()
        squash = F.lecun_tanh
        x = squash(cnn.Conv2D(6, 5, kernel_init=init, name="C1")(x))
        x = squash(cnn.Subsampling(2, coefficient_init=F.lecun98_uniform(fan_in=4), name="S2")(x))
        c3_fan_in = C3_TABLE.sum() * 25 / C3_TABLE.shape[1]  # the mean fan-in of a C3 unit
        x = squash(cnn.PartialConv2D(C3_TABLE, 5, kernel_init=F.lecun98_uniform(fan_in=c3_fan_in), name="C3")(x))
        x = squash(cnn.Subsampling(2, coefficient_init=F.lecun98_uniform(fan_in=4), name="S4")(x))
        x = squash(cnn.Conv2D(120, 5, kernel_init=init, name="C5")(x))
        x = squash(cnn.Dense(84, kernel_init=init, name="F6")(F.flatten(x)))
        return cnn.RBFOutput(rbf_codes(), trainable=self.rbf_trainable, name="output")(x)


def per_layer(value, count: int, field: str) -> tuple:
    """Broadcasts a scalar hyperparameter to ``count`` layers, or checks that a sequence has one entry per layer.

    Args:
      value: a scalar, or a sequence with one entry per layer.
      count: the number of layers.
      field: the model field's name, used in the error message.

    Returns:
      A tuple of ``count`` entries.

    >>> per_layer(5, 2, "kernel_size"), per_layer([3, 5], 2, "kernel_size")
    ((5, 5), (3, 5))
    """
    if isinstance(value, (str, int, float)) or value is None:
        return (value,) * count
    value = tuple(value)
    if len(value) != count:
        raise ValueError(f"model.{field} has {len(value)} entries {value} but the model has {count} such layers")
    return value


class LeNet(nn.Module):
    """Modern, configurable LeNet: [conv - activation - pool] per entry of ``filters``, then dense ``hidden`` layers.

    Defaults: conv5x5x6 (SAME) - pool2 - conv5x5x16 (VALID) - pool2 - 120 - 84 - 10, ReLU and max pooling.
    ``kernel_size``, ``pool_size`` and ``padding`` take one value for all conv layers or one per layer; ``dropout``
    (drop probability) is applied before each dense layer in training. ``kernel_init`` and ``bias_init`` name every
    layer's initializers (:func:`cnnjax.functional.initializer`). (N, H, W, C) -> logits (N, num_classes).
    """

    filters: Sequence[int] = (6, 16)
    kernel_size: int | Sequence[int] = 5
    pool_size: int | Sequence[int] = 2
    pool: str = "max"
    activation: str = "relu"
    hidden: Sequence[int] = (120, 84)
    padding: str | Sequence = ("SAME", "VALID")
    dropout: float = 0.0
    kernel_init: str = "lecun_normal"  # every layer's (functional.initializer names, e.g. 'uniform:0.3')
    bias_init: str = "zeros"
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        init = initializers(self.kernel_init, self.bias_init)
        pools = {"max": cnn.MaxPool2D, "avg": cnn.AvgPool2D}
        if self.pool not in pools:
            raise ValueError(f"model.pool must be one of {sorted(pools)}, got {self.pool!r}")
        n = len(self.filters)
        layers = zip(
            self.filters,
            per_layer(self.kernel_size, n, "kernel_size"),
            per_layer(self.pool_size, n, "pool_size"),
            per_layer(self.padding, n, "padding"),
        )
        for i, (features, kernel, pool, padding) in enumerate(layers, start=1):
            x = activation(self.activation, f"conv{i}")(
                cnn.Conv2D(features, kernel, padding=padding, name=f"conv{i}", **init)(x)
            )
            x = pools[self.pool](pool, name=f"pool{i}")(x)
        x = F.flatten(x)
        for i, features in enumerate(self.hidden, start=1):
            x = cnn.Dropout(self.dropout, deterministic=not train)(x)
            x = activation(self.activation, f"fc{i}")(cnn.Dense(features, name=f"fc{i}", **init)(x))
        x = cnn.Dropout(self.dropout, deterministic=not train)(x)
        return cnn.Dense(self.num_classes, name="logits", **init)(x)
