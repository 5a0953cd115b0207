"""Pure functional layers for convolutional networks.

Every function takes arrays plus keyword-only hyperparameters and returns arrays. Images are NHWC, convolution
kernels HWIO: ``(kh, kw, in_channels // groups, out_channels)``. Everything is jittable, vmappable and
differentiable; randomness comes in as an explicit key. This module imports jax only (and :mod:`cnnjax.lowering`,
how ``conv2d`` runs on each backend, whose ``conv_lowering``, ``default_conv_lowering``, ``CONV_LOWERINGS``,
``band_block`` and ``MEMBER_AXIS`` are importable from here).

Output sizes are computed in one place, :func:`conv_output_size`, with the formula of the source material,
``out = floor((n + p_total - d * (k - 1) - 1) / s) + 1``; :func:`conv_output_shape` and :func:`pool_output_shape`
apply it to whole NHWC shapes and raise one clear ``ValueError`` when a layer cannot work.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Union

import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.lowering.choice import CONV_LOWERINGS, chosen_lowering, conv_lowering, default_conv_lowering  # noqa: F401
from cnnjax.lowering.convs import CONVS, band_block, strided_views  # noqa: F401
from cnnjax.lowering.members import MEMBER_AXIS, mapped_over_members, one_conv_per_member  # noqa: F401

Array = jax.Array
IntOrPair = Union[int, Sequence[int]]
# 'SAME' | 'VALID' | p | (ph, pw) | ((top, bottom), (left, right)); per dimension also (lo, hi).
Padding = Union[str, int, Sequence]

# ----------------------------------------------------------------------------------------------------------------------
# Hyperparameter canonicalization and output shapes
# ----------------------------------------------------------------------------------------------------------------------


def per_channel(vector: Array, ndim: int) -> Array:
    """Reshapes a (C,) vector to (1, ..., 1, C) of rank ``ndim``, to broadcast over the last axis explicitly."""
    return jnp.reshape(vector, (1,) * (ndim - 1) + (-1,))


def as_pair(value: IntOrPair, what: str, *, minimum: int = 1) -> tuple[int, int]:
    """Reads an int-or-pair argument such as a stride or a window.

    Args:
      value: an int (used for both dimensions) or a pair of ints (height, width).
      what: the argument's name, used in the error message.
      minimum: the smallest allowed value.

    Returns:
      ``(value, value)`` for an int, or the pair itself.

    Raises:
      ValueError: naming ``what`` when either entry is not an integer >= ``minimum``.

    >>> as_pair(3, "stride"), as_pair((2, 1), "window")
    ((3, 3), (2, 1))
    """
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= minimum for v in pair):
        raise ValueError(f"{what} must be an int >= {minimum} or a pair of them, got {value!r}")
    return pair


def _padding_per_dim(padding: Padding) -> tuple:
    """Splits a 2-D padding spec into one spec per spatial dimension: 'SAME', 'VALID' or (lo, hi)."""
    if isinstance(padding, str):
        upper = padding.upper()
        if upper not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME', 'VALID', an int or pairs of ints, got {padding!r}")
        return upper, upper
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    padding = tuple(padding)
    if len(padding) == 2 and all(isinstance(p, int) for p in padding):
        return (padding[0], padding[0]), (padding[1], padding[1])
    if len(padding) == 2 and all(not isinstance(p, (int, str)) and len(p) == 2 for p in padding):
        return tuple(tuple(p) for p in padding)
    raise ValueError(
        f"padding must be 'SAME', 'VALID', an int p, a pair (ph, pw) or ((top, bottom), (left, right)), got {padding!r}"
    )


def _pads_1d(n: int, kernel: int, stride: int, dilation: int, padding) -> tuple[int, int]:
    """Explicit (lo, hi) padding of one dimension; 'SAME' splits the total as XLA/TensorFlow do (extra at the end)."""
    if padding == "VALID":
        return 0, 0
    if padding == "SAME":
        effective_kernel = dilation * (kernel - 1) + 1
        total = max((-(-n // stride) - 1) * stride + effective_kernel - n, 0)
        return total // 2, total - total // 2
    if isinstance(padding, int):
        padding = (padding, padding)
    lo, hi = padding
    if not (isinstance(lo, int) and isinstance(hi, int) and lo >= 0 and hi >= 0):
        raise ValueError(f"padding amounts must be non-negative ints, got {padding!r}")
    return lo, hi


def conv_output_size(n: int, kernel: int, *, stride: int = 1, padding=0, dilation: int = 1) -> int:
    """Output length of a convolution or pooling window along one dimension.

    ``floor((n + p_total - d * (k - 1) - 1) / s) + 1`` where ``p_total`` is the padding on both sides: an int ``p``
    pads ``p`` on each side, a pair ``(lo, hi)`` pads ``lo + hi``; 'SAME' gives ``ceil(n / s)`` and 'VALID' pads 0.
    The result may be <= 0 for a window that does not fit; the shape functions below turn that into an error.

    Args:
      n: the input length.
      kernel: the window length.
      stride: the step between windows.
      padding: an int, a (lo, hi) pair, 'SAME' or 'VALID'.
      dilation: the spacing between kernel taps.

    Returns:
      The output length.

    >>> conv_output_size(100, 3, padding=2)
    102
    """
    lo, hi = _pads_1d(n, kernel, stride, dilation, padding)
    return (n + lo + hi - dilation * (kernel - 1) - 1) // stride + 1


def explicit_padding(
    spatial: Sequence[int], window: Sequence[int], stride: Sequence[int], dilation: Sequence[int], padding: Padding
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Resolves any padding spec to explicit (low, high) amounts per spatial dimension.

    Args:
      spatial: the input's spatial size (H, W).
      window: the window size (kh, kw).
      stride: the strides (sh, sw).
      dilation: the kernel dilations (dh, dw).
      padding: 'SAME', 'VALID', an int, a pair of ints, or a pair of (lo, hi) pairs.

    Returns:
      ``((top, bottom), (left, right))``.

    >>> explicit_padding((28, 28), (5, 5), (1, 1), (1, 1), "SAME")
    ((2, 2), (2, 2))
    """
    return tuple(
        _pads_1d(n, k, s, d, p) for n, k, s, d, p in zip(spatial, window, stride, dilation, _padding_per_dim(padding))
    )


