"""Per-layer forward+backward time of each conv2d lowering and pool implementation on this backend.

    PYTHONPATH=. .venv/bin/python bench/conv_lowering.py [--rounds=7]

The layers of the benchmarked models at batch 128 (modern LeNet, the Flax MNIST CNN, cifar_cnn, ResNet-20's 3x3
convs). Rounds are interleaved (A, B, C, A, ...) and medians printed with the ratio xla / best of the others (> 1:
that one wins).
Then the kernel gradient alone of the ResNet-20 layers (XLA's, which transposes both operands for an Eigen
convolution, against patches^T @ dy, the banded kernel's gradient and oneDNN's), and max pooling (forward and
backward) by ``lax.reduce_window`` against cnnjax's ``max_pool``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import workloads

from cnnjax import functional as F

BATCH = 128
# name -> (input (H, W, C), kernel (kh, kw, in, out), padding, stride)
CONVS = {
    "lenet conv1 5x5 1->6 SAME": ((28, 28, 1), (5, 5, 1, 6), "SAME", 1),
    "lenet conv2 5x5 6->16": ((14, 14, 6), (5, 5, 6, 16), "VALID", 1),
    "mnist cnn conv1 3x3 1->32": ((28, 28, 1), (3, 3, 1, 32), "SAME", 1),
    "mnist cnn conv2 3x3 32->64": ((14, 14, 32), (3, 3, 32, 64), "SAME", 1),
    "cifar_cnn conv1 5x5 3->64": ((32, 32, 3), (5, 5, 3, 64), "SAME", 1),
    "cifar_cnn conv2 5x5 64->64": ((16, 16, 64), (5, 5, 64, 64), "SAME", 1),
    "resnet20 stem 3x3 3->16": ((32, 32, 3), (3, 3, 3, 16), "SAME", 1),
    "resnet20 3x3 16->16": ((32, 32, 16), (3, 3, 16, 16), "SAME", 1),
    "resnet20 3x3 32->32 stride 2": ((32, 32, 16), (3, 3, 16, 32), "SAME", 2),
    "resnet20 3x3 64->64": ((8, 8, 64), (3, 3, 64, 64), "SAME", 1),
}


def fwd_bwd(op, first_layer: bool = False):
    """jit(grad) of sum(op(x, w) ** 2) w.r.t. both arguments, or w alone for a first layer (whose input is the images:
    training needs no gradient for them)."""
    return jax.jit(jax.grad(lambda x, w: jnp.sum(op(x, w) ** 2), argnums=1 if first_layer else (0, 1)))


def kernel_grad(op):
    """jit of the gradient w.r.t. the kernel alone of sum(op(x, w) * dy), as (w, x, dy) -> dw."""
    return jax.jit(jax.grad(lambda w, x, dy: jnp.sum(op(x, w) * dy)))


def max_pool_grads(shape, window: int, stride: int, padding: str) -> dict:
    """{implementation: jit(grad) of sum(max_pool(x) ** 2)} for lax.reduce_window and cnnjax's max_pool."""
    pads = F.explicit_padding(shape[:2], (window, window), (stride, stride), (1, 1), padding)
    pools = {
        "reduce_window": lambda x: F._window_reduce(x, -jnp.inf, jax.lax.max, (window,) * 2, (stride,) * 2, pads),
        "max_pool": lambda x: F.max_pool(x, window, stride=stride, padding=padding),
    }
    return {name: jax.jit(jax.grad(lambda x, f=f: jnp.sum(f(x) ** 2))) for name, f in pools.items()}


def median_times(candidates: dict, args, rounds: int) -> dict:
    for fn in candidates.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def per_lowering(transform, padding, stride) -> dict:
    """{lowering: transform(conv2d with that lowering, as (x, w) -> y)} for each of F.CONV_LOWERINGS."""
    return {
        lowering: transform(lambda x, w, lo=lowering: F.conv2d(x, w, padding=padding, stride=stride, lowering=lo))
        for lowering in F.CONV_LOWERINGS
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    key = jax.random.key(0)
    print(f"backend {jax.default_backend()}, batch {BATCH}, median ms of {args.rounds} interleaved rounds")
    convs, pool_times = {}, {}
    for name, (shape, kernel_shape, padding, stride) in CONVS.items():
        x = jax.random.normal(key, (BATCH, *shape))
        w = jax.random.normal(key, kernel_shape)
        transform = functools.partial(fwd_bwd, first_layer=shape[-1] <= 3)  # the images' 1 or 3 channels
        timed = {f"{name} fwd+bwd": (per_lowering(transform, padding, stride), (x, w))}
        if name.startswith("resnet20 3x3"):
            dy = F.conv2d(x, w, padding=padding, stride=stride)
            timed[f"{name} dw"] = (per_lowering(kernel_grad, padding, stride), (w, x, dy))
        for label, (candidates, inputs) in timed.items():
            t = median_times(candidates, inputs, args.rounds)
            best = min((name for name in t if name != "xla"), key=t.get)
            convs[label] = {"median_s": t, "fastest_not_xla": best, "xla_over_fastest": t["xla"] / t[best]}
            print(f"{label:>40}: " + "  ".join(f"{name} {1e3 * seconds:7.2f}" for name, seconds in t.items())
                  + f"  xla / {best} {t['xla'] / t[best]:.2f}x")  # fmt: skip
    # (H, W, C), window, stride, padding: LeNet's and the MNIST CNN's 2x2 pools, cifar_cnn's and AlexNet's 3x3 stride 2
    pools = [((28, 28, 6), 2, 2, "VALID"), ((28, 28, 32), 2, 2, "VALID"), ((16, 16, 64), 2, 2, "VALID")]
    pools += [((32, 32, 64), 3, 2, "SAME"), ((55, 55, 96), 3, 2, "VALID")]
    for shape, window, stride, padding in pools:
        t = median_times(
            max_pool_grads(shape, window, stride, padding), (jax.random.normal(key, (BATCH, *shape)),), args.rounds
        )
        label = f"max_pool {window}x{window}/{stride} on {'x'.join(map(str, shape))}"
        pool_times[label] = {"median_s": t, "reduce_window_over_cnnjax": t["reduce_window"] / t["max_pool"]}
        print(f"{label:>40}: reduce_window {1e3 * t['reduce_window']:7.2f}  cnnjax's (tiles or strided views) "
              f"{1e3 * t['max_pool']:7.2f}  ratio {t['reduce_window'] / t['max_pool']:.2f}x")  # fmt: skip
    result = {"batch": BATCH, "rounds": args.rounds, "convolutions": convs, "max_pool": pool_times}
    print(f"wrote {workloads.write_result('conv_lowering', result)}")


if __name__ == "__main__":
    main()
