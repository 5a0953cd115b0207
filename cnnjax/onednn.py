"""oneDNN convolutions for XLA:CPU: ``functional.conv2d``'s 'onednn' lowering.

XLA:CPU runs convolutions with Eigen and transposes both operands for every kernel gradient; oneDNN, the library
PyTorch's CPU convolutions use, ran the layers of LeNet, the MNIST CNN, ``cifar_cnn`` and ResNet-20 1.4-3.2x faster
forward and backward (bench/conv_lowering.py). cnnjax calls it through an XLA FFI custom call compiled from
``cnnjax/csrc/onednn_conv.cc`` when the package is installed (``setup.py``, against the ``onednn-cpu-gomp`` wheel), so
it runs inside the jitted program like any other XLA operation: forward, input gradient and kernel gradient, each a
oneDNN primitive built once per shape. float32 only; reverse-mode differentiation (``jax.custom_vjp``).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.machinery
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

TARGET = "cnnjax_onednn_conv"
FORWARD, INPUT_GRADIENT, KERNEL_GRADIENT = 0, 1, 2  # the handler's `kind`
_LIBRARY_STEM = "_onednn_conv"


def _library_path() -> Path | None:
    """The compiled handler next to this module, whatever its extension-module suffix."""
    here = Path(__file__).parent
    found = [here / (_LIBRARY_STEM + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    return next((path for path in found if path.exists()), None)


@functools.cache
def unavailable_reason() -> str | None:
    """None once the handler is loaded and registered with XLA:CPU, else why it cannot be (said once, cached)."""
    library = _library_path()
    if library is None:
        return (
            f"the compiled handler ({_LIBRARY_STEM}*.so) is not in {Path(__file__).parent}: reinstall cnnjax on "
            "Linux x86_64 with a C++ compiler (`bash scripts/setup.sh`, or `pip install -e .`)"
        )
    try:
        oneDNN = importlib.metadata.distribution("onednn-cpu-gomp")
        runtime = next(f for f in oneDNN.files if f.name == "libdnnl.so.3")
        ctypes.CDLL(str(oneDNN.locate_file(runtime)), mode=ctypes.RTLD_GLOBAL)  # our library links against it
        handler = ctypes.CDLL(str(library)).CnnjaxOnednnConv
    except (importlib.metadata.PackageNotFoundError, StopIteration, OSError, AttributeError) as error:
        return f"loading {library.name} or the onednn-cpu-gomp wheel's libdnnl.so.3 failed: {error}"
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")
    return None


def available() -> bool:
    """Whether the 'onednn' lowering can run here."""
    return unavailable_reason() is None


def _call(kind: int, a: jax.Array, b: jax.Array, out_shape, geometry: tuple[int, ...]) -> jax.Array:
    result = jax.ShapeDtypeStruct(out_shape, jnp.float32)
    call = jax.ffi.ffi_call(TARGET, result, vmap_method="sequential")
    return call(a, b, kind=np.int64(kind), geometry=np.asarray(geometry, np.int64))


def conv(x: jax.Array, kernel: jax.Array, stride, dilation, pads, groups: int) -> jax.Array:
    """conv2d with oneDNN: x (N, H, W, C) float32, kernel (kh, kw, C // groups, O) float32 -> (N, H_out, W_out, O);
    ``stride``, ``dilation`` pairs, ``pads`` ((top, bottom), (left, right)) as ``functional.conv2d`` canonicalizes
    them. Raises a ValueError when oneDNN cannot run it."""
    if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        raise ValueError(
            f"conv2d: lowering='onednn' runs float32 only, got {x.dtype} input and {kernel.dtype} kernel; "
            "use lowering='xla' (or None, which picks one for the dtype)"
        )
    reason = unavailable_reason()
    if reason is not None:
        raise ValueError(f"conv2d: lowering='onednn' is not available: {reason}; or use lowering='xla'")
    (top, bottom), (left, right) = pads
    geometry = (*stride, *dilation, top, bottom, left, right, groups)
    return _onednn_conv(x, kernel, geometry)


def _output_shape(x_shape, kernel_shape, geometry) -> tuple[int, ...]:
    """The forward pass's output shape, by XLA's own shape rule for the same convolution."""
    stride, dilation, (top, bottom, left, right), groups = geometry[:2], geometry[2:4], geometry[4:8], geometry[8]
    like = functools.partial(
        jax.lax.conv_general_dilated,
        window_strides=stride,
        padding=((top, bottom), (left, right)),
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )
    as_f32 = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    return jax.eval_shape(like, as_f32(x_shape), as_f32(kernel_shape)).shape


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _onednn_conv(x: jax.Array, kernel: jax.Array, geometry: tuple[int, ...]) -> jax.Array:
    return _call(FORWARD, x, kernel, _output_shape(x.shape, kernel.shape, geometry), geometry)


def _forward(x, kernel, geometry):
    return _onednn_conv(x, kernel, geometry), (x, kernel)


def _backward(geometry, saved, dy):
    x, kernel = saved
    return _call(INPUT_GRADIENT, dy, kernel, x.shape, geometry), _call(KERNEL_GRADIENT, x, dy, kernel.shape, geometry)


_onednn_conv.defvjp(_forward, _backward)
