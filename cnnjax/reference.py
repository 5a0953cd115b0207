"""NumPy loop implementations of convolution and pooling, forward and backward.

Teaching code in the spirit of the classic tutorial ("Convolutional Model: step by step"), written for clarity, not
speed, and used as the test oracle for :mod:`cnnjax.functional` and its gradients. Shapes follow the tutorial:

- ``A_prev``: (m, n_H_prev, n_W_prev, n_C_prev) activations of the previous layer (NHWC);
- ``W``: (f_h, f_w, n_C_prev, n_C) filters; ``b``: (1, 1, 1, n_C) biases;
- ``stride``, ``pad``: ints, the same along height and width; ``pad`` adds ``pad`` zeros on every side.

Unlike the tutorial, the backward pass removes padding with ``[pad:pad + n_H_prev]``: the tutorial's
``[pad:-pad]`` returns an empty array when ``pad == 0``.
"""

from __future__ import annotations

import numpy as np


def zero_pad(X: np.ndarray, pad: int) -> np.ndarray:
    """Pads the height and width of a batch (m, n_H, n_W, n_C) with ``pad`` zeros on each side."""
    return np.pad(X, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="constant", constant_values=0)


def output_size(n: int, f: int, stride: int, pad: int = 0) -> int:
    """The source material's formula ``floor((n + 2p - f) / s) + 1``."""
    return (n + 2 * pad - f) // stride + 1


def conv_single_step(a_slice_prev: np.ndarray, W: np.ndarray, b: np.ndarray) -> float:
    """One filter applied to one slice: ``sum(a_slice_prev * W) + b``. a_slice_prev, W: (f_h, f_w, n_C_prev)."""
    return float(np.sum(a_slice_prev * W) + np.squeeze(b))


def conv_forward(A_prev: np.ndarray, W: np.ndarray, b: np.ndarray, stride: int, pad: int):
    """Convolution (cross-correlation) forward pass.

    Returns ``(Z, cache)`` with Z: (m, n_H, n_W, n_C) and cache = (A_prev, W, b, stride, pad).
    """
    m, n_H_prev, n_W_prev, _ = A_prev.shape
    f_h, f_w, _, n_C = W.shape
    n_H, n_W = output_size(n_H_prev, f_h, stride, pad), output_size(n_W_prev, f_w, stride, pad)
    Z = np.zeros((m, n_H, n_W, n_C), dtype=np.result_type(A_prev, W))
    A_prev_pad = zero_pad(A_prev, pad)
    for i in range(m):
        a_prev_pad = A_prev_pad[i]
        for h in range(n_H):
            vert_start = h * stride
            for w in range(n_W):
                horiz_start = w * stride
                a_slice_prev = a_prev_pad[vert_start : vert_start + f_h, horiz_start : horiz_start + f_w, :]
                for c in range(n_C):
                    Z[i, h, w, c] = conv_single_step(a_slice_prev, W[:, :, :, c], b[:, :, :, c])
    return Z, (A_prev, W, b, stride, pad)


def conv_backward(dZ: np.ndarray, cache):
    """Convolution backward pass: gradients of the loss with respect to the input, filters and biases.

    dZ: (m, n_H, n_W, n_C). Returns ``(dA_prev, dW, db)`` shaped like A_prev, W and b.
    """
    A_prev, W, b, stride, pad = cache
    m, n_H_prev, n_W_prev, _ = A_prev.shape
    f_h, f_w, _, n_C = W.shape
    _, n_H, n_W, _ = dZ.shape
    dA_prev_pad = zero_pad(np.zeros_like(A_prev, dtype=dZ.dtype), pad)
    dW = np.zeros_like(W, dtype=dZ.dtype)
    db = np.zeros_like(b, dtype=dZ.dtype)
    A_prev_pad = zero_pad(A_prev, pad)
    for i in range(m):
        for h in range(n_H):
            vert_start = h * stride
            for w in range(n_W):
                horiz_start = w * stride
                window = np.s_[vert_start : vert_start + f_h, horiz_start : horiz_start + f_w, :]
                a_slice = A_prev_pad[i][window]
                for c in range(n_C):
                    dA_prev_pad[i][window] += W[:, :, :, c] * dZ[i, h, w, c]
                    dW[:, :, :, c] += a_slice * dZ[i, h, w, c]
                    db[:, :, :, c] += dZ[i, h, w, c]
    dA_prev = dA_prev_pad[:, pad : pad + n_H_prev, pad : pad + n_W_prev, :]
    return dA_prev, dW, db


def pool_forward(A_prev: np.ndarray, f: int, stride: int, mode: str = "max"):
    """Pooling forward pass (no padding) with an f x f window; mode is 'max' or 'average'.

    Returns ``(A, cache)`` with A: (m, n_H, n_W, n_C) and cache = (A_prev, f, stride).
    """
    _check_mode(mode)
    m, n_H_prev, n_W_prev, n_C = A_prev.shape
    n_H, n_W = output_size(n_H_prev, f, stride), output_size(n_W_prev, f, stride)
    A = np.zeros((m, n_H, n_W, n_C), dtype=A_prev.dtype)
    reduce = np.max if mode == "max" else np.mean
    for i in range(m):
        for h in range(n_H):
            for w in range(n_W):
                for c in range(n_C):
                    a_prev_slice = A_prev[i, h * stride : h * stride + f, w * stride : w * stride + f, c]
                    A[i, h, w, c] = reduce(a_prev_slice)
    return A, (A_prev, f, stride)


def create_mask_from_window(x: np.ndarray) -> np.ndarray:
    """True at the (first) maximum of a window: where max pooling routes the gradient."""
    mask = np.zeros(x.shape, dtype=bool)
    mask[np.unravel_index(np.argmax(x), x.shape)] = True
    return mask


def distribute_value(dz: float, shape: tuple[int, int]) -> np.ndarray:
    """Spreads a gradient evenly over a window: what average pooling's backward pass does (dz / (f * f) each)."""
    return np.full(shape, dz / (shape[0] * shape[1]))


def pool_backward(dA: np.ndarray, cache, mode: str = "max") -> np.ndarray:
    """Pooling backward pass. dA: (m, n_H, n_W, n_C). Returns dA_prev shaped like A_prev.

    Max pooling routes each gradient to the argmax of its window; average pooling divides it by f * f.
    """
    _check_mode(mode)
    A_prev, f, stride = cache
    m, n_H, n_W, n_C = dA.shape
    dA_prev = np.zeros_like(A_prev, dtype=dA.dtype)
    for i in range(m):
        for h in range(n_H):
            for w in range(n_W):
                for c in range(n_C):
                    window = np.s_[i, h * stride : h * stride + f, w * stride : w * stride + f, c]
                    if mode == "max":
                        dA_prev[window] += create_mask_from_window(A_prev[window]) * dA[i, h, w, c]
                    else:
                        dA_prev[window] += distribute_value(dA[i, h, w, c], (f, f))
    return dA_prev


def _check_mode(mode: str) -> None:
    if mode not in ("max", "average"):
        raise ValueError(f"pooling mode must be 'max' or 'average', got {mode!r}")
