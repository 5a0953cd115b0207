"""Flax Linen modules: each declares its parameters with ``self.param`` and calls a :mod:`cnnjax.functional` op.

Collections: ``params`` (trained), ``batch_stats`` (BatchNorm running statistics, updated with
``mutable=['batch_stats']``), ``constants`` (fixed parts of a model, e.g. LeNet-5's RBF codes), ``diagnostics`` (which units of each :class:`ReLU`
were active, sown only when the collection is mutable: :func:`unit_activity`). Dropout draws from
the ``dropout`` rng stream. Input shapes are those of :mod:`cnnjax.functional`: NHWC images, (N, D) features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cnnjax import functional as F

Initializer = Callable
DIAGNOSTICS = "diagnostics"


class Conv2D(nn.Module):
    """2-D convolution, :func:`functional.conv2d`. (N, H, W, C) -> (N, H_out, W_out, features).

    Params: ``kernel`` (kh, kw, C // groups, features), ``bias`` (features,) if ``use_bias``.

    Attributes:
      features: the output channels.
      kernel_size: an int or (kh, kw).
      stride, padding, dilation, groups: as for :func:`functional.conv2d`.
      use_bias: add a per-channel bias (off before a batch norm).
      kernel_init, bias_init: initializers (key, shape, dtype) -> array, e.g. ``functional.he_normal()``.

    >>> import jax
    >>> layer = Conv2D(6, 5, padding="SAME")
    >>> variables = layer.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> variables["params"]["kernel"].shape, layer.apply(variables, jnp.zeros((2, 28, 28, 1))).shape
    ((5, 5, 1, 6), (2, 28, 28, 6))
    """

    features: int
    kernel_size: F.IntOrPair
    stride: F.IntOrPair = 1
    padding: F.Padding = "VALID"
    dilation: F.IntOrPair = 1
    groups: int = 1
    use_bias: bool = True
    kernel_init: Initializer = F.lecun_normal()
    bias_init: Initializer = F.zeros

    @nn.compact
    def __call__(self, x):
        kh, kw = F.as_pair(self.kernel_size, f"{self.name}: kernel_size")
        kernel_shape = (kh, kw, x.shape[-1] // self.groups, self.features)
        F.conv_output_shape(
            x.shape,
            kernel_shape,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            layer=f"Conv2D {self.name!r}",
        )
        kernel = self.param("kernel", self.kernel_init, kernel_shape, x.dtype)
        bias = self.param("bias", self.bias_init, (self.features,), x.dtype) if self.use_bias else None
        return F.conv2d(
            x, kernel, bias, stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups
        )


class PartialConv2D(nn.Module):
    """A convolution in which each output map sees only some input maps, like LeNet-5's C3.

    ``table[i][o]`` is true when output map o is connected to input map i. Only the connected filters are parameters:
    ``kernel`` (kh, kw, number of connections) and ``bias`` (out,). (N, H, W, in) -> (N, H_out, W_out, out).
    """

    table: Sequence[Sequence[bool]]
    kernel_size: F.IntOrPair
    stride: F.IntOrPair = 1
    padding: F.Padding = "VALID"
    kernel_init: Initializer = F.lecun_normal()
    bias_init: Initializer = F.zeros

    @nn.compact
    def __call__(self, x):
        table = np.asarray(self.table, dtype=bool)
        if table.ndim != 2 or table.shape[0] != x.shape[-1] or not table.any(axis=0).all():
            raise ValueError(
                f"PartialConv2D {self.name!r}: the connection table must have one row per input map "
                f"({x.shape[-1]}) and connect every output map, got a table of shape {table.shape}"
            )
        kh, kw = F.as_pair(self.kernel_size, f"{self.name}: kernel_size")
        inputs, outputs = np.nonzero(table)
        full_shape = (kh, kw, *table.shape)
        F.conv_output_shape(
            x.shape, full_shape, stride=self.stride, padding=self.padding, layer=f"PartialConv2D {self.name!r}"
        )
        kernel = self.param("kernel", self.kernel_init, (kh, kw, len(inputs)), x.dtype)
        bias = self.param("bias", self.bias_init, (table.shape[1],), x.dtype)
        full_kernel = jnp.zeros(full_shape, x.dtype).at[:, :, inputs, outputs].set(kernel)
        return F.conv2d(x, full_kernel, bias, stride=self.stride, padding=self.padding)


class Subsampling(nn.Module):
    """LeNet-5's subsampling layer (S2, S4): the sum of each window times a trainable coefficient plus a trainable
    bias, one of each per feature map. (N, H, W, C) -> (N, H / window, W / window, C).

    Params: ``coefficient`` (C,), ``bias`` (C,). The squashing function is applied by the caller.
    """

    window: int = 2
    coefficient_init: Initializer = F.ones
    bias_init: Initializer = F.zeros

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        coefficient = self.param("coefficient", self.coefficient_init, (channels,), x.dtype)
        bias = self.param("bias", self.bias_init, (channels,), x.dtype)
        return F.subsample(x, coefficient, bias, window=self.window)


class Dense(nn.Module):
    """Fully connected layer, :func:`functional.dense`. (N, D) -> (N, features).

    Params: ``kernel`` (D, features), ``bias`` (features,) if ``use_bias``.
    """

    features: int
    use_bias: bool = True
    kernel_init: Initializer = F.lecun_normal()
    bias_init: Initializer = F.zeros

    @nn.compact
    def __call__(self, x):
        if self.features < 1:
            raise ValueError(f"Dense {self.name!r}: features must be >= 1, got {self.features}")
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), x.dtype)
        bias = self.param("bias", self.bias_init, (self.features,), x.dtype) if self.use_bias else None
        return F.dense(x, kernel, bias)


class RBFOutput(nn.Module):
    """LeNet-5's output layer of Euclidean radial basis function units.

    ``y_i = sum_j (x_j - w_ij) ** 2``: the squared distance between the input and the prototype of class i, a
    penalty (the predicted class is the argmin). (N, D) -> (N, K). The prototypes ``(K, D)`` are ``codes`` kept fixed
    in the ``constants`` collection (the paper's +-1 bitmaps), or trainable ``params`` when ``trainable``.
    """

    codes: np.ndarray
    trainable: bool = False

    @nn.compact
    def __call__(self, x):
        codes = np.asarray(self.codes, dtype=np.float32)
        if codes.ndim != 2 or codes.shape[1] != x.shape[-1]:
            raise ValueError(
                f"RBFOutput {self.name!r}: the codes must have shape (classes, {x.shape[-1]}) to match the input "
                f"{x.shape}, got {codes.shape}"
            )
        init = lambda *_: jnp.asarray(codes, x.dtype)  # noqa: E731
        if self.trainable:
            prototypes = self.param("prototypes", init, codes.shape)
        else:
            prototypes = self.variable("constants", "prototypes", init, None).value
        return F.euclidean_rbf(x, prototypes)


class MaxPool2D(nn.Module):
    """Max pooling, :func:`functional.max_pool`. (N, H, W, C) -> (N, H_out, W_out, C)."""

    window: F.IntOrPair
    stride: F.IntOrPair | None = None
    padding: F.Padding = "VALID"

    def __call__(self, x):
        F.pool_output_shape(x.shape, self.window, stride=self.stride, padding=self.padding, layer=self._label())
        return F.max_pool(x, self.window, stride=self.stride, padding=self.padding)

    def _label(self):
        return f"{type(self).__name__} {self.name!r}"


class AvgPool2D(MaxPool2D):
    """Average pooling, :func:`functional.avg_pool`. (N, H, W, C) -> (N, H_out, W_out, C)."""

    count_include_pad: bool = True

    def __call__(self, x):
        F.pool_output_shape(x.shape, self.window, stride=self.stride, padding=self.padding, layer=self._label())
        return F.avg_pool(
            x, self.window, stride=self.stride, padding=self.padding, count_include_pad=self.count_include_pad
        )


class GlobalAvgPool(nn.Module):
    """Mean over H and W. (N, H, W, C) -> (N, C)."""

    def __call__(self, x):
        return F.global_avg_pool(x)


class GlobalMaxPool(nn.Module):
    """Max over H and W. (N, H, W, C) -> (N, C)."""

    def __call__(self, x):
        return F.global_max_pool(x)


class Flatten(nn.Module):
    """(N, ...) -> (N, prod(...))."""

    def __call__(self, x):
        return F.flatten(x)


class LRN(nn.Module):
    """Local response normalization across channels, :func:`functional.lrn` (TensorFlow semantics)."""

    depth_radius: int = 5
    bias: float = 1.0
    alpha: float = 1.0
    beta: float = 0.5

    def __call__(self, x):
        return F.lrn(x, depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha, beta=self.beta)


class ReLU(nn.Module):
    """max(x, 0), same shape. With the ``diagnostics`` collection mutable it also sows ``active`` (C,): 1.0 for each
    unit (the last axis: a conv channel or a dense feature) that was positive somewhere in the batch, else 0.0. A unit
    never active on a whole split is dead: it passes no gradient and cannot recover. (N, ..., C) -> (N, ..., C)."""

    def __call__(self, x):
        y = F.relu(x)
        if self.is_mutable_collection(DIAGNOSTICS) and not self.is_initializing():  # init: not a state variable
            self.sow(DIAGNOSTICS, "active", jnp.any(y > 0, axis=tuple(range(y.ndim - 1))).astype(jnp.float32))
        return y


def unit_activity(sown: dict) -> dict:
    """{ReLU module path ('conv1_relu', 'stage1_block1/relu1'): (C,) activity} from ``model.apply(...,
    mutable=['diagnostics'])``'s returned collections; a module called more than once sums its calls."""
    flat = traverse_util.flatten_dict(sown.get(DIAGNOSTICS, {}), sep="/")
    return {path.removesuffix("/active"): sum(calls) for path, calls in flat.items()}


class Dropout(nn.Module):
    """Dropout with drop probability ``rate``; draws its mask from the ``dropout`` rng stream."""

    rate: float
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, x, deterministic: bool | None = None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or self.rate == 0:
            return F.dropout(x, self.rate, key=None, deterministic=True)
        return F.dropout(x, self.rate, key=self.make_rng("dropout"))


def _scale_and_bias(module: nn.Module, channels: int, dtype):
    return module.param("scale", F.ones, (channels,), dtype), module.param("bias", F.zeros, (channels,), dtype)


class BatchNorm(nn.Module):
    """Batch normalization, :func:`functional.batch_norm`, over all axes but the channels.

    Params ``scale``, ``bias`` (C,); running ``mean``, ``var`` (C,) in ``batch_stats``. In training
    (``use_running_average=False``) call ``apply(..., mutable=['batch_stats'])`` to get the updated statistics.
    ``fast_variance``: as in :func:`functional.batch_norm` (and Flax's ``use_fast_variance``).
    """

    use_running_average: bool | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    fast_variance: bool = True

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        channels = x.shape[-1]
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), x.dtype))
        var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), x.dtype))
        scale, bias = _scale_and_bias(self, channels, x.dtype)
        y, new_mean, new_var = F.batch_norm(
            x,
            scale,
            bias,
            mean.value,
            var.value,
            training=not use_running_average,
            momentum=self.momentum,
            epsilon=self.epsilon,
            fast_variance=self.fast_variance,
        )
        if not use_running_average and not self.is_initializing():
            mean.value, var.value = new_mean, new_var
        return y


class LayerNorm(nn.Module):
    """Layer normalization over all non-batch axes, :func:`functional.layer_norm`. Params ``scale``, ``bias`` (C,)."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        scale, bias = _scale_and_bias(self, x.shape[-1], x.dtype)
        return F.layer_norm(x, scale, bias, epsilon=self.epsilon)


class GroupNorm(nn.Module):
    """Group normalization, :func:`functional.group_norm`. Params ``scale``, ``bias`` (C,)."""

    num_groups: int = 32
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        scale, bias = _scale_and_bias(self, x.shape[-1], x.dtype)
        return F.group_norm(x, scale, bias, num_groups=self.num_groups, epsilon=self.epsilon)
