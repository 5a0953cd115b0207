"""The CIFAR-10 network of our source tutorial (after TensorFlow's classic CIFAR-10 CNN)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from cnnjax import functional as F
from cnnjax import nn as cnn
from cnnjax.models.blocks import initializers
from cnnjax.models.lenet import per_layer


class CifarCNN(nn.Module):
    """conv 5x5x64 - relu - max pool 3 stride 2 SAME - LRN - conv 5x5x64 - relu - LRN - max pool 2 stride 2 -
    dense 256 - relu - dense 10. (N, H, W, C) -> logits (N, num_classes).

    LRN uses the tutorial's depth_radius=4, bias=1, alpha=0.001/9, beta=0.75. ``hidden`` sets the dense layers (the
    tutorial also used 384-192); ``pool2_size``/``pool2_stride`` the second pool (TensorFlow's version used 3/2 SAME).

    Not copied from the tutorial's code, which had two bugs: it applied a ReLU to the output logits (so negative
    evidence for a class could not be expressed), and it applied softmax to logits that were then fed to a loss
    that applies softmax again. Here the logits are linear and the loss applies the only softmax.
    """

    filters: Sequence[int] = (64, 64)
    kernel_size: int = 5
    hidden: Sequence[int] = (256,)
    pool2_size: int = 2
    pool2_stride: int = 2
    lrn: bool = True
    dropout: float = 0.0
    kernel_init: str = "lecun_normal"  # every layer's (functional.initializer names)
    bias_init: str = "zeros"
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        init = initializers(self.kernel_init, self.bias_init)

        def norm(y, name):
            return cnn.LRN(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75, name=name)(y) if self.lrn else y

        conv1, conv2 = per_layer(self.filters, 2, "filters")
        x = cnn.ReLU(name="conv1_relu")(cnn.Conv2D(conv1, self.kernel_size, padding="SAME", name="conv1", **init)(x))
        x = norm(cnn.MaxPool2D(3, stride=2, padding="SAME", name="pool1")(x), "norm1")
        x = cnn.ReLU(name="conv2_relu")(cnn.Conv2D(conv2, self.kernel_size, padding="SAME", name="conv2", **init)(x))
        x = norm(x, "norm2")
        x = cnn.MaxPool2D(self.pool2_size, stride=self.pool2_stride, padding="SAME", name="pool2")(x)
        x = F.flatten(x)
        for i, features in enumerate(self.hidden, start=1):
            x = cnn.ReLU(name=f"fc{i}_relu")(cnn.Dense(features, name=f"fc{i}", **init)(x))
            x = cnn.Dropout(self.dropout, deterministic=not train)(x)
        return cnn.Dense(self.num_classes, name="logits", **init)(x)
