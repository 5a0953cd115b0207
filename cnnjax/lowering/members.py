"""One convolution per member where ``jax.vmap`` maps a stack of independent models over :data:`MEMBER_AXIS` on the
CPU (cnnjax.sweep's vectorized groups), instead of JAX's grouped convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# The axis name under which a ``jax.vmap`` maps a stack of independent models (cnnjax.sweep's vectorized groups).
MEMBER_AXIS = "members"


def mapped_over_members() -> bool:
    """Whether this code runs inside ``jax.vmap(..., axis_name=MEMBER_AXIS)``."""
    try:
        lax.axis_size(MEMBER_AXIS)
    except NameError:
        return False
    return True


def one_conv_per_member(conv):
    """``conv(x, kernel)`` whose batching over members whose inputs and kernels both differ runs one convolution per
    member, unrolled, forward and backward. JAX's own batching rule makes that one grouped convolution with a group
    per member, which XLA:CPU rewrites into a dilated 3-D convolution, far slower (bench/sweep_vectorized.py
    --grouped_convs compares the two). Members that share the
    input (a first layer) keep JAX's rule, which stacks their kernels into one convolution with all their output
    channels. Reverse-mode only (``jax.custom_vjp``), which is what training needs."""
    forward = _unrolled_when_both_mapped(conv)
    backward = _unrolled_when_both_mapped(lambda x, kernel, dy: jax.vjp(conv, x, kernel)[1](dy))
    member_conv = jax.custom_vjp(lambda x, kernel: forward(x, kernel))
    member_conv.defvjp(lambda x, kernel: (forward(x, kernel), (x, kernel)), lambda saved, dy: backward(*saved, dy))
    return member_conv


def _unrolled_when_both_mapped(f):
    """``f(x, kernel, ...)`` whose ``vmap`` calls f once per mapped element where x and the kernel are both mapped,
    and is JAX's usual batching otherwise."""
    f_mapped = jax.custom_batching.custom_vmap(f)

    @f_mapped.def_vmap
    def rule(axis_size: int, in_batched: list[bool], *args):
        if in_batched[0] and in_batched[1]:
            outs = [f_mapped(*(a[k] if mapped else a for a, mapped in zip(args, in_batched))) for k in range(axis_size)]
            out = jax.tree_util.tree_map(lambda *members: jnp.stack(members), *outs)
        else:
            out = jax.vmap(f, in_axes=tuple(0 if mapped else None for mapped in in_batched))(*args)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return f_mapped
