"""Building blocks shared by the model zoo: normalization choice and conv-norm-activation."""

from __future__ import annotations

from cnnjax import functional as F
from cnnjax import nn as cnn

NORMS = ("batch", "group", "layer", "none")


def normalization(kind: str, train: bool, name: str):
    """The normalization layer ``kind`` as a function of x.

    Args:
      kind: 'batch' (running statistics in ``batch_stats``), 'group' (32 groups, or one per channel below 32),
        'layer', or 'none'.
      train: batch norm uses and updates the batch's statistics (else the running ones).
      name: the layer's name in the parameter tree.

    Returns:
      A function (N, H, W, C) -> (N, H, W, C).
    """
    if kind == "batch":
        return cnn.BatchNorm(use_running_average=not train, name=name)
    if kind == "group":
        return lambda x: cnn.GroupNorm(num_groups=min(32, x.shape[-1]), name=name)(x)
    if kind == "layer":
        return cnn.LayerNorm(name=name)
    if kind == "none":
        return lambda x: x
    raise ValueError(f"model.norm must be one of {NORMS}, got {kind!r}")


def activation(kind: str, layer: str):
    """The activation ``kind`` (:data:`cnnjax.functional.ACTIVATIONS`) applied after ``layer``, called inside a Flax
    ``@nn.compact`` method: a ReLU is a :class:`cnnjax.nn.ReLU` named ``<layer>_relu``, so the diagnostics count its
    dead units."""
    return cnn.ReLU(name=f"{layer}_relu") if kind == "relu" else F.activation(kind)


def initializers(kernel_init: str, bias_init: str = "zeros") -> dict:
    """The ``kernel_init`` and ``bias_init`` keyword arguments of Conv2D and Dense from their config names
    (``model.kernel_init``, ``model.bias_init``; :func:`cnnjax.functional.initializer`)."""
    return {"kernel_init": F.initializer(kernel_init, "model.kernel_init"),
            "bias_init": F.initializer(bias_init, "model.bias_init")}  # fmt: skip


def conv_norm_relu(x, features: int, kernel, *, name: str, norm: str, train: bool, stride=1, padding="SAME",
                   init: dict | None = None):  # fmt: skip
    """Conv2D (no bias when normalized) -> normalization -> ReLU, called inside a Flax ``@nn.compact`` method.

    Args:
      x: (N, H, W, C).
      features: the output channels O.
      kernel: the kernel size, an int or (kh, kw).
      name: the conv layer's name; the normalization is ``name + '_norm'``.
      norm: as :func:`normalization`'s ``kind``.
      train: as :func:`normalization`'s.
      stride, padding: as for :func:`cnnjax.functional.conv2d`.
      init: the conv's :func:`initializers` (default He normal).

    Returns:
      (N, H_out, W_out, O).
    """
    init = init or initializers("he_normal")
    conv = cnn.Conv2D(features, kernel, stride=stride, padding=padding, use_bias=norm == "none", name=name, **init)
    return cnn.ReLU(name=f"{name}_relu")(normalization(norm, train, f"{name}_norm")(conv(x)))
