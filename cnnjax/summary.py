"""Per-layer model summary: output shape, parameters, connections, FLOPs and receptive field.

"Connections" is LeCun's count: the multiply-adds of one forward pass, a bias counting as one connection from a
constant input; FLOPs count a multiply-add as two operations. All counts are per example. Shapes are found by
tracing (``jax.eval_shape``): nothing is computed or compiled, and a model whose hyperparameters cannot work raises
its ``ValueError`` here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax

from cnnjax import functional as F
from cnnjax import models
from cnnjax import nn as cnn


def _size(shape) -> int:
    return math.prod(shape[1:])


def _conv_counts(layer: cnn.Conv2D, in_shape, out_shape):
    kh, kw = F.as_pair(layer.kernel_size, "kernel_size")
    dh, dw = F.as_pair(layer.dilation, "dilation")
    taps = kh * kw * in_shape[-1] // layer.groups
    outputs = _size(out_shape)
    window = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    return outputs * (taps + layer.use_bias), outputs * (2 * taps + layer.use_bias), window, layer.stride


def _partial_conv_counts(layer: cnn.PartialConv2D, in_shape, out_shape):
    kh, kw = F.as_pair(layer.kernel_size, "kernel_size")
    positions = out_shape[1] * out_shape[2]
    taps = kh * kw * int(sum(map(sum, layer.table)))
    channels = out_shape[-1]
    return positions * (taps + channels), positions * (2 * taps + channels), (kh, kw), layer.stride


def _subsampling_counts(layer: cnn.Subsampling, in_shape, out_shape):
    per_output = layer.window**2 + 1
    return _size(out_shape) * per_output, _size(out_shape) * per_output, layer.window, layer.window


def _dense_counts(layer: cnn.Dense, in_shape, out_shape):
    outputs = _size(out_shape)
    return outputs * (in_shape[-1] + layer.use_bias), outputs * (2 * in_shape[-1] + layer.use_bias), None, None


def _rbf_counts(layer: cnn.RBFOutput, in_shape, out_shape):
    return _size(out_shape) * in_shape[-1], 3 * _size(out_shape) * in_shape[-1], None, None


def _pool_counts(layer: cnn.MaxPool2D, in_shape, out_shape):
    area = math.prod(F.as_pair(layer.window, "window"))
    stride = layer.window if layer.stride is None else layer.stride
    return _size(out_shape) * area, _size(out_shape) * area, layer.window, stride


def _global_pool_counts(layer, in_shape, out_shape):
    return _size(in_shape), _size(in_shape), None, None


def _lrn_counts(layer: cnn.LRN, in_shape, out_shape):
    width = 2 * layer.depth_radius + 1
    return _size(out_shape) * width, _size(out_shape) * (2 * width + 3), 1, 1


def _norm_counts(layer, in_shape, out_shape):
    return _size(out_shape), 4 * _size(out_shape), 1, 1


# Layer type -> (module, input shape, output shape) -> (connections, flops, window, stride); window None = global.
_COUNTS = {
    cnn.Conv2D: _conv_counts,
    cnn.PartialConv2D: _partial_conv_counts,
    cnn.Subsampling: _subsampling_counts,
    cnn.Dense: _dense_counts,
    cnn.RBFOutput: _rbf_counts,
    cnn.MaxPool2D: _pool_counts,
    cnn.AvgPool2D: _pool_counts,
    cnn.GlobalAvgPool: _global_pool_counts,
    cnn.GlobalMaxPool: _global_pool_counts,
    cnn.LRN: _lrn_counts,
    cnn.BatchNorm: _norm_counts,
    cnn.LayerNorm: _norm_counts,
    cnn.GroupNorm: _norm_counts,
}


def _count_leaves(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _subtree(variables, collection: str, path: Sequence[str]):
    tree = variables.get(collection, {})
    for key in path:
        tree = tree.get(key, {})
    return tree


def summarize(model: nn.Module, input_shape: Sequence[int], **call_kwargs) -> list[dict]:
    """One row per layer of ``model`` on inputs of shape ``input_shape`` = (H, W, C) (a leading batch size is ignored).

    Each row: ``name`` (module path), ``type``, ``output_shape`` (without the batch), ``params`` (all, fixed ones
    included), ``trainable`` (those in the ``params`` collection), ``connections``, ``flops`` and
    ``receptive_field`` (h, w) in input pixels, and ``init``: the layer's 'kernel / bias' initializer names where the
    model takes them from its config (``model.kernel_init``, ``model.bias_init``). Receptive fields follow the layers
    in call order, each layer reading the latest output of the shape it receives: exact for chains, an estimate
    inside branching blocks.
    """
    image_shape = tuple(input_shape[-3:])
    calls = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and type(context.module) in _COUNTS:
            calls.append((context.module, args[0].shape, out.shape))
        return out

    with nn.intercept_methods(record):
        variables = models.abstract_init(model, image_shape, **call_kwargs)
    rows, fields = [], [((1, *image_shape), (1, 1), (1, 1))]  # (output shape, receptive field, jump) per row
    for module, in_shape, out_shape in calls:
        connections, flops, window, stride = _COUNTS[type(module)](module, in_shape, out_shape)
        source_rf, source_jump = next(
            ((rf, jump) for shape, rf, jump in reversed(fields) if shape == in_shape), fields[-1][1:]
        )
        if window is None:
            rf, jump = image_shape[:2], source_jump
        else:
            window, stride = F.as_pair(window, "window"), F.as_pair(stride, "stride")
            rf = tuple(r + (k - 1) * j for r, k, j in zip(source_rf, window, source_jump))
            jump = tuple(j * s for j, s in zip(source_jump, stride))
        fields.append((out_shape, rf, jump))
        trainable = _count_leaves(_subtree(variables, "params", module.path))
        fixed = _count_leaves(_subtree(variables, "constants", module.path))
        rows.append(
            {
                "name": "/".join(module.path),
                "type": type(module).__name__,
                "output_shape": tuple(out_shape[1:]),
                "params": trainable + fixed,
                "trainable": trainable,
                "connections": connections,
                "flops": flops,
                "receptive_field": tuple(int(r) for r in rf),
                "init": _init_names(module),
            }
        )
    return rows


def _init_names(module) -> str:
    """'kernel / bias' initializer names of a layer built from config names (functional.initializer), else ''."""
    names = [getattr(getattr(module, f"{part}_init", None), "spec", None) for part in ("kernel", "bias")]
    if names[1] is not None and not getattr(module, "use_bias", True):
        names[1] = None
    return " / ".join(name for name in names if name is not None)


def format_summary(rows: list[dict]) -> str:
    """The rows of :func:`summarize` as a text table with totals."""
    header = ("layer", "type", "output", "params", "trainable", "connections", "FLOPs", "RF", "init")
    lines = [
        (
            r["name"],
            r["type"],
            "x".join(map(str, r["output_shape"])),
            f"{r['params']:,}",
            f"{r['trainable']:,}",
            f"{r['connections']:,}",
            f"{r['flops']:,}",
            "x".join(map(str, r["receptive_field"])),
            r.get("init", ""),
        )
        for r in rows
    ]
    totals = {key: sum(r[key] for r in rows) for key in ("params", "trainable", "connections", "flops")}
    lines.append(
        ("total", "", "", *(f"{totals[k]:,}" for k in ("params", "trainable", "connections", "flops")), "", "")
    )
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    rule = "  ".join("-" * w for w in widths)
    table = [header, None, *lines[:-1], None, lines[-1]]
    out = []
    for line in table:
        out.append(
            rule
            if line is None
            else "  ".join(
                f"{cell:<{w}}" if i < 2 or i == 8 else f"{cell:>{w}}" for i, (cell, w) in enumerate(zip(line, widths))
            ).rstrip()
        )
    fixed = totals["params"] - totals["trainable"]
    out.append(f"{totals['params']:,} parameters: {totals['trainable']:,} trainable, {fixed:,} fixed")
    return "\n".join(out)
