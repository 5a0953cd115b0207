"""oneDNN convolutions for XLA:CPU: ``functional.conv2d``'s 'onednn' lowering.

XLA:CPU runs convolutions with Eigen and transposes both operands for every kernel gradient; oneDNN, the library
PyTorch's CPU convolutions use, runs the zoo's layers faster forward and backward (docs/performance.md,
bench/conv_lowering.py; ``functional.default_conv_lowering`` says where it is the default). cnnjax calls it through an
XLA FFI custom call compiled from ``cnnjax/lowering/csrc/onednn_conv.cc`` when the package is installed (``setup.py``,
against the ``onednn-cpu-gomp`` wheel), so it runs inside the jitted program like any other XLA
operation: forward, input gradient and kernel gradient, each a oneDNN primitive built once per shape, and a JAX
primitive differentiable like ``lax.conv``. Traced under a mesh of several devices (``jax.set_mesh``), each
device convolves its part of the batch. float32, or bfloat16 (accumulated in float32), the operands all one dtype;
float32 ones in bfloat16 under ``jax.default_matmul_precision('bfloat16')`` where the CPU multiplies bfloat16 in
hardware (:func:`multiplies_float32_in_bfloat16`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import importlib.metadata
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

OPT_OUT = "CNNJAX_ONEDNN"  # =0: conv2d's default lowering leaves oneDNN out (for comparisons)
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
    """Whether conv2d's default lowering may pick oneDNN: it can run here and ``CNNJAX_ONEDNN=0`` is not set."""
    return os.environ.get(OPT_OUT) != "0" and unavailable_reason() is None


# oneDNN's threads per call at most: on a 16-core x86 CPU more threads than 8 made the Flax MNIST CNN's step slower
# than XLA's own convolutions (bench/vs_pytorch.py, run with this value edited)
MAX_THREADS = 8
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo, e.g. 'avx2', 'avx512_bf16'); empty where the file does not say."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return frozenset()
    return frozenset(flags.partition(":")[2].split())


def native_bfloat16() -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AVX512_BF16 or AMX), where oneDNN's bfloat16 convolutions
    outrun its float32 ones; elsewhere oneDNN emulates them, slower than float32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def multiplies_float32_in_bfloat16() -> bool:
    """Whether float32 convolutions traced now run in bfloat16 (operands rounded to it, products accumulated in float32,
    the result float32): inside ``jax.default_matmul_precision('bfloat16')`` (``config.train.matmul_precision``) on a
    CPU with :func:`native_bfloat16`. JAX treats precision as a hint, as XLA:CPU does for its own operations: a CPU
    that would only emulate bfloat16 keeps float32."""
    return jax.config.jax_default_matmul_precision == "bfloat16" and native_bfloat16()