def _check_input_rank(shape: Sequence[int], layer: str) -> None:
    if len(shape) != 4:
        raise ValueError(f"{layer}: expected an NHWC input of rank 4 (N, H, W, C), got shape {tuple(shape)}")


def _spatial_output(
    layer: str, what: str, shape: Sequence[int], window, stride, dilation, padding, fix: str
) -> tuple[int, int]:
    """Output (H, W) of a sliding window, raising a ValueError that names the layer when the map would be empty."""
    out = tuple(
        conv_output_size(n, k, stride=s, padding=p, dilation=d)
        for n, k, s, d, p in zip(shape[1:3], window, stride, dilation, _padding_per_dim(padding))
    )
    if min(out) < 1:
        raise ValueError(
            f"{layer}: a {window[0]}x{window[1]} {what} (stride {stride}, dilation {dilation}, padding {padding!r}) "
            f"does not fit the {shape[1]}x{shape[2]} feature map of input shape {tuple(shape)}: it would give an "
            f"output of {out[0]}x{out[1]}. {fix}"
        )
    return out


def conv_output_shape(
    input_shape: Sequence[int],
    kernel_shape: Sequence[int],
    *,
    stride: IntOrPair = 1,
    padding: Padding = "VALID",
    dilation: IntOrPair = 1,
    groups: int = 1,
    layer: str = "conv2d",
) -> tuple[int, int, int, int]:
    """NHWC output shape of :func:`conv2d`, checked before anything is traced.

    Args:
      input_shape: (N, H, W, C).
      kernel_shape: (kh, kw, C // groups, O).
      stride, padding, dilation, groups: as for :func:`conv2d`.
      layer: the layer's name, used in error messages.

    Returns:
      (N, H_out, W_out, O).

    Raises:
      ValueError: naming ``layer`` if the channels do not match the kernel or the output would be empty.

    >>> conv_output_shape((8, 32, 32, 3), (5, 5, 3, 6))
    (8, 28, 28, 6)
    """
    _check_input_rank(input_shape, layer)
    if len(kernel_shape) != 4:
        raise ValueError(f"{layer}: expected an HWIO kernel of rank 4 (kh, kw, in // groups, out), got {kernel_shape}")
    kh, kw, kernel_in, out_channels = kernel_shape
    channels = input_shape[3]
    if out_channels < 1:
        raise ValueError(f"{layer}: the number of filters must be >= 1, got kernel shape {tuple(kernel_shape)}")
    if not isinstance(groups, int) or groups < 1 or channels % groups or out_channels % groups:
        raise ValueError(
            f"{layer}: groups={groups} must be a positive int dividing both the input channels ({channels}) and the "
            f"output channels ({out_channels})"
        )
    if kernel_in * groups != channels:
        raise ValueError(
            f"{layer}: the input has {channels} channels but the kernel {tuple(kernel_shape)} expects "
            f"{kernel_in * groups} (kernel in-channels {kernel_in} x groups {groups}); use a kernel of shape "
            f"({kh}, {kw}, {channels // groups}, {out_channels})"
        )
    stride, dilation = as_pair(stride, f"{layer}: stride"), as_pair(dilation, f"{layer}: dilation")
    fix = "Use a smaller kernel, stride or dilation, more padding (e.g. 'SAME'), or a larger input."
    out_h, out_w = _spatial_output(layer, "kernel", input_shape, (kh, kw), stride, dilation, padding, fix)
    return input_shape[0], out_h, out_w, out_channels


