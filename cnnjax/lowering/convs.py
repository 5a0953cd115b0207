"""conv2d's implementations: XLA's convolution, im2col patches times the kernel, and the banded convolution that
folds the width into the channels; each ``(x (N, H, W, C), kernel (kh, kw, C // groups, O), stride, dilation, pads,
groups) -> (N, H_out, W_out, O)``, with ``CONVS`` naming them and oneDNN's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.lowering import onednn

Array = jax.Array


def strided_views(x: Array, *, axis: int, taps: int, step: int, stride: int, size: int) -> list[Array]:
    """The ``taps`` views of x along ``axis`` starting ``step`` apart, each ``size`` long with ``stride``."""
    return [lax.slice_in_dim(x, t * step, t * step + (size - 1) * stride + 1, stride, axis) for t in range(taps)]


def concat_views(x: Array, *, axis: int, taps: int, step: int, stride: int, size: int) -> Array:
    """:func:`strided_views` concatenated on the channel axis: (..., C) -> (..., taps * C) with the tap index major."""
    views = strided_views(x, axis=axis, taps=taps, step=step, stride=stride, size=size)
    return views[0] if taps == 1 else jnp.concatenate(views, axis=-1)


def band_block(out_width: int, channels: int) -> int:
    """Output columns per block of the 'banded' lowering for ``channels`` input channels: the largest divisor of
    ``out_width`` up to 4 for one channel, up to 2 for more, which ran those layers fastest on the CPU
    (bench/conv_lowering.py)."""
    limit = 4 if channels == 1 else 2
    return max(b for b in range(1, min(limit, out_width) + 1) if out_width % b == 0)


def conv_xla(x: Array, kernel: Array, stride, dilation, pads, groups: int) -> Array:
    """conv2d as ``lax.conv_general_dilated``: x (N, H, W, C), kernel (kh, kw, C // groups, O) -> (N, Ho, Wo, O)."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=stride,
        padding=pads,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def conv_patches(x: Array, kernel: Array, stride, dilation, pads, groups: int) -> Array:
    """conv2d as patches @ kernel: x (N, H, W, C), kernel (kh, kw, C // groups, O) -> (N, H_out, W_out, O)."""
    kh, kw, group_in, out_channels = kernel.shape
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    n, h, w, channels = x.shape
    out_h = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    # in two passes, the kw shifts along the width, then kh shifts of those rows: copying runs of kw * C values is
    # 2.5x faster on the CPU than gathering the kh * kw single-pixel views at once (LeNet's first layer)
    rows = concat_views(x, axis=2, taps=kw, step=dilation[1], stride=stride[1], size=out_w)  # (N, H, Wo, kw * C)
    patches = concat_views(rows, axis=1, taps=kh, step=dilation[0], stride=stride[0], size=out_h)  # (.., kh*kw*C)
    if groups == 1:
        return patches @ kernel.reshape(kh * kw * channels, out_channels)
    patches = patches.reshape(n, out_h, out_w, kh * kw, groups, group_in)
    grouped_kernel = kernel.reshape(kh * kw, group_in, groups, out_channels // groups)
    return jnp.einsum("nhwkgc,kcgo->nhwgo", patches, grouped_kernel).reshape(n, out_h, out_w, out_channels)


def conv_banded(x: Array, kernel: Array, stride, dilation, pads, groups: int) -> Array:
    """conv2d as ``lax.conv`` on the input's width folded into channels, :func:`band_block` output columns at a
    time: x (N, H, W, C), kernel (kh, kw, C // groups, O) -> (N, H_out, W_out, O)."""
    if groups > 1:  # one banded convolution per group; JAX batches them into one grouped convolution
        grouped = lambda xg, kg: conv_banded(xg, kg, stride, dilation, pads, 1)  # noqa: E731
        x = x.reshape(*x.shape[:3], groups, -1)
        kernel = kernel.reshape(*kernel.shape[:3], groups, -1)
        y = jax.vmap(grouped, in_axes=(3, 3), out_axes=3)(x, kernel)
        return y.reshape(*y.shape[:3], -1)
    kh, kw, channels, out_channels = kernel.shape
    n, h, w, _ = x.shape
    (left, right), step = pads[1], stride[1]
    out_w = (w + left + right - dilation[1] * (kw - 1) - 1) // step + 1
    block = band_block(out_w, channels)
    blocks = out_w // block  # band_block divides out_w
    fold = block * step  # input columns per folded pixel: one block's stride
    taps = (block - 1) * step + (kw - 1) * dilation[1]  # the columns one block sees, past its first
    band_width = taps // fold + 1  # folded pixels one block sees
    width = fold * (blocks + band_width - 1)  # the padded input columns the blocks see, cropped or padded to this
    x = jnp.pad(x, ((0, 0), (0, 0), (left, max(0, width - w - left)), (0, 0)))[:, :, :width]
    folded = x.reshape(n, h, width // fold, fold * channels)  # free: the width's pixels are contiguous in NHWC
    # band[u, f, t, c, a, o] = kernel[u, v, c, o] where folded pixel f, column t is output a's tap v
    f, t, a, v = np.ix_(range(band_width), range(fold), range(block), range(kw))
    selection = fold * f + t == step * a + dilation[1] * v
    band = jnp.einsum("ftav,uvco->uftcao", selection.astype(kernel.dtype), kernel)
    y = lax.conv_general_dilated(
        folded,
        band.reshape(kh, band_width, fold * channels, block * out_channels),
        window_strides=(stride[0], 1),
        padding=(pads[0], (0, 0)),
        rhs_dilation=(dilation[0], 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y.reshape(n, y.shape[1], out_w, out_channels)


CONVS = {"xla": conv_xla, "patches": conv_patches, "banded": conv_banded, "onednn": onednn.conv}
