"""cnnjax.nn: parameter shapes, that each module computes its functional op, and the LeNet-5 layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import functional as F
from cnnjax import nn as cnn

KEY = jax.random.key(0)


def _init(module, x, **kwargs):
    variables = module.init(KEY, x, **kwargs)
    return variables, jax.tree_util.tree_map(jnp.shape, variables)


def test_conv2d_params_and_output():
    x = jnp.ones((2, 9, 9, 3))
    module = cnn.Conv2D(10, 3, stride=2, padding="SAME")
    variables, shapes = _init(module, x)
    assert shapes == {"params": {"kernel": (3, 3, 3, 10), "bias": (10,)}}
    assert sum(np.prod(s) for s in jax.tree_util.tree_leaves(shapes, is_leaf=lambda s: isinstance(s, tuple))) == 280
    p = variables["params"]
    expected = F.conv2d(x, p["kernel"], p["bias"], stride=2, padding="SAME")
    np.testing.assert_array_equal(module.apply(variables, x), expected)


def test_grouped_conv_kernel_shape_and_no_bias():
    _, shapes = _init(cnn.Conv2D(8, (3, 1), groups=4, use_bias=False), jnp.ones((1, 5, 5, 4)))
    assert shapes == {"params": {"kernel": (3, 1, 1, 8)}}


def test_dense_params():
    _, shapes = _init(cnn.Dense(7), jnp.ones((2, 5)))
    assert shapes == {"params": {"kernel": (5, 7), "bias": (7,)}}


def test_pool_modules_call_functional_ops():
    x = jax.random.normal(KEY, (2, 6, 6, 3))
    np.testing.assert_array_equal(cnn.MaxPool2D(3, stride=2).apply({}, x), F.max_pool(x, 3, stride=2))
    np.testing.assert_array_equal(
        cnn.AvgPool2D(2, padding="SAME", count_include_pad=False).apply({}, x),
        F.avg_pool(x, 2, padding="SAME", count_include_pad=False),
    )
    np.testing.assert_array_equal(cnn.GlobalAvgPool().apply({}, x), F.global_avg_pool(x))
    np.testing.assert_array_equal(cnn.GlobalMaxPool().apply({}, x), F.global_max_pool(x))
    np.testing.assert_array_equal(
        cnn.LRN(2, 2.0, 1e-4, 0.75).apply({}, x), F.lrn(x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
    )
    assert cnn.Flatten().apply({}, x).shape == (2, 108)


def test_pool_module_errors_name_the_layer():
    with pytest.raises(ValueError, match="MaxPool2D 'pool9': a 4x4 pooling window"):
        cnn.MaxPool2D(4, name="pool9").init(KEY, jnp.ones((1, 3, 3, 1)))


def test_subsampling_is_window_sum_times_coefficient_plus_bias():
    x = jnp.arange(32.0).reshape(1, 4, 4, 2)
    module = cnn.Subsampling(2)
    _, shapes = _init(module, x)
    assert shapes == {"params": {"coefficient": (2,), "bias": (2,)}}
    params = {"params": {"coefficient": jnp.array([2.0, -1.0]), "bias": jnp.array([0.5, 1.0])}}
    window_sum = np.asarray(x).reshape(1, 2, 2, 2, 2, 2).sum(axis=(2, 4))
    np.testing.assert_allclose(module.apply(params, x), window_sum * np.array([2.0, -1.0]) + np.array([0.5, 1.0]))


def test_partial_conv_uses_only_connected_filters():
    table = np.array([[1, 0, 1], [0, 1, 1]], dtype=bool)  # 2 inputs -> 3 outputs through 4 connections
    x = jax.random.normal(KEY, (2, 6, 6, 2))
    module = cnn.PartialConv2D(table, 3)
    variables, shapes = _init(module, x)
    assert shapes == {"params": {"kernel": (3, 3, 4), "bias": (3,)}}
    kernel = variables["params"]["kernel"]
    full = np.zeros((3, 3, 2, 3), np.float32)
    for k, (i, o) in enumerate(zip(*np.nonzero(table))):
        full[:, :, i, o] = kernel[:, :, k]
    expected = F.conv2d(x, jnp.asarray(full), variables["params"]["bias"])
    np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-6)
    # an output map fed by input 0 only does not change when input 1 changes
    changed = module.apply(variables, x.at[..., 1].add(5.0))
    np.testing.assert_array_equal(changed[..., 0], module.apply(variables, x)[..., 0])
    with pytest.raises(ValueError, match="one row per input map"):
        module.init(KEY, jnp.ones((1, 6, 6, 3)))


def test_rbf_output_is_squared_distance_to_fixed_or_trainable_codes():
    codes = np.array([[1.0, -1.0, 1.0], [-1.0, -1.0, -1.0]], np.float32)
    x = jnp.array([[1.0, -1.0, 1.0], [0.0, 0.0, 0.0]])
    fixed = cnn.RBFOutput(codes)
    variables, shapes = _init(fixed, x)
    assert shapes == {"constants": {"prototypes": (2, 3)}}
    np.testing.assert_allclose(fixed.apply(variables, x), [[0.0, 8.0], [3.0, 3.0]])
    _, shapes = _init(cnn.RBFOutput(codes, trainable=True), x)
    assert shapes == {"params": {"prototypes": (2, 3)}}
    with pytest.raises(ValueError, match=r"codes must have shape \(classes, 5\)"):
        fixed.init(KEY, jnp.ones((1, 5)))


def test_dropout_uses_the_dropout_rng_and_is_identity_when_deterministic():
    x = jnp.ones((1000,))
    module = cnn.Dropout(0.5)
    assert module.apply({}, x, deterministic=True) is x
    a = module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    b = module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert 400 < int(jnp.sum(a == 0)) < 600 and not bool(jnp.all(a == b))


def test_batch_norm_module_tracks_running_statistics():
    x = jax.random.normal(KEY, (32, 4, 4, 3)) * 2.0 + 1.0
    module = cnn.BatchNorm()
    variables = module.init(KEY, x, use_running_average=False)
    assert jax.tree_util.tree_map(jnp.shape, variables) == {
        "params": {"scale": (3,), "bias": (3,)},
        "batch_stats": {"mean": (3,), "var": (3,)},
    }
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], 0.0)  # init does not update the statistics
    y, updates = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * jnp.mean(x, axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    y_eval = module.apply({**variables, **updates}, x, use_running_average=True)
    assert not np.allclose(y_eval, y)


def test_layer_and_group_norm_modules():
    x = jax.random.normal(KEY, (2, 4, 4, 8))
    for module, expected in ((cnn.LayerNorm(), F.layer_norm(x)), (cnn.GroupNorm(4), F.group_norm(x, num_groups=4))):
        variables, shapes = _init(module, x)
        assert shapes == {"params": {"scale": (8,), "bias": (8,)}}
        np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-6)