def pool_output_shape(
    input_shape: Sequence[int],
    window: IntOrPair,
    *,
    stride: IntOrPair | None = None,
    padding: Padding = "VALID",
    layer: str = "pool",
) -> tuple[int, int, int, int]:
    """NHWC output shape of a pooling window.

    Args:
      input_shape: (N, H, W, C).
      window: the window size, an int or (kh, kw).
      stride: the strides; ``None`` means the window size (non-overlapping windows).
      padding: as for :func:`max_pool`.
      layer: the layer's name, used in error messages.

    Returns:
      (N, H_out, W_out, C).

    Raises:
      ValueError: naming ``layer`` if the map would be empty.

    >>> pool_output_shape((8, 28, 28, 6), 2)
    (8, 14, 14, 6)
    """
    _check_input_rank(input_shape, layer)
    window = as_pair(window, f"{layer}: window")
    stride = window if stride is None else as_pair(stride, f"{layer}: stride")
    fix = "Use a smaller pool window or stride, padding, fewer pooling layers before it, or a larger input."
    out_h, out_w = _spatial_output(layer, "pooling window", input_shape, window, stride, (1, 1), padding, fix)
    return input_shape[0], out_h, out_w, input_shape[3]


# ----------------------------------------------------------------------------------------------------------------------
# Convolution, pooling, dense
# ----------------------------------------------------------------------------------------------------------------------


def conv2d(
    x: Array,
    kernel: Array,
    bias: Array | None = None,
    *,
    stride: IntOrPair = 1,
    padding: Padding = "VALID",
    dilation: IntOrPair = 1,
    groups: int = 1,
    lowering: str | None = None,
) -> Array:
    """2-D convolution of an NHWC batch.

    Args:
      x: (N, H, W, C).
      kernel: (kh, kw, C // groups, O).
      bias: (O,) or None.
      stride, dilation: ints or (height, width) pairs; ``dilation`` spaces the kernel taps apart.
      padding: 'VALID', 'SAME', an int, a pair or ((top, bottom), (left, right)).
      groups: independent convolutions over C / groups channels each (``groups == C``: depthwise).
      lowering: the implementation (below); None chooses.

    Returns:
      (N, H_out, W_out, O), sizes from :func:`conv_output_size`; a kernel that does not fit is a ValueError naming
      the shapes.

    >>> conv2d(jnp.ones((2, 28, 28, 1)), jnp.ones((5, 5, 1, 6)), padding="SAME").shape
    (2, 28, 28, 6)

    Like every deep-learning framework this computes a cross-correlation, ``out[i, j] = sum x[i*s + u, j*s + v] *
    k[u, v]``: the kernel is not flipped. A true (mathematical) convolution is the same operation with the kernel
    rotated by 180 degrees, ``conv2d(x, kernel[::-1, ::-1])``; since kernels are learned the distinction only
    matters when loading filters defined as convolutions.

    ``lowering`` picks the implementation (same results to float rounding): 'xla' calls ``lax.conv_general_dilated``;
    'patches' gathers the kh * kw shifted views of the padded input into patches (N, H_out, W_out, kh * kw * C)
    (im2col) and multiplies them with the kernel as a matrix, so that the forward pass and both gradients are matrix
    products; 'banded' folds each B * stride input columns into the channels, a free reshape in NHWC
    (N, H, W / (B * stride), B * stride * C), and convolves that with a banded kernel built from the original one,
    (kh, F, B * stride * C, B * O) with F = ((B - 1) * stride + (kw - 1) * dilation) // (B * stride) + 1, whose
    zeros leave each of a block's B outputs its own kw taps; the output (N, H_out, W_out / B, B * O) is the result,
    reshaped. More FLOPs, but a convolution over B times more channels, which XLA:CPU runs far faster when the
    input has only a few (:func:`band_block` picks B). 'onednn' runs the forward pass and both gradients as oneDNN
    primitives inside the jitted program (CPU, float32; :mod:`cnnjax.onednn`). None takes the lowering of an
    enclosing :func:`conv_lowering` block, else picks per kernel shape, dtype and backend with
    :func:`default_conv_lowering`.

    Under ``jax.vmap`` over a stack of models (cnnjax.sweep's vectorized groups) 'onednn' runs the members as the
    groups of one grouped oneDNN convolution (faster than one call per member). With
    the other lowerings, inside ``jax.vmap(..., axis_name=MEMBER_AXIS)`` with both x and kernel mapped, each member's
    convolution runs on its own on the CPU instead of as one grouped XLA convolution, which XLA:CPU runs far slower
    (see :func:`cnnjax.lowering.members.one_conv_per_member`); such code is differentiable in reverse mode only.
    """
    conv_output_shape(x.shape, kernel.shape, stride=stride, padding=padding, dilation=dilation, groups=groups)
    stride, dilation = as_pair(stride, "stride"), as_pair(dilation, "dilation")
    pads = explicit_padding(x.shape[1:3], kernel.shape[:2], stride, dilation, padding)
    lowering = chosen_lowering(kernel.shape, x.dtype, lowering)
    conv = functools.partial(CONVS[lowering], stride=stride, dilation=dilation, pads=pads, groups=groups)
    if lowering != "onednn" and jax.default_backend() == "cpu" and mapped_over_members():
        conv = one_conv_per_member(conv)
    y = conv(x, kernel)
    return y if bias is None else y + per_channel(bias, y.ndim)