def threads_per_device() -> int:
    """The cores each CPU device's oneDNN calls run on: all of them up to :data:`MAX_THREADS`, shared out when XLA
    splits the CPU into several devices that run at once (``parallel.split_cpu``)."""
    return max(1, min(MAX_THREADS, len(os.sched_getaffinity(0)) // jax.local_device_count("cpu")))


def conv(x: jax.Array, kernel: jax.Array, stride, dilation, pads, groups: int) -> jax.Array:
    """conv2d with oneDNN: x (N, H, W, C), kernel (kh, kw, C // groups, O), both float32 or both bfloat16 ->
    (N, H_out, W_out, O) of their dtype; ``stride``, ``dilation`` pairs, ``pads`` ((top, bottom), (left, right)) as
    ``functional.conv2d`` canonicalizes them. Raises a ValueError when oneDNN cannot run it."""
    if x.dtype != kernel.dtype or x.dtype not in DTYPES:
        raise ValueError(
            f"conv2d: lowering='onednn' runs float32 or bfloat16 operands of one dtype, got {x.dtype} input and "
            f"{kernel.dtype} kernel; use lowering='xla' (or None, which picks one for the dtype)"
        )
    reason = unavailable_reason()
    if reason is not None:
        raise ValueError(f"conv2d: lowering='onednn' is not available: {reason}; or use lowering='xla'")
    if x.dtype == jnp.bfloat16 and not native_bfloat16():
        raise ValueError("conv2d: lowering='onednn' runs bfloat16 only on CPUs with AVX512_BF16 or AMX, which this one "
                         "lacks; use lowering='xla'")  # fmt: skip
    if x.dtype == jnp.float32 and multiplies_float32_in_bfloat16():
        narrow = conv(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), stride, dilation, pads, groups)
        return narrow.astype(jnp.float32)
    (top, bottom), (left, right) = pads
    geometry = (*stride, *dilation, top, bottom, left, right, groups)

    def forward(x, kernel):
        return _bind(FORWARD, x, kernel, geometry, _output_shape(x.shape, kernel.shape, geometry))

    return _split_by_batch(forward, x, kernel)


def _split_by_batch(f, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``f(x, kernel)``, run by every device on its part of the batch where JAX traces under a mesh of several devices
    (``jax.set_mesh``): XLA's SPMD partitioner cannot split the custom call by itself, and would give every device
    the whole batch to convolve. The mesh's axes together split the batch; the kernel gradient's
    parts are summed over them by ``shard_map``'s transpose (``check_vma=False``: the primitive does not track which
    values vary over the mesh, so its cotangent counts as varying)."""
    mesh = jax.sharding.get_abstract_mesh()
    manual = jax.sharding.AxisType.Manual in mesh.axis_types  # inside a shard_map: x is this device's part already
    if mesh.empty or mesh.size == 1 or manual or x.shape[0] % mesh.size:
        return f(x, kernel)
    batch, replicated = jax.sharding.PartitionSpec(mesh.axis_names), jax.sharding.PartitionSpec()
    split = jax.shard_map(f, mesh=mesh, in_specs=(batch, replicated), out_specs=batch, check_vma=False)
    return split(x, kernel)


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


# One primitive for the three operations (its `kind`), each bilinear in its two operands and the others' transposes:
# forward (x, w) -> y, input gradient (dy, w) -> dx, kernel gradient (x, dy) -> dw. So JAX differentiates it in both
# modes, to any order, as it does lax.conv_general_dilated.
onednn_conv_p = Primitive("onednn_conv")


def _bind(kind: int, a: jax.Array, b: jax.Array, geometry: tuple[int, ...], shape) -> jax.Array:
    return onednn_conv_p.bind(a, b, kind=kind, geometry=geometry, shape=tuple(shape), threads=threads_per_device())


def _abstract_eval(a, b, *, kind, geometry, shape, threads):
    return jax.core.ShapedArray(shape, a.dtype)


@functools.cache
def _jitted(**params):
    return jax.jit(functools.partial(onednn_conv_p.bind, **params))


def _eager(a, b, **params):
    """Outside jit, as a one-operation program (what JAX does for its own primitives)."""
    return _jitted(**params)(a, b)


def _lowering(ctx, a, b, *, kind, geometry, shape, threads):
    attributes = dict(kind=np.int64(kind), geometry=np.asarray(geometry, np.int64), threads=np.int64(threads))
    return jax.ffi.ffi_lowering(TARGET)(ctx, a, b, **attributes)


# (kind, operand) -> how the cotangent of the output gives the operand's: (kind, operands from (ct, a, b))
_TRANSPOSES = {
    (FORWARD, 0): (INPUT_GRADIENT, lambda ct, x, w: (ct, w)),
    (FORWARD, 1): (KERNEL_GRADIENT, lambda ct, x, w: (x, ct)),
    (INPUT_GRADIENT, 0): (FORWARD, lambda ct, dy, w: (ct, w)),
    (INPUT_GRADIENT, 1): (KERNEL_GRADIENT, lambda ct, dy, w: (ct, dy)),
    (KERNEL_GRADIENT, 0): (INPUT_GRADIENT, lambda ct, x, dy: (dy, ct)),
    (KERNEL_GRADIENT, 1): (FORWARD, lambda ct, x, dy: (x, ct)),
}


def _transpose_rule(operand: int):
    def rule(ct, a, b, *, kind, geometry, shape, threads):
        transposed_kind, operands = _TRANSPOSES[kind, operand]
        return _bind(transposed_kind, *operands(ct, a, b), geometry, (a, b)[operand].aval.shape)  # the undefined one's

    return rule


def _batching_rule(args, dims, *, kind, geometry, shape, threads):
    """A mapped activation alone (the forward pass's or input gradient's first operand) joins the batch. Otherwise the
    mapped elements become groups of one grouped convolution: every operand and the result, activations (N, H, W, C)
    and kernels (kh, kw, C // groups, O) alike, hold the elements side by side in their last axis (an unmapped
    operand is repeated)."""
    a, b = args
    size = next(arg.shape[dim] for arg, dim in zip(args, dims) if dim is not None)
    if kind != KERNEL_GRADIENT and dims[1] is None:
        a = jnp.moveaxis(a, dims[0], 0)
        out = _bind(kind, a.reshape(-1, *a.shape[2:]), b, geometry, (size * shape[0], *shape[1:]))
        return out.reshape(size, *shape), 0
    stacked = [_side_by_side(arg, dim, size) for arg, dim in zip(args, dims)]
    grouped = (*geometry[:8], geometry[8] * size)
    out = _bind(kind, *stacked, grouped, (*shape[:-1], size * shape[-1]))
    return out.reshape(*shape[:-1], size, shape[-1]), len(shape) - 1


def _side_by_side(operand: jax.Array, dim: int | None, size: int) -> jax.Array:
    """(..., C) mapped over ``dim`` (None: the same for all ``size`` elements) -> (..., size * C), element-major."""
    if dim is None:
        operand = jnp.broadcast_to(operand[..., None, :], (*operand.shape[:-1], size, operand.shape[-1]))
    else:
        operand = jnp.moveaxis(operand, dim, -2)
    return operand.reshape(*operand.shape[:-2], -1)


onednn_conv_p.def_impl(_eager)
onednn_conv_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(onednn_conv_p, _lowering, platform="cpu")
ad.defbilinear(onednn_conv_p, _transpose_rule(0), _transpose_rule(1))
batching.primitive_batchers[onednn_conv_p] = _batching_rule
