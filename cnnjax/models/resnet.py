"""ResNet (He et al., 2015/2016): the CIFAR family (ResNet-20/32/44/56/110), the ImageNet ResNet-18/34/50/101/152,
and the DAWNBench ResNet-9 (Page, 2018).

Residual shortcuts let the gradient bypass each block, which is what makes these depths trainable.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from cnnjax import nn as cnn
from cnnjax.models.blocks import conv_norm_relu, initializers, normalization

IMAGENET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class BasicBlock(nn.Module):
    """Two 3x3 convs; the shortcut is the identity, or (when the shape changes) a strided 1x1 conv ('projection')
    or the CIFAR paper's option A: subsampling and zero-padded extra channels, which adds no parameters."""

    features: int
    stride: int
    shortcut: str  # 'projection' | 'zero_pad'
    norm: str
    train: bool
    kernel_init: str = "he_normal"

    @nn.compact
    def __call__(self, x):
        init = initializers(self.kernel_init)
        y = cnn.Conv2D(self.features, 3, stride=self.stride, padding="SAME", use_bias=False, name="conv1", **init)(x)
        y = cnn.ReLU(name="norm1_relu")(normalization(self.norm, self.train, "norm1")(y))
        y = cnn.Conv2D(self.features, 3, padding="SAME", use_bias=False, name="conv2", **init)(y)
        y = normalization(self.norm, self.train, "norm2")(y)
        return cnn.ReLU(name="out_relu")(
            y + shortcut(x, self.features, self.stride, self.shortcut, self.norm, self.train, init)
        )


class Bottleneck(nn.Module):
    """1x1 reduce - 3x3 - 1x1 expand (x4), with a projection shortcut when the shape changes."""

    features: int
    stride: int
    shortcut: str
    norm: str
    train: bool
    kernel_init: str = "he_normal"

    @nn.compact
    def __call__(self, x):
        init = initializers(self.kernel_init)
        conv = lambda f, k, s, name: cnn.Conv2D(f, k, stride=s, padding="SAME", use_bias=False, name=name, **init)  # noqa: E731
        y = cnn.ReLU(name="norm1_relu")(
            normalization(self.norm, self.train, "norm1")(conv(self.features, 1, 1, "conv1")(x))
        )
        y = cnn.ReLU(name="norm2_relu")(
            normalization(self.norm, self.train, "norm2")(conv(self.features, 3, self.stride, "conv2")(y))
        )
        y = normalization(self.norm, self.train, "norm3")(conv(4 * self.features, 1, 1, "conv3")(y))
        return cnn.ReLU(name="out_relu")(
            y + shortcut(x, 4 * self.features, self.stride, self.shortcut, self.norm, self.train, init)
        )


def shortcut(x, features: int, stride: int, kind: str, norm: str, train: bool, init: dict):
    """A residual block's shortcut branch.

    Args:
      x: (N, H, W, C), the block's input.
      features: the block's output channels O.
      stride: the block's stride.
      kind: 'projection' (1x1 conv + norm) or 'A' (subsample, zero-pad the new channels: He et al.'s option A).
      norm, train: as for :func:`cnnjax.models.blocks.normalization`.
      init: the projection's initializers (:func:`cnnjax.models.blocks.initializers`).

    Returns:
      (N, H / stride, W / stride, O): ``x`` itself when the shapes already agree.
    """
    if stride == 1 and x.shape[-1] == features:
        return x
    if kind == "zero_pad":
        x = x[:, ::stride, ::stride, :]
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - x.shape[-1])))
    x = cnn.Conv2D(features, 1, stride=stride, use_bias=False, name="shortcut", **init)(x)
    return normalization(norm, train, "shortcut_norm")(x)