def _pool_geometry(x: Array, window: IntOrPair, stride, padding, layer: str):
    """Checks a pooling call and returns (window, stride, explicit pads) as pairs."""
    pool_output_shape(x.shape, window, stride=stride, padding=padding, layer=layer)
    window = as_pair(window, "window")
    stride = window if stride is None else as_pair(stride, "stride")
    return window, stride, explicit_padding(x.shape[1:3], window, stride, (1, 1), padding)


def _window_reduce(x: Array, init: float, op, window, stride, pads) -> Array:
    # init must be a Python scalar: JAX then recognizes the (max, -inf) and (add, 0) monoids and can differentiate.
    return lax.reduce_window(x, init, op, (1, *window, 1), (1, *stride, 1), ((0, 0), *pads, (0, 0)))


def _tiles(x: Array, window, stride, pads) -> Array | None:
    """For non-overlapping, unpadded windows (stride == window), x cropped and reshaped to
    (N, H // wh, wh, W // ww, ww, C), whose reductions over axes (2, 4) are the pools with cheap gradients; else None.
    """
    if tuple(stride) != tuple(window) or any(p for pair in pads for p in pair):
        return None
    n, h, w, c = x.shape
    (wh, ww), out_h, out_w = window, h // window[0], w // window[1]
    return x[:, : out_h * wh, : out_w * ww].reshape(n, out_h, wh, out_w, ww, c)


