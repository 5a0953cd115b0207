"""Which lowering ``functional.conv2d`` uses: the rules per backend, kernel and dtype, and a block that forces one."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp

from cnnjax.lowering import onednn

CONV_LOWERINGS = ("xla", "patches", "banded", "onednn")
_FORCED_LOWERING: contextvars.ContextVar[str | None] = contextvars.ContextVar("conv_lowering", default=None)


@contextlib.contextmanager
def conv_lowering(lowering: str) -> Iterator[None]:
    """Makes every :func:`conv2d` traced inside the block that does not name its own ``lowering`` use ``lowering``.

    ``with conv_lowering('xla'): jax.export.export(jax.jit(f))(...)`` gives a portable program: 'onednn' is an XLA
    custom call that exists only in a process that loaded cnnjax's handler, so serialized or exported programs must
    not contain it. It acts when a function is traced: JAX caches traces per function, so trace a function in the
    block that was not traced outside it (and the other way round), e.g. a new ``jax.jit(lambda ...)``.
    """
    if lowering not in CONV_LOWERINGS:
        raise ValueError(f"conv_lowering: lowering must be one of {CONV_LOWERINGS}, got {lowering!r}")
    token = _FORCED_LOWERING.set(lowering)
    try:
        yield
    finally:
        _FORCED_LOWERING.reset(token)


def default_conv_lowering(kernel_shape: Sequence[int], backend: str | None = None, dtype=jnp.float32) -> str:
    """The fastest lowering for an HWIO kernel and input ``dtype`` on ``backend`` ('cpu', 'gpu', 'tpu'; None: JAX's
    default backend).

    The rules, each measured by bench/conv_lowering.py and bench/vs_pytorch.py (reasons and figures in
    docs/performance.md):

    - GPU and TPU: 'xla' (``lax.conv_general_dilated``).
    - CPU, float32 (or bfloat16 on a CPU that multiplies it in hardware, ``onednn.native_bfloat16``), oneDNN's
      handler built (:mod:`cnnjax.onednn`) and one CPU device: 'onednn', the fastest for every benchmarked layer
      forward and backward on a 2-core CPU; except convolutions over at most 6 input channels where a device has more
      than 2 cores, whose oneDNN primitives scale worse with cores than XLA's banded convolutions.
    - Otherwise (another dtype, no handler, several CPU devices, which XLA's SPMD partitioner cannot split a custom
      call over): 'banded' over at most 6 input channels, where XLA:CPU's convolution is weakest, else 'xla'.
    """
    if (backend or jax.default_backend()) != "cpu":
        return "xla"
    few_channels = kernel_shape[2] <= 6
    if (
        (jnp.dtype(dtype) == jnp.float32 or (jnp.dtype(dtype) == jnp.bfloat16 and onednn.native_bfloat16()))
        and onednn.available()
        and jax.device_count("cpu") == 1
        and (not few_channels or onednn.threads_per_device() <= 2)
    ):
        return "onednn"
    return "banded" if few_channels else "xla"


def chosen_lowering(kernel_shape: Sequence[int], dtype, lowering: str | None = None) -> str:
    """``lowering`` if given, else the one of an enclosing :func:`conv_lowering` block, else
    :func:`default_conv_lowering`'s; an unknown name is a ValueError naming the choices."""
    lowering = lowering or _FORCED_LOWERING.get() or default_conv_lowering(kernel_shape, dtype=dtype)
    if lowering not in CONV_LOWERINGS:
        raise ValueError(f"conv2d: lowering must be one of {CONV_LOWERINGS} or None, got {lowering!r}")
    return lowering