class ResNet(nn.Module):
    """ResNet of ``depth`` layers. (N, H, W, C) -> logits (N, num_classes).

    ``stem='cifar'``: 3x3 conv with ``width`` (16) filters, 3 stages of (depth - 2) / 6 basic blocks with 16/32/64
    filters and option-A shortcuts (ResNet-20: 0.27M parameters, ResNet-56: 0.85M). ``stem='imagenet'``: 7x7/2 conv
    with 64 filters and 3x3/2 max pooling, 4 stages of basic (18, 34) or bottleneck (50+) blocks with projection
    shortcuts (ResNet-18 with 1000 classes: 11,689,512 parameters). Global average pooling and one dense layer.
    """

    depth: int = 20
    stem: str = "cifar"
    width: int = 0  # 0: 16 for the CIFAR family, 64 for ImageNet
    norm: str = "batch"
    kernel_init: str = ""  # every layer's (functional.initializer names); '': He normal convs, LeCun normal dense
    bias_init: str = "zeros"
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        stages, block, shortcut_kind, width = self._plan()
        conv_init = self.kernel_init or "he_normal"
        init = initializers(conv_init)
        if self.stem == "imagenet":
            x = cnn.Conv2D(width, 7, stride=2, padding=3, use_bias=False, name="stem", **init)(x)
            x = cnn.ReLU(name="stem_relu")(normalization(self.norm, train, "stem_norm")(x))
            x = cnn.MaxPool2D(3, stride=2, padding=1, name="stem_pool")(x)
        else:
            x = cnn.Conv2D(width, 3, padding="SAME", use_bias=False, name="stem", **init)(x)
            x = cnn.ReLU(name="stem_relu")(normalization(self.norm, train, "stem_norm")(x))
        for stage, blocks in enumerate(stages):
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                x = block(width * 2**stage, stride, shortcut_kind, self.norm, train, conv_init,
                          name=f"stage{stage + 1}_block{index + 1}")(x)  # fmt: skip
        x = cnn.GlobalAvgPool(name="pool")(x)
        dense_init = initializers(self.kernel_init or "lecun_normal", self.bias_init)
        return cnn.Dense(self.num_classes, name="logits", **dense_init)(x)

    def _plan(self):
        """(blocks per stage, block class, shortcut kind, base width) for this depth and stem."""
        if self.stem == "cifar":
            if (self.depth - 2) % 6 or self.depth < 8:
                raise ValueError(f"model.depth={self.depth}: the CIFAR ResNets have depth 6n + 2 (20, 32, 44, 56, 110)")
            return ((self.depth - 2) // 6,) * 3, BasicBlock, "zero_pad", self.width or 16
        if self.stem == "imagenet":
            if self.depth not in IMAGENET_STAGES:
                raise ValueError(f"model.depth={self.depth}: the ImageNet ResNets have depth {sorted(IMAGENET_STAGES)}")
            block = BasicBlock if self.depth < 50 else Bottleneck
            return IMAGENET_STAGES[self.depth], block, "projection", self.width or 64
        raise ValueError(f"model.stem must be 'cifar' or 'imagenet', got {self.stem!r}")


class ResNet9(nn.Module):
    """The DAWNBench ResNet-9 of Page, "How to train your ResNet" (2018): few layers, pooling early, wide channels,
    which makes it fast per image for its accuracy. (N, H, W, C) -> logits (N, num_classes).

    prep conv (``width``) -> conv (2 ``width``) + 2x2 max pool + a residual pair of convs -> conv (4 ``width``) +
    pool -> conv (8 ``width``) + pool + a residual pair -> global max pool -> dense, times ``output_scale``; every
    conv is 3x3 -> norm -> ReLU. ``width=64`` is the original (6,573,130 parameters on CIFAR-10); 28x28 inputs pool
    to 14, 7 and 3.
    """

    width: int = 64
    norm: str = "batch"
    output_scale: float = 0.125
    kernel_init: str = ""  # every layer's (functional.initializer names); '': He normal convs, LeCun normal dense
    bias_init: str = "zeros"
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        conv_init = initializers(self.kernel_init or "he_normal", self.bias_init)

        def conv(x, scale: int, name: str):
            return conv_norm_relu(x, scale * self.width, 3, name=name, norm=self.norm, train=train, init=conv_init)

        x = conv(x, 1, "prep")
        x = cnn.MaxPool2D(2, name="pool1")(conv(x, 2, "layer1"))
        x = x + conv(conv(x, 2, "residual1a"), 2, "residual1b")
        x = cnn.MaxPool2D(2, name="pool2")(conv(x, 4, "layer2"))
        x = cnn.MaxPool2D(2, name="pool3")(conv(x, 8, "layer3"))
        x = x + conv(conv(x, 8, "residual3a"), 8, "residual3b")
        x = cnn.GlobalMaxPool(name="pool")(x)
        dense_init = initializers(self.kernel_init or "lecun_normal", self.bias_init)
        return cnn.Dense(self.num_classes, name="logits", **dense_init)(x) * self.output_scale