def max_pool(x: Array, window: IntOrPair, *, stride: IntOrPair | None = None, padding: Padding = "VALID") -> Array:
    """Max pooling.

    Args:
      x: (N, H, W, C).
      window: the window's size, an int or (height, width).
      stride: its step, an int or a pair (default: the window).
      padding: 'VALID', 'SAME', an int, a pair or ((top, bottom), (left, right)); padding never wins the max.

    Returns:
      (N, H_out, W_out, C), sizes from :func:`conv_output_size`.

    Non-overlapping windows reduce a reshaped view; overlapping or padded ones take the elementwise maxima of the
    window's strided views, along the width, then the height: both faster than ``reduce_window`` on the CPU
    (docs/performance.md). The gradient of a window's tied maxima goes to the first of them along the width, then
    the height.

    >>> max_pool(jnp.arange(16.0).reshape(1, 4, 4, 1), 2)[0, ..., 0]
    Array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """
    window, stride, pads = _pool_geometry(x, window, stride, padding, "max_pool")
    tiles = _tiles(x, window, stride, pads)
    if tiles is not None:
        return jnp.max(tiles, axis=(2, 4))
    lowest = -jnp.inf if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.iinfo(x.dtype).min
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=lowest)
    for axis in (2, 1):  # the width, then the height
        taps, step = window[axis - 1], stride[axis - 1]
        views = strided_views(x, axis=axis, taps=taps, step=1, stride=step, size=(x.shape[axis] - taps) // step + 1)
        x = functools.reduce(_first_maximum, views)
    return x


def _first_maximum(a: Array, b: Array) -> Array:
    """``jnp.maximum`` whose gradient goes to ``a`` on ties (and which keeps a NaN of either): a select, where
    ``jnp.maximum``'s gradient splits ties in halves, which makes max pooling's backward pass slower."""
    return jnp.where((a >= b) | jnp.isnan(a), a, b)


def avg_pool(
    x: Array,
    window: IntOrPair,
    *,
    stride: IntOrPair | None = None,
    padding: Padding = "VALID",
    count_include_pad: bool = True,
) -> Array:
    """Average pooling.

    Args:
      x: (N, H, W, C).
      window, stride, padding: as :func:`max_pool`.
      count_include_pad: whether padding counts in each window's divisor.

    Returns:
      (N, H_out, W_out, C).

    With ``count_include_pad`` every window is divided by its full size (padding counts as zeros, as in PyTorch's
    default); otherwise by the number of real input pixels it covers (TensorFlow's 'SAME' behaviour).
    """
    window, stride, pads = _pool_geometry(x, window, stride, padding, "avg_pool")
    tiles = _tiles(x, window, stride, pads)
    if tiles is not None:
        return jnp.mean(tiles, axis=(2, 4))
    sums = _window_reduce(x, 0.0, lax.add, window, stride, pads)
    if count_include_pad:
        return sums / jnp.array(window[0] * window[1], x.dtype)
    counts = _window_reduce(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, lax.add, window, stride, pads)
    return sums / counts


def global_avg_pool(x: Array) -> Array:
    """Mean over the spatial dimensions. x: (N, H, W, C) -> (N, C)."""
    _check_input_rank(x.shape, "global_avg_pool")
    return jnp.mean(x, axis=(1, 2))


def global_max_pool(x: Array) -> Array:
    """Maximum over the spatial dimensions. x: (N, H, W, C) -> (N, C)."""
    _check_input_rank(x.shape, "global_max_pool")
    return jnp.max(x, axis=(1, 2))


def subsample(x: Array, coefficient: Array, bias: Array, *, window: int = 2) -> Array:
    """LeNet-5's subsampling: each non-overlapping window summed, times a per-map coefficient, plus a per-map bias.

    Args:
      x: (N, H, W, C).
      coefficient: (C,), the trainable multiplier of each map.
      bias: (C,), the trainable bias of each map.
      window: the side of the square window.

    Returns:
      (N, H // window, W // window, C).
    """
    sums = avg_pool(x, window) * jnp.array(window * window, x.dtype)
    return _affine(sums, coefficient, bias)


def euclidean_rbf(x: Array, prototypes: Array) -> Array:
    """Euclidean radial basis units (LeNet-5's output): ``y[n, k] = sum_j (x[n, j] - prototypes[k, j]) ** 2``.

    x: (N, D); prototypes: (K, D). Returns (N, K) squared distances (penalties: smaller is a better match).
    """
    return jnp.sum(jnp.square(x[:, None, :] - prototypes[None, :, :]), axis=-1)


def concatenate_channels(*xs: Array) -> Array:
    """Concatenates NHWC feature maps of equal (N, H, W) along the channels (Inception's branches)."""
    return jnp.concatenate(xs, axis=-1)


def flatten(x: Array) -> Array:
    """Flattens everything but the batch dimension. x: (N, ...) -> (N, prod(...))."""
    return x.reshape(x.shape[0], -1)


def dense(x: Array, kernel: Array, bias: Array | None = None) -> Array:
    """Fully connected layer, ``x @ kernel + bias``.

    Args:
      x: (N, D).
      kernel: (D, O).
      bias: (O,) or None.

    Returns:
      (N, O).

    >>> dense(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.arange(4.0)).tolist()
    [[3.0, 4.0, 5.0, 6.0], [3.0, 4.0, 5.0, 6.0]]
    """
    if x.ndim != 2 or kernel.ndim != 2 or x.shape[1] != kernel.shape[0]:
        raise ValueError(
            f"dense: expected x of shape (N, D) and a kernel of shape (D, O), got x {x.shape} and kernel "
            f"{kernel.shape}; flatten feature maps first (functional.flatten)"
        )
    y = x @ kernel
    return y if bias is None else y + per_channel(bias, y.ndim)


# ----------------------------------------------------------------------------------------------------------------------
# Normalization and dropout
# ----------------------------------------------------------------------------------------------------------------------


def lrn(x: Array, *, depth_radius: int = 5, bias: float = 1.0, alpha: float = 1.0, beta: float = 0.5) -> Array:
    """Local response normalization across channels, as ``tf.nn.local_response_normalization``.

    ``out[..., c] = x[..., c] / (bias + alpha * sum(x[..., c - r : c + r + 1] ** 2)) ** beta`` with r = depth_radius.
    As in TensorFlow and in the AlexNet paper (k=2, n=5, alpha=1e-4, beta=0.75 is depth_radius=2, bias=2,
    alpha=1e-4, beta=0.75), alpha is not divided by the window size (PyTorch's ``LocalResponseNorm`` divides it).

    Args:
      x: (N, H, W, C).
      depth_radius: r, the half-width of the window across channels.
      bias, alpha, beta: the constants of the formula above.

    Returns:
      (N, H, W, C).
    """
    if depth_radius < 0:
        raise ValueError(f"lrn: depth_radius must be >= 0, got {depth_radius}")
    window = 2 * depth_radius + 1
    pads = ((0, 0),) * (x.ndim - 1) + ((depth_radius, depth_radius),)
    squares = lax.reduce_window(x * x, 0.0, lax.add, (1,) * (x.ndim - 1) + (window,), (1,) * x.ndim, pads)
    return x / (bias + alpha * squares) ** beta


def _normalize(x: Array, mean: Array, var: Array, epsilon: float) -> Array:
    return (x - mean) * lax.rsqrt(var + jnp.array(epsilon, x.dtype))


def _affine(y: Array, scale: Array | None, bias: Array | None) -> Array:
    """y * scale + bias with per-channel (C,) scale and bias, either of which may be None."""
    if scale is not None:
        y = y * per_channel(scale, y.ndim)
    return y if bias is None else y + per_channel(bias, y.ndim)


def batch_norm(
    x: Array,
    scale: Array | None,
    bias: Array | None,
    running_mean: Array,
    running_var: Array,
    *,
    training: bool,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    fast_variance: bool = True,
) -> tuple[Array, Array, Array]:
    """Batch normalization over every axis but the last (channels).

    In training mode the batch's statistics normalize ``x`` and the running statistics move towards them,
    ``running = momentum * running + (1 - momentum) * batch`` (Flax's convention: the biased batch variance); in
    evaluation mode the running statistics normalize ``x`` and come back unchanged.

    ``fast_variance`` (Flax's ``use_fast_variance``): the variance as ``E[x^2] - E[x]^2`` (clipped at 0), both means
    in one pass over x, instead of ``E[(x - E[x])^2]``, which is more accurate when |mean| >> std. The normalization
    and the affine transform are folded into one per-channel ``x * a + b``, which XLA:CPU fuses better than
    ``(x - mean) * rsqrt(var + eps) * scale + bias``.

    Args:
      x: (N, ..., C).
      scale, bias: (C,) or None (no affine transform).
      running_mean, running_var: (C,).
      training: normalize with the batch's statistics (and update the running ones) or with the running ones.
      momentum: the running statistics' decay.
      epsilon: added to the variance.
      fast_variance: the one-pass variance described above.

    Returns:
      ``(y, new_running_mean, new_running_var)``: y of x's shape, the statistics (C,).
    """
    if training:
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes)
        if fast_variance:
            var = jnp.maximum(jnp.mean(jnp.square(x), axis=axes) - jnp.square(mean), 0.0)
        else:
            var = jnp.mean(jnp.square(x - per_channel(mean, x.ndim)), axis=axes)
    else:
        mean, var = running_mean, running_var
    multiplier = lax.rsqrt(var + jnp.array(epsilon, x.dtype))
    if scale is not None:
        multiplier = multiplier * scale
    offset = -mean * multiplier if bias is None else bias - mean * multiplier
    y = _affine(x, multiplier, offset)
    if training:
        momentum = jnp.array(momentum, x.dtype)
        running_mean = momentum * running_mean + (1 - momentum) * mean
        running_var = momentum * running_var + (1 - momentum) * var
    return y, running_mean, running_var


