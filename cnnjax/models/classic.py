"""AlexNet, VGG, Network in Network and GoogLeNet (Inception v1), sized for 28x28 and 32x32 inputs by default.

Each keeps the idea its paper introduced: AlexNet's large first kernel, ReLU, LRN and dropout in the dense head;
VGG's stacks of 3x3 convolutions; NiN's 1x1 convolutions ("micro networks") and global average pooling instead of
dense layers; GoogLeNet's multi-branch Inception blocks with 1x1 reductions that cut the computation.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from cnnjax import functional as F
from cnnjax import nn as cnn
from cnnjax.models.blocks import conv_norm_relu, initializers

# --------------------------------------------------------------------------------------------------------------------


class AlexNet(nn.Module):
    """AlexNet (Krizhevsky et al., 2012) for small images: five convolutions (a large first kernel), ReLU, LRN after
    the first two, overlapping 3/2 max pooling, and two dropout-regularized dense layers.

    ``first_kernel``/``first_stride`` default to 5/1 for 28-32 pixel inputs (the original: 11/4 on 224x224).
    (N, H, W, C) -> logits (N, num_classes).
    """

    filters: Sequence[int] = (64, 192, 384, 256, 256)
    first_kernel: int = 5
    first_stride: int = 1
    hidden: Sequence[int] = (1024, 1024)
    lrn: bool = True
    dropout: float = 0.5
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        def norm(y, name):
            return cnn.LRN(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75, name=name)(y) if self.lrn else y

        f1, f2, f3, f4, f5 = self.filters
        x = cnn.ReLU(name="conv1_relu")(
            cnn.Conv2D(f1, self.first_kernel, stride=self.first_stride, padding="SAME", name="conv1")(x)
        )
        x = cnn.MaxPool2D(3, stride=2, padding="SAME", name="pool1")(norm(x, "lrn1"))
        x = cnn.ReLU(name="conv2_relu")(cnn.Conv2D(f2, 5, padding="SAME", name="conv2")(x))
        x = cnn.MaxPool2D(3, stride=2, padding="SAME", name="pool2")(norm(x, "lrn2"))
        for i, features in enumerate((f3, f4, f5), start=3):
            x = cnn.ReLU(name=f"conv{i}_relu")(cnn.Conv2D(features, 3, padding="SAME", name=f"conv{i}")(x))
        x = F.flatten(cnn.MaxPool2D(3, stride=2, padding="SAME", name="pool5")(x))
        for i, features in enumerate(self.hidden, start=1):
            x = cnn.ReLU(name=f"fc{i}_relu")(cnn.Dense(features, name=f"fc{i}")(x))
            x = cnn.Dropout(self.dropout, deterministic=not train)(x)
        return cnn.Dense(self.num_classes, name="logits")(x)


# --------------------------------------------------------------------------------------------------------------------

VGG_LAYERS = {  # filters per conv, 'M' = 2x2 max pooling (Simonyan & Zisserman, 2014, configurations A, B, D, E)
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """VGG-11/13/16/19: stacks of 3x3 convolutions and 2x2 max pooling (SAME, so 28x28 inputs keep a 1x1 map).

    ``width`` scales every filter count (e.g. 0.25 for CIFAR-width variants); ``norm='batch'`` gives VGG-BN.
    ``head='imagenet'``: flatten - 4096 - 4096 - classes with dropout (VGG-16 on 224x224 with 1000 classes has
    138,357,544 parameters); ``head='cifar'``: global average pooling - ``hidden`` - classes.
    """

    depth: int = 16
    width: float = 0.25
    norm: str = "batch"
    head: str = "cifar"
    hidden: int = 256
    dropout: float = 0.5
    kernel_init: str = ""  # every layer's (functional.initializer names); '': He normal convs, LeCun normal dense
    bias_init: str = "zeros"
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        conv_init = initializers(self.kernel_init or "he_normal", self.bias_init)
        dense_init = initializers(self.kernel_init or "lecun_normal", self.bias_init)
        if self.depth not in VGG_LAYERS:
            raise ValueError(f"model.depth={self.depth}: VGG has depth {sorted(VGG_LAYERS)}")
        conv_index = pool_index = 0
        for layer in VGG_LAYERS[self.depth]:
            if layer == "M":
                pool_index += 1
                x = cnn.MaxPool2D(2, padding="SAME", name=f"pool{pool_index}")(x)
            else:
                conv_index += 1
                features = max(1, int(layer * self.width))
                x = conv_norm_relu(x, features, 3, name=f"conv{conv_index}", norm=self.norm, train=train,
                                   init=conv_init)  # fmt: skip
        if self.head == "imagenet":
            x = F.flatten(x)
            for i in (1, 2):
                dense = cnn.Dense(4096, name=f"fc{i}", **dense_init)
                x = cnn.Dropout(self.dropout, deterministic=not train)(cnn.ReLU(name=f"fc{i}_relu")(dense(x)))
        elif self.head == "cifar":
            x = cnn.Dense(self.hidden, name="fc1", **dense_init)(cnn.GlobalAvgPool(name="gap")(x))
            x = cnn.ReLU(name="fc1_relu")(x)
            x = cnn.Dropout(self.dropout, deterministic=not train)(x)
        else:
            raise ValueError(f"model.head must be 'imagenet' or 'cifar', got {self.head!r}")
        return cnn.Dense(self.num_classes, name="logits", **dense_init)(x)


# --------------------------------------------------------------------------------------------------------------------


class NiN(nn.Module):
    """Network in Network (Lin et al., 2013): three blocks of a spatial conv and two 1x1 convs (a per-pixel MLP),
    pooling and dropout between them; the last block outputs one map per class and global average pooling replaces
    the dense layers. (N, H, W, C) -> logits (N, num_classes).
    """

    blocks: Sequence[Sequence[int]] = ((192, 160, 96), (192, 192, 192), (192, 192))
    kernels: Sequence[int] = (5, 5, 3)
    dropout: float = 0.5
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        for b, (features, kernel) in enumerate(zip(self.blocks, self.kernels), start=1):
            last = b == len(self.blocks)
            widths = (*features, self.num_classes) if last else features
            for i, width in enumerate(widths):
                conv = cnn.Conv2D(width, kernel if i == 0 else 1, padding="SAME", name=f"block{b}_conv{i + 1}")
                x = cnn.ReLU(name=f"block{b}_conv{i + 1}_relu")(conv(x))
            if not last:
                x = cnn.MaxPool2D(3, stride=2, padding="SAME", name=f"pool{b}")(x)
                x = cnn.Dropout(self.dropout, deterministic=not train)(x)
        return cnn.GlobalAvgPool(name="gap")(x)


# --------------------------------------------------------------------------------------------------------------------


class Inception(nn.Module):
    """An Inception v1 block: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1, concatenated on channels.

    ``features`` = (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection).
    """

    features: Sequence[int]
    norm: str
    train: bool

    @nn.compact
    def __call__(self, x):
        c1, r3, c3, r5, c5, cp = self.features
        block = lambda y, f, k, name: conv_norm_relu(y, f, k, name=name, norm=self.norm, train=self.train)  # noqa: E731
        branch1 = block(x, c1, 1, "b1")
        branch3 = block(block(x, r3, 1, "b3_reduce"), c3, 3, "b3")
        branch5 = block(block(x, r5, 1, "b5_reduce"), c5, 5, "b5")
        pooled = cnn.MaxPool2D(3, stride=1, padding="SAME", name="bp_pool")(x)
        branch_pool = block(pooled, cp, 1, "bp")
        return F.concatenate_channels(branch1, branch3, branch5, branch_pool)


GOOGLENET_BLOCKS = {  # Szegedy et al., 2014, Table 1
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}  # fmt: skip


class GoogLeNet(nn.Module):
    """GoogLeNet (Inception v1) for small inputs: a 3x3 stem instead of the 7x7/2 one, then Inception 3a-3b, pool,
    4a-4e, pool, 5a-5b, global average pooling, dropout 0.4 and the classifier. ``width`` scales every branch.
    (N, H, W, C) -> logits (N, num_classes).
    """

    width: float = 0.5
    norm: str = "batch"
    dropout: float = 0.4
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        scale = lambda fs: tuple(max(1, int(f * self.width)) for f in fs)  # noqa: E731
        x = conv_norm_relu(x, max(1, int(192 * self.width)), 3, name="stem", norm=self.norm, train=train)
        for name in GOOGLENET_BLOCKS:
            if name in ("4a", "5a"):
                x = cnn.MaxPool2D(3, stride=2, padding="SAME", name=f"pool_{name}")(x)
            x = Inception(scale(GOOGLENET_BLOCKS[name]), self.norm, train, name=f"inception_{name}")(x)
        x = cnn.Dropout(self.dropout, deterministic=not train)(cnn.GlobalAvgPool(name="gap")(x))
        return cnn.Dense(self.num_classes, name="logits")(x)