def layer_norm(x: Array, scale: Array | None = None, bias: Array | None = None, *, epsilon: float = 1e-5) -> Array:
    """Layer normalization: each example is normalized over all its non-batch axes (H, W, C for images).

    Equals :func:`group_norm` with one group.

    Args:
      x: (N, ...).
      scale, bias: (C,) per channel (last axis) or None.
      epsilon: added to the variance.

    Returns:
      x's shape.
    """
    axes = tuple(range(1, x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return _affine(_normalize(x, mean, var, epsilon), scale, bias)


def group_norm(
    x: Array, scale: Array | None = None, bias: Array | None = None, *, num_groups: int, epsilon: float = 1e-5
) -> Array:
    """Group normalization (Wu & He, 2018): channels split into ``num_groups`` groups normalized per example.

    Args:
      x: (N, H, W, C) with C divisible by ``num_groups``.
      scale, bias: (C,) or None.
      num_groups: the number of channel groups.
      epsilon: added to the variance.

    Returns:
      (N, H, W, C).
    """
    channels = x.shape[-1]
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"group_norm: num_groups={num_groups} must divide the {channels} channels of input {x.shape}")
    grouped = x.reshape(*x.shape[:-1], num_groups, channels // num_groups)
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
    mean = jnp.mean(grouped, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
    return _affine(_normalize(grouped, mean, var, epsilon).reshape(x.shape), scale, bias)


def dropout(x: Array, rate: float, *, key: Array | None, deterministic: bool = False) -> Array:
    """Inverted dropout: zeroes each element with probability ``rate`` and scales the rest by ``1 / (1 - rate)``.

    With ``deterministic=True`` or ``rate == 0`` the input comes back unchanged and no key is needed.

    Args:
      x: any shape.
      rate: the drop probability (not stax's keep probability); may be a traced scalar (e.g. vmapped across a
        sweep); a concrete rate is checked to lie in [0, 1].
      key: the PRNG key of the mask, or None when deterministic.
      deterministic: return ``x`` unchanged (evaluation).

    Returns:
      x's shape.
    """
    if isinstance(rate, (int, float)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"dropout: rate is the drop probability and must lie in [0, 1], got {rate}")
        if deterministic or rate == 0.0:
            return x
        if rate == 1.0:
            return jnp.zeros_like(x)
    elif deterministic:
        return x
    if key is None:
        raise ValueError("dropout: a PRNG key is required when deterministic=False and rate > 0")
    keep = 1.0 - jnp.asarray(rate, x.dtype)
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x / keep, jnp.zeros((), x.dtype))


# ----------------------------------------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------------------------------------

relu = jax.nn.relu
sigmoid = jax.nn.sigmoid
tanh = jnp.tanh
softmax = jax.nn.softmax
log_softmax = jax.nn.log_softmax


def lecun_tanh(x: Array) -> Array:
    """LeCun's scaled hyperbolic tangent ``1.7159 * tanh(2x / 3)`` (LeNet-5, 1998): f(1) = 1, f(-1) = -1."""
    return jnp.array(1.7159, x.dtype) * jnp.tanh(x * jnp.array(2.0 / 3.0, x.dtype))


ACTIVATIONS = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh, "lecun_tanh": lecun_tanh}


def activation(name: str):
    """The activation function called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ----------------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------------


def _at_labels(values: Array, labels: Array) -> Array:
    """values[n, labels[n]] for each n. values: (N, K); labels: (N,) ints. Returns (N,)."""
    return jnp.take_along_axis(values, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def softmax_cross_entropy(logits: Array, labels: Array, *, label_smoothing: float = 0.0) -> Array:
    """Cross-entropy of integer labels under softmax(logits).

    Args:
      logits: (N, K).
      labels: (N,) ints in [0, K).
      label_smoothing: e > 0 puts 1 - e + e / K of the target on the label and e / K on every other class
        (Szegedy et al., 2016), as ``optax.smooth_labels`` does.

    Returns:
      (N,): each example's loss.

    >>> round(float(softmax_cross_entropy(jnp.zeros((1, 2)), jnp.array([0]))[0]), 4)  # ln 2
    0.6931
    """
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -_at_labels(log_probs, labels)
    if not label_smoothing:
        return nll
    return (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)


def mean_squared_error(outputs: Array, labels: Array, *, on_value: float = 1.0, off_value: float = 0.0) -> Array:
    """Mean squared error against one-of-c targets (the classic LeNet criterion).

    Args:
      outputs: (N, K).
      labels: (N,) ints in [0, K).
      on_value: the target at the label.
      off_value: the target elsewhere (LeNet used +1/-1 with tanh units).

    Returns:
      (N,): the mean over the K outputs of the squared error.
    """
    targets = jnp.where(
        jax.nn.one_hot(labels, outputs.shape[-1], dtype=jnp.bool_),
        jnp.array(on_value, outputs.dtype),
        jnp.array(off_value, outputs.dtype),
    )
    return jnp.mean(jnp.square(outputs - targets), axis=-1)


def rbf_loss(penalties: Array, labels: Array) -> Array:
    """LeNet-5's maximum-likelihood criterion (eq. 8 of the 1998 paper): the RBF output of the correct class.

    penalties: (N, K) squared distances from :func:`euclidean_rbf`; labels: (N,) ints. Returns (N,): the squared
    distance of each example's F6 state to the code of its class, a mean squared error against fixed targets.
    """
    return _at_labels(penalties, labels)


def l2_penalty(params) -> Array:
    """``0.5 * sum(w ** 2)`` over every leaf of a params pytree (``tf.nn.l2_loss`` summed); pass the weights only
    (e.g. the kernels) to leave biases unregularized."""
    return 0.5 * sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(params))


# ----------------------------------------------------------------------------------------------------------------------
# Initializers: functions (key, shape, dtype) -> array. Fans are computed for HWIO kernels and (in, out) matrices.
# ----------------------------------------------------------------------------------------------------------------------

lecun_normal = jax.nn.initializers.lecun_normal
lecun_uniform = jax.nn.initializers.lecun_uniform
glorot_normal = jax.nn.initializers.glorot_normal
glorot_uniform = jax.nn.initializers.glorot_uniform
he_normal = jax.nn.initializers.he_normal
he_uniform = jax.nn.initializers.he_uniform
truncated_normal = jax.nn.initializers.truncated_normal  # truncated_normal(stddev) truncates at +-2 stddev
zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones


def uniform_range(low: float, high: float):
    """Initializer drawing uniformly from [low, high), e.g. ``uniform_range(-0.3, 0.3)``."""
    if not low < high:
        raise ValueError(f"uniform_range: need low < high, got [{low}, {high})")

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=low, maxval=high)

    return init


_FAN_SCALED = {"lecun_normal": lecun_normal, "lecun_uniform": lecun_uniform, "glorot_normal": glorot_normal,
               "glorot_uniform": glorot_uniform, "he_normal": he_normal, "he_uniform": he_uniform}  # fmt: skip
_WITH_VALUE = {
    "truncated_normal": lambda stddev: truncated_normal(stddev),
    "uniform": lambda limit: uniform_range(-limit, limit),
    "constant": lambda value: jax.nn.initializers.constant(value),
}
INITIALIZER_NAMES = (*_FAN_SCALED, "truncated_normal:STDDEV", "uniform:LIMIT", "zeros", "constant:VALUE")


def initializer(spec: str, key: str = "initializer"):
    """The initializer a config names: 'lecun_normal', 'lecun_uniform', 'glorot_normal', 'glorot_uniform',
    'he_normal', 'he_uniform' (scaled by the fans), 'truncated_normal:STDDEV' (truncated at +-2 stddev),
    'uniform:LIMIT' (uniform in [-LIMIT, LIMIT), e.g. 'uniform:0.3'), 'zeros' or 'constant:VALUE'.

    Args:
      spec: the name, with its value after a colon where it takes one.
      key: the config key it came from, for the error message (e.g. 'model.kernel_init').

    Returns:
      (key, shape, dtype) -> array, with its ``spec`` as an attribute (the summary shows it).

    Raises:
      ValueError: one line naming ``key``, the bad value and the accepted forms.
    """
    name, _, value = spec.partition(":")
    try:
        if name in _FAN_SCALED and not value:
            made = _FAN_SCALED[name]()
        elif name == "zeros" and not value:
            made = zeros
        elif name in _WITH_VALUE and value:
            number = float(value)
            if not math.isfinite(number) or (name != "constant" and number <= 0):
                raise ValueError
            made = _WITH_VALUE[name](number)
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"{key}={spec!r} is not an initializer: use one of {', '.join(INITIALIZER_NAMES)}") from None

    def init(rng, shape, dtype=jnp.float32):
        return made(rng, shape, dtype)

    init.spec = spec
    return init


def lecun98_uniform(scale: float = 2.4, *, fan_in: float | None = None):
    """LeNet-5's initializer: uniform in ``+-scale / fan_in`` (1998 paper, appendix C).

    ``fan_in`` defaults to ``prod(shape[:-1])`` (kh * kw * in for HWIO kernels, D for (D, O) matrices).
    """

    def init(key, shape, dtype=jnp.float32):
        limit = scale / (math.prod(shape[:-1]) if fan_in is None else fan_in)
        return jax.random.uniform(key, shape, dtype, minval=-limit, maxval=limit)

    return init
