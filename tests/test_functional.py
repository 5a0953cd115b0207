"""cnnjax.functional: hand-worked examples, semantics of every op, jit/vmap/grad, shape helpers and clear errors."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cnnjax import functional as F
from cnnjax import onednn

# ---------------------------------------------------------------------------------------------------------------------
# Shape helpers
# ---------------------------------------------------------------------------------------------------------------------


def test_conv_output_size_formula_and_padding_modes():
    assert F.conv_output_size(100, 3, padding=2) == 102
    assert F.conv_output_size(32, 5) == 28
    assert F.conv_output_size(28, 5, padding="SAME") == 28
    assert F.conv_output_size(28, 5, stride=2, padding="SAME") == 14
    assert F.conv_output_size(29, 3, stride=2, padding="VALID") == 14
    assert F.conv_output_size(10, 3, dilation=2) == 6  # effective kernel 5
    assert F.conv_output_size(8, 3, stride=2, padding=(0, 1)) == 4  # (8 + 1 - 3) // 2 + 1
    assert F.conv_output_size(4, 5) == 0  # does not fit: the shape functions turn this into an error


@pytest.mark.parametrize("n,k,s,d", [(9, 3, 2, 1), (10, 4, 3, 2), (28, 5, 1, 1), (5, 5, 2, 1)])
def test_same_padding_gives_ceil_n_over_s_as_lax_does(n, k, s, d):
    assert F.conv_output_size(n, k, stride=s, padding="SAME", dilation=d) == -(-n // s)
    x, w = jnp.zeros((1, n, n, 1)), jnp.zeros((k, k, 1, 1))
    lax_out = jax.lax.conv_general_dilated(
        x, w, (s, s), "SAME", rhs_dilation=(d, d), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    assert F.conv2d(x, w, stride=s, padding="SAME", dilation=d).shape == lax_out.shape


def test_output_shape_helpers_agree_with_the_ops():
    x = jnp.zeros((2, 13, 11, 6))
    kernel = jnp.zeros((3, 2, 2, 9))
    kwargs = dict(stride=(2, 3), padding=((1, 2), (0, 1)), dilation=(1, 2), groups=3)
    assert F.conv_output_shape(x.shape, kernel.shape, **kwargs) == F.conv2d(x, kernel, **kwargs).shape
    assert F.pool_output_shape(x.shape, 3, stride=(2, 1), padding=1) == F.max_pool(x, 3, stride=(2, 1), padding=1).shape
    assert F.pool_output_shape(x.shape, (2, 3)) == (2, 6, 3, 6)


# ---------------------------------------------------------------------------------------------------------------------
# Hand-worked examples from the source material
# ---------------------------------------------------------------------------------------------------------------------


def test_conv_3x3_input_with_2x2_kernel():
    x = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    kernel = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1, 1)
    out = F.conv2d(x, kernel, jnp.array([0.5]))
    np.testing.assert_array_equal(out[0, :, :, 0], [[37.5, 47.5], [67.5, 77.5]])


def test_conv_is_cross_correlation_and_flipping_the_kernel_gives_true_convolution():
    x = jnp.zeros((1, 5, 5, 1)).at[0, 2, 2, 0].set(1.0)  # an impulse
    kernel = jnp.arange(9.0).reshape(3, 3, 1, 1)
    # Cross-correlating an impulse gives the kernel rotated by 180 degrees; true convolution gives the kernel.
    np.testing.assert_array_equal(F.conv2d(x, kernel, padding=1)[0, 1:4, 1:4, 0], kernel[::-1, ::-1, 0, 0])
    np.testing.assert_array_equal(F.conv2d(x, kernel[::-1, ::-1], padding=1)[0, 1:4, 1:4, 0], kernel[:, :, 0, 0])


def test_padding_2_keeps_100x100_at_102x102_from_3_to_4_channels():
    out = F.conv2d(jnp.ones((1, 100, 100, 3)), jnp.ones((3, 3, 3, 4)), padding=2)
    assert out.shape == (1, 102, 102, 4)
    assert out[0, 0, 0, 0] == 3.0  # only the corner input pixel is under the kernel at the corner
    assert out[0, 50, 50, 0] == 27.0


def test_max_pool_window_3_padding_1_stride_2_1():
    x = jnp.arange(32.0).reshape(1, 4, 4, 2)  # x[0, i, j, c] = 8 i + 2 j + c
    out = F.max_pool(x, 3, stride=(2, 1), padding=1)
    assert out.shape == (1, 2, 4, 2)
    rows = np.array([8.0, 24.0])  # windows cover rows 0-1 and 1-3
    cols = 2.0 * np.minimum(np.arange(4) + 1, 3)
    expected = rows[:, None, None] + cols[None, :, None] + np.arange(2.0)[None, None, :]
    np.testing.assert_array_equal(out[0], expected)


def test_overlapping_max_pool_gives_a_tie_one_whole_gradient_and_keeps_nans():
    pool = lambda x: F.max_pool(x, 3, stride=2, padding=1)  # noqa: E731  (the strided-view implementation)
    grad = jax.grad(lambda x: jnp.sum(pool(x)))(jnp.zeros((1, 5, 5, 1)))  # every window a tie
    np.testing.assert_array_equal(grad, np.round(grad))  # no shares of a tie (halves, quarters)
    assert float(grad.sum()) == 9.0 and float(grad[0, 0, 0, 0]) == 1.0  # one per window; the first wins
    out = pool(jnp.zeros((1, 5, 5, 1)).at[0, 2, 2, 0].set(jnp.nan))
    np.testing.assert_array_equal(np.isnan(out[0, :, :, 0]), np.eye(3)[1][:, None] * np.eye(3)[1][None, :] > 0)


def test_max_pool_padding_never_wins_even_for_negative_inputs():
    out = F.max_pool(-jnp.ones((1, 2, 2, 1)), 3, stride=1, padding=1)
    np.testing.assert_array_equal(out, -jnp.ones((1, 2, 2, 1)))


def test_avg_pool_count_include_pad():
    x = jnp.ones((1, 2, 2, 1))
    np.testing.assert_allclose(F.avg_pool(x, 3, stride=1, padding=1)[0, :, :, 0], np.full((2, 2), 4 / 9))
    np.testing.assert_allclose(F.avg_pool(x, 3, stride=1, padding=1, count_include_pad=False), x)


def test_global_pools_and_flatten():
    x = jnp.arange(24.0).reshape(2, 2, 3, 2)
    np.testing.assert_allclose(F.global_avg_pool(x), np.asarray(x).mean(axis=(1, 2)))
    np.testing.assert_array_equal(F.global_max_pool(x), np.asarray(x).max(axis=(1, 2)))
    assert F.flatten(x).shape == (2, 12)


def test_dense():
    x, kernel, bias = jnp.ones((2, 3)), jnp.arange(6.0).reshape(3, 2), jnp.array([1.0, -1.0])
    np.testing.assert_array_equal(F.dense(x, kernel, bias), [[7.0, 8.0], [7.0, 8.0]])


# ---------------------------------------------------------------------------------------------------------------------
# Normalization, dropout, activations, losses, initializers
# ---------------------------------------------------------------------------------------------------------------------


def _lrn_loops(x, r, bias, alpha, beta):
    """tf.nn.local_response_normalization, written out."""
    out = np.empty_like(x)
    channels = x.shape[-1]
    for c in range(channels):
        lo, hi = max(0, c - r), min(channels, c + r + 1)
        out[..., c] = x[..., c] / (bias + alpha * np.sum(x[..., lo:hi] ** 2, axis=-1)) ** beta
    return out


@pytest.mark.parametrize("r,bias,alpha,beta", [(5, 1.0, 1.0, 0.5), (4, 1.0, 0.001 / 9, 0.75), (2, 2.0, 1e-4, 0.75)])
def test_lrn_matches_tensorflow_semantics(x64, rng, r, bias, alpha, beta):
    x = rng.standard_normal((2, 3, 3, 7))
    np.testing.assert_allclose(
        F.lrn(x, depth_radius=r, bias=bias, alpha=alpha, beta=beta), _lrn_loops(x, r, bias, alpha, beta), rtol=1e-12
    )
    check_grads(lambda x: F.lrn(x, depth_radius=r, bias=bias, alpha=alpha, beta=beta), (x,), order=1)


def test_batch_norm_training_normalizes_and_updates_running_statistics(rng):
    x = jnp.asarray(rng.normal(3.0, 2.0, (64, 4, 4, 3)), jnp.float32)
    mean, var = jnp.zeros(3), jnp.ones(3)
    y, new_mean, new_var = F.batch_norm(x, None, None, mean, var, training=True, momentum=0.9)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.var(y, axis=(0, 1, 2)), 1.0, atol=1e-3)
    np.testing.assert_allclose(new_mean, 0.1 * np.asarray(x).mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(new_var, 0.9 + 0.1 * np.asarray(x).var(axis=(0, 1, 2)), rtol=1e-5)
    scale, bias = np.array([1.0, 2.0, 3.0], np.float32), np.array([0.0, 1.0, -1.0], np.float32)
    y_eval, same_mean, same_var = F.batch_norm(x, scale, bias, new_mean, new_var, training=False)
    assert same_mean is new_mean and same_var is new_var
    expected = (np.asarray(x) - np.asarray(new_mean)) / np.sqrt(np.asarray(new_var) + 1e-5) * scale + bias
    np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-5)
    y_train = F.batch_norm(x, scale, bias, mean, var, training=True)[0]
    xs = np.asarray(x, np.float64)
    expected = (xs - xs.mean(axis=(0, 1, 2))) / np.sqrt(xs.var(axis=(0, 1, 2)) + 1e-5) * scale + bias
    np.testing.assert_allclose(y_train, expected, rtol=1e-4, atol=1e-4)
    exact = F.batch_norm(x, scale, bias, mean, var, training=True, fast_variance=False)[0]
    np.testing.assert_allclose(exact, expected, rtol=1e-4, atol=1e-4)
    far = x - 3.0 + 1e4  # |mean| >> std: the two-pass variance stays accurate in float32
    y_far = F.batch_norm(far, None, None, mean, var, training=True, fast_variance=False)[0]
    np.testing.assert_allclose(jnp.var(y_far, axis=(0, 1, 2)), 1.0, atol=2e-2)


def test_group_norm_matches_numpy_and_layer_norm_is_one_group(rng):
    x = rng.standard_normal((2, 3, 3, 6)).astype(np.float32)
    grouped = x.reshape(2, 3, 3, 2, 3)
    mean, var = grouped.mean(axis=(1, 2, 4), keepdims=True), grouped.var(axis=(1, 2, 4), keepdims=True)
    expected = ((grouped - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
    scale, bias = np.arange(1.0, 7.0, dtype=np.float32), np.ones(6, np.float32)
    np.testing.assert_allclose(F.group_norm(x, scale, bias, num_groups=2), expected * scale + 1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(F.layer_norm(x), F.group_norm(x, num_groups=1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="num_groups=4 must divide the 6 channels"):
        F.group_norm(x, num_groups=4)


def test_dropout_rate_is_the_drop_probability():
    x = jnp.ones((100_000,))
    y = F.dropout(x, 0.3, key=jax.random.key(0))
    dropped = float(jnp.mean(y == 0))
    assert 0.29 < dropped < 0.31
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    assert F.dropout(x, 0.3, key=None, deterministic=True) is x
    assert F.dropout(x, 0.0, key=None) is x
    np.testing.assert_array_equal(F.dropout(x, 1.0, key=jax.random.key(0)), 0.0)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        F.dropout(x, 1.5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="PRNG key is required"):
        F.dropout(x, 0.5, key=None)


def test_dropout_rate_can_be_vmapped_across_a_sweep():
    rates = jnp.array([0.0, 0.5, 0.9])
    ys = jax.vmap(lambda r: F.dropout(jnp.ones(20_000), r, key=jax.random.key(1)))(rates)
    np.testing.assert_allclose(jnp.mean(ys == 0, axis=1), rates, atol=0.02)


def test_activations():
    x = jnp.array([-1.0, 0.0, 1.0])
    np.testing.assert_allclose(F.lecun_tanh(x), [-1.0, 0.0, 1.0], atol=1e-4)  # f(+-1) = +-1 by design
    np.testing.assert_array_equal(F.relu(x), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(F.sigmoid(jnp.zeros(1)), [0.5])
    np.testing.assert_allclose(jnp.sum(F.softmax(x)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(F.log_softmax(x), np.log(np.asarray(F.softmax(x))), rtol=1e-6)
    assert F.activation("tanh") is F.tanh
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        F.activation("gelu")


def test_losses(rng):
    logits = rng.standard_normal((5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2])
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(F.softmax_cross_entropy(logits, labels), -log_probs[np.arange(5), labels], rtol=1e-5)
    targets = 0.9 * np.eye(4)[labels] + 0.1 / 4  # label smoothing 0.1 over 4 classes
    smoothed = F.softmax_cross_entropy(logits, labels, label_smoothing=0.1)
    np.testing.assert_allclose(smoothed, -(targets * log_probs).sum(axis=1), rtol=1e-5)
    outputs = jnp.array([[1.0, -1.0, 0.0]])
    # targets +1 at the label, -1 elsewhere (LeNet's tanh targets): errors (0, 0, 1) -> mean 1/3
    np.testing.assert_allclose(F.mean_squared_error(outputs, jnp.array([0]), off_value=-1.0), [1 / 3], rtol=1e-6)
    np.testing.assert_allclose(F.mean_squared_error(outputs, jnp.array([1])), [(1 + 4 + 0) / 3], rtol=1e-6)
    assert float(F.l2_penalty({"a": jnp.array([3.0]), "b": {"c": jnp.array([[4.0]])}})) == 12.5


def test_initializers(rng):
    key = jax.random.key(0)
    shape = (5, 5, 16, 64)  # fan_in 400, fan_out 1600
    assert np.std(F.he_normal()(key, shape)) == pytest.approx(np.sqrt(2 / 400), rel=0.05)
    assert np.std(F.lecun_normal()(key, shape)) == pytest.approx(np.sqrt(1 / 400), rel=0.05)
    assert np.std(F.glorot_uniform()(key, shape)) == pytest.approx(np.sqrt(2 / 2000), rel=0.05)
    assert np.std(F.truncated_normal(0.1)(key, (1000, 100))) == pytest.approx(0.088, rel=0.05)  # truncated at 2 sd
    w = F.uniform_range(-0.3, 0.3)(key, (1000, 100))
    assert -0.3 <= float(w.min()) < -0.29 and 0.29 < float(w.max()) < 0.3
    w = F.lecun98_uniform()(key, (5, 5, 1, 6))  # fan_in 25 -> +-0.096
    assert float(jnp.max(jnp.abs(w))) <= 2.4 / 25
    with pytest.raises(ValueError, match="low < high"):
        F.uniform_range(1.0, -1.0)


# ---------------------------------------------------------------------------------------------------------------------
# jit, vmap and grad of every op
# ---------------------------------------------------------------------------------------------------------------------

KEY = jax.random.key(3)
OPS = {
    "conv2d": lambda x: F.conv2d(x, jnp.linspace(-1, 1, 3 * 3 * 4 * 6).reshape(3, 3, 4, 6), jnp.ones(6), stride=2),
    "conv2d_groups_dilation": lambda x: F.conv2d(
        x, jnp.linspace(-1, 1, 2 * 2 * 2 * 4).reshape(2, 2, 2, 4), padding="SAME", dilation=2, groups=2
    ),
    "max_pool": lambda x: F.max_pool(x, 3, stride=2, padding=1),
    "avg_pool": lambda x: F.avg_pool(x, 2, padding="SAME", count_include_pad=False),
    "global_avg_pool": F.global_avg_pool,
    "global_max_pool": F.global_max_pool,
    "dense": lambda x: F.dense(F.flatten(x), jnp.linspace(-1, 1, 7 * 7 * 4 * 3).reshape(-1, 3), jnp.ones(3)),
    "lrn": lambda x: F.lrn(x, depth_radius=1),
    "batch_norm": lambda x: F.batch_norm(x, jnp.ones(4), jnp.zeros(4), jnp.zeros(4), jnp.ones(4), training=True)[0],
    "layer_norm": lambda x: F.layer_norm(x, jnp.ones(4), jnp.zeros(4)),
    "group_norm": lambda x: F.group_norm(x, jnp.ones(4), jnp.zeros(4), num_groups=2),
    "dropout": lambda x: F.dropout(x, 0.5, key=KEY),
    "lecun_tanh": F.lecun_tanh,
    "subsample": lambda x: F.subsample(x, jnp.arange(1.0, 5.0), jnp.ones(4)),
    "euclidean_rbf": lambda x: F.euclidean_rbf(F.flatten(x), jnp.linspace(-1, 1, 3 * 196).reshape(3, 196)),
    "softmax_cross_entropy": lambda x: F.softmax_cross_entropy(F.flatten(x)[:, :5], jnp.array([1, 4, 0][: x.shape[0]])),
    "mean_squared_error": lambda x: F.mean_squared_error(F.flatten(x)[:, :5], jnp.array([1, 4, 0][: x.shape[0]])),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_is_jittable_vmappable_and_differentiable(name, rng):
    op = OPS[name]
    x = jnp.asarray(rng.standard_normal((3, 7, 7, 4)), jnp.float32)
    eager = op(x)
    np.testing.assert_allclose(jax.jit(op)(x), eager, rtol=1e-5, atol=1e-5)
    # vmap over an extra leading axis equals a loop over it
    stacked = jnp.stack([x, 2 * x])
    looped = jnp.stack([op(x), op(2 * x)])
    np.testing.assert_allclose(jax.vmap(op)(stacked), looped, rtol=1e-5, atol=1e-5)
    if name not in ("dropout", "max_pool", "global_max_pool"):  # piecewise-linear ops: checked against the oracle
        with jax.enable_x64(True):
            check_grads(op, (jnp.asarray(x, jnp.float64),), order=1, modes=["rev"])
    grad = jax.grad(lambda x: jnp.sum(op(x) ** 2))(x)
    assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0


# ---------------------------------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------------------------------


def test_kernel_larger_than_feature_map_names_layer_shapes_and_fix():
    with pytest.raises(ValueError, match=r"conv2d: a 5x5 kernel .* does not fit the 4x4 feature map .*Use a smaller"):
        F.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((5, 5, 1, 2)))


def test_channel_mismatch_suggests_the_right_kernel_shape():
    with pytest.raises(ValueError, match=r"input has 3 channels .* use a kernel of shape \(5, 5, 3, 6\)"):
        F.conv2d(jnp.zeros((1, 8, 8, 3)), jnp.zeros((5, 5, 1, 6)))


def test_pool_that_empties_the_map_is_an_error():
    with pytest.raises(ValueError, match=r"max_pool: a 3x3 pooling window .* 2x2 feature map"):
        F.max_pool(jnp.zeros((1, 2, 2, 1)), 3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(padding="FULL"), "padding must be 'SAME', 'VALID'"),
        (dict(padding=(1, 2, 3)), "padding must be"),
        (dict(padding=-1), "non-negative"),
        (dict(stride=0), "stride must be an int >= 1"),
        (dict(groups=2), "groups=2 must be a positive int dividing"),
        (dict(lowering="winograd"), "lowering must be one of"),
    ],
)
def test_bad_hyperparameters_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        F.conv2d(jnp.zeros((1, 8, 8, 3)), jnp.zeros((3, 3, 3, 4)), **kwargs)


def test_default_lowering_is_onednn_for_float32_on_cpu_else_banded_over_few_input_channels(monkeypatch):
    lowering = F.default_conv_lowering
    assert onednn.available(), onednn.unavailable_reason()  # built by the project's setup (setup.py)
    monkeypatch.setattr(onednn, "threads_per_device", lambda: 2)  # a 2-core CPU, like this project's machine
    assert lowering((5, 5, 1, 6), "cpu") == "onednn" and lowering((3, 3, 32, 64), "cpu", jnp.float32) == "onednn"
    assert lowering((5, 5, 1, 6), "cpu", jnp.float64) == "banded"
    with monkeypatch.context() as bfloat16_cpu:  # bfloat16 goes to oneDNN where the CPU multiplies it in hardware
        for native, expected in [(True, "onednn"), (False, "xla")]:
            bfloat16_cpu.setattr(onednn, "native_bfloat16", lambda native=native: native)
            assert lowering((3, 3, 16, 16), "cpu", jnp.bfloat16) == expected
    assert lowering((5, 5, 1, 6), "gpu") == "xla" and lowering((5, 5, 1, 6), "tpu") == "xla"
    assert lowering((5, 5, 1, 6)) == lowering((5, 5, 1, 6), jax.default_backend())
    with monkeypatch.context() as several_devices:  # XLA's partitioner would give every CPU device the whole batch
        several_devices.setattr(jax, "device_count", lambda backend=None: 2)
        assert lowering((5, 5, 1, 6), "cpu") == "banded" and lowering((3, 3, 32, 64), "cpu") == "xla"
    with monkeypatch.context() as more_cores:  # oneDNN's few-input-channel convolutions scale worse than XLA's
        more_cores.setattr(onednn, "threads_per_device", lambda: 4)
        assert lowering((5, 5, 1, 6), "cpu") == "banded" and lowering((5, 5, 6, 16), "cpu") == "banded"
        assert lowering((3, 3, 16, 16), "cpu") == "onednn" and lowering((3, 3, 32, 64), "cpu") == "onednn"
    monkeypatch.setenv("CNNJAX_ONEDNN", "0")  # the opt-out: the rules that apply where the handler is not built
    assert lowering((5, 5, 1, 6), "cpu") == "banded" and lowering((5, 5, 6, 16), "cpu") == "banded"
    assert lowering((3, 3, 1, 32), "cpu") == "banded" and lowering((3, 3, 3, 16), "cpu") == "banded"
    assert lowering((3, 3, 16, 16), "cpu") == "xla" and lowering((3, 3, 32, 64), "cpu") == "xla"
    x, kernel = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 1))
    np.testing.assert_allclose(F.conv2d(x, kernel, lowering="onednn"), F.conv2d(x, kernel))  # asked for, it runs


def test_onednn_calls_run_on_a_devices_share_of_the_cores_up_to_eight(monkeypatch):
    for cores, devices, threads in [(2, 1, 2), (16, 1, 8), (16, 2, 8), (16, 4, 4), (2, 4, 1)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cores=cores: set(range(cores)))
        monkeypatch.setattr(jax, "local_device_count", lambda backend=None, devices=devices: devices)
        assert onednn.threads_per_device() == threads, (cores, devices)


def test_onednn_lowering_refuses_other_dtypes_and_says_why_it_is_unavailable(monkeypatch):
    x, kernel = jnp.zeros((1, 8, 8, 3), jnp.float16), jnp.zeros((3, 3, 3, 4), jnp.bfloat16)
    with pytest.raises(ValueError, match=r"runs float32 or bfloat16 operands of one dtype, got float16 input and "
                       r"bfloat16 kernel; use lowering='xla'"):  # fmt: skip
        F.conv2d(x, kernel, lowering="onednn")
    monkeypatch.setattr(onednn, "native_bfloat16", lambda: False)
    with pytest.raises(ValueError, match=r"runs bfloat16 only on CPUs with AVX512_BF16 or AMX, .* lowering='xla'"):
        F.conv2d(x.astype(jnp.bfloat16), kernel, lowering="onednn")
    monkeypatch.setattr(onednn, "unavailable_reason", lambda: "the compiled handler is not in cnnjax/lowering/")
    with pytest.raises(ValueError, match=r"'onednn' is not available: the compiled handler is not in cnnjax/lowering/"):
        F.conv2d(x.astype(jnp.float32), kernel.astype(jnp.float32), lowering="onednn")


def test_onednn_conv_differentiates_in_both_modes_to_second_order_and_vmaps_like_lax_conv(rng):
    x, kernel = (
        jnp.asarray(rng.standard_normal((3, 7, 8, 4)), jnp.float32),
        jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32),
    )
    conv = lambda lowering: lambda x, k: F.conv2d(x, k, stride=2, padding=1, lowering=lowering)  # noqa: E731
    for transform in [
        lambda f: jax.jvp(lambda k: f(x, k), (kernel,), (jnp.ones_like(kernel),))[1],  # forward mode
        lambda f: jax.grad(lambda k: jnp.sum(jax.grad(lambda x: jnp.sum(f(x, k) ** 3))(x) ** 2))(kernel),  # 2nd order
        lambda f: jax.vmap(jax.grad(lambda xi: jnp.sum(f(xi[None], kernel) ** 2)))(x),  # per-example gradients
        lambda f: jax.vmap(lambda k: f(x, k), in_axes=3, out_axes=3)(kernel[..., None]),  # mapped kernels
    ]:
        np.testing.assert_allclose(transform(conv("onednn")), transform(conv("xla")), rtol=1e-4, atol=1e-3)


def test_onednn_bfloat16_conv_and_its_gradients_match_xla_and_float32_runs_in_it_at_bfloat16_precision(
    monkeypatch, rng
):
    x = jnp.asarray(rng.standard_normal((4, 9, 8, 16)), jnp.float32)
    kernel, dy = jnp.asarray(rng.standard_normal((3, 3, 16, 8)), jnp.float32), rng.standard_normal((4, 5, 4, 8))
    grads = lambda x, kernel, lowering: _conv_loss_and_grads(x, kernel, dy.astype(x.dtype), lowering)  # noqa: E731
    as_bf16 = lambda tree: jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), tree)  # noqa: E731
    in_f32, native = jax.jit(functools.partial(grads, lowering="onednn"))(x, kernel), onednn.native_bfloat16()
    monkeypatch.setattr(onednn, "native_bfloat16", lambda: False)  # a CPU without AVX512_BF16: the hint is ignored
    with jax.default_matmul_precision("bfloat16"):
        ignored = jax.jit(functools.partial(grads, lowering="onednn"))(x, kernel)
    jax.tree_util.tree_map(np.testing.assert_array_equal, ignored, in_f32)
    if not native:  # this CPU lacks AVX512_BF16 and AMX: oneDNN would refuse bfloat16
        return
    monkeypatch.setattr(onednn, "native_bfloat16", lambda: True)
    both_bf16 = [jax.jit(functools.partial(grads, lowering=lowering))(*as_bf16((x, kernel))) for lowering in
                 ("onednn", "xla")]  # fmt: skip
    for ours, xla in zip(*map(jax.tree_util.tree_leaves, both_bf16)):  # float32 sums, rounded to bfloat16 once
        assert ours.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.float32(ours), np.float32(xla), rtol=2e-2, atol=0.15)
    with jax.default_matmul_precision("bfloat16"):  # float32 in and out, multiplied in bfloat16; reproducibly
        loss, (dx, dkernel) = jax.jit(functools.partial(grads, lowering="onednn"))(x, kernel)
        again = jax.jit(functools.partial(grads, lowering="onednn"))(x + 0, kernel)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, (loss, (dx, dkernel)))
    assert dx.dtype == dkernel.dtype == jnp.float32 and not np.array_equal(dkernel, in_f32[1][1])
    np.testing.assert_allclose(dkernel, in_f32[1][1], rtol=2e-2, atol=0.3)
    np.testing.assert_allclose(loss, in_f32[0], rtol=2e-2)


def _conv_loss_and_grads(x, kernel, dy, lowering):
    loss = lambda x, kernel: jnp.sum(F.conv2d(x, kernel, stride=2, padding=1, lowering=lowering) * dy)  # noqa: E731
    return jax.value_and_grad(loss, argnums=(0, 1))(x, kernel)


@pytest.mark.parametrize("lowering", ["xla", "banded"])
def test_conv_mapped_over_members_runs_one_convolution_per_member_with_the_same_values_and_gradients(
    x64, rng, lowering
):
    members, x = 3, rng.standard_normal((3, 2, 9, 12, 2))  # 'banded': 3 blocks of 2 strided output columns
    kernels, dy = rng.standard_normal((members, 3, 3, 2, 4)), rng.standard_normal((2, 5, 6, 4))
    step = lambda x, kernel: _conv_loss_and_grads(x, kernel, dy, lowering)  # noqa: E731
    for in_axes, x_of in [((0, 0), lambda k: x[k]), ((None, 0), lambda k: x[0])]:  # own inputs; a shared input
        xs = x if in_axes[0] == 0 else x[0]
        loss, (dx, dkernel) = jax.vmap(step, in_axes=in_axes, axis_name=F.MEMBER_AXIS)(xs, kernels)
        for k in range(members):
            solo_loss, (solo_dx, solo_dkernel) = step(x_of(k), kernels[k])
            np.testing.assert_allclose(loss[k], solo_loss, rtol=1e-10)
            np.testing.assert_allclose(dkernel[k], solo_dkernel, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(dx[k], solo_dx, rtol=1e-10, atol=1e-12)

    def convolutions(step, *args):
        program = jax.jit(step).lower(*args).compile().as_text()
        return [line for line in program.splitlines() if " convolution(" in line]

    # each member's own convolutions; JAX's own batching groups the members' into one convolution instead
    solo, per_member = (
        convolutions(step, x[0], kernels[0]),
        convolutions(jax.vmap(step, axis_name=F.MEMBER_AXIS), x, kernels),
    )
    assert len(per_member) == members * len(solo) and not any("group_count" in line for line in per_member)
    assert "feature_group_count = 3" in jax.jit(jax.vmap(step)).lower(x, kernels).as_text()


def test_onednn_conv_mapped_over_members_runs_one_grouped_call_with_the_same_values_and_gradients(rng):
    members, dy = 3, jnp.asarray(rng.standard_normal((2, 5, 6, 4)), jnp.float32)
    x, kernels = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in [(3, 2, 9, 12, 2), (3, 3, 3, 2, 4)])
    step = lambda x, kernel: _conv_loss_and_grads(x, kernel, dy, "onednn")  # noqa: E731
    for in_axes, x_of in [((0, 0), lambda k: x[k]), ((None, 0), lambda k: x[0])]:  # own inputs; a shared input
        loss, (dx, dkernel) = jax.vmap(step, in_axes=in_axes, axis_name=F.MEMBER_AXIS)(
            x if in_axes[0] == 0 else x[0], kernels
        )
        for k in range(members):
            solo_loss, (solo_dx, solo_dkernel) = step(x_of(k), kernels[k])
            np.testing.assert_allclose(loss[k], solo_loss, rtol=1e-5)
            np.testing.assert_allclose(dkernel[k], solo_dkernel, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(dx[k], solo_dx, rtol=1e-5, atol=1e-5)
    program = jax.jit(jax.vmap(step, axis_name=F.MEMBER_AXIS)).lower(x, kernels).compile().as_text()
    calls = [line for line in program.splitlines() if 'custom_call_target="cnnjax_onednn_conv"' in line]
    # the forward pass and both gradients, each one call over all members as 3 groups (geometry's last value)
    assert len(calls) == 3 and all("geometry = dense<[2, 2, 1, 1, 1, 1, 1, 1, 3]>" in line for line in calls)


def test_conv_outside_a_member_mapping_keeps_forward_mode_differentiation(rng):
    x, kernel, tangent = rng.standard_normal((2, 6, 6, 1)), rng.standard_normal((3, 3, 1, 2)), np.ones((3, 3, 1, 2))
    out, out_tangent = jax.jvp(lambda k: F.conv2d(x, k), (kernel,), (tangent,))
    np.testing.assert_allclose(out_tangent, F.conv2d(x, tangent), rtol=1e-5)


def test_band_block_divides_the_width_up_to_4_columns_for_one_channel_and_2_for_more():
    assert F.band_block(28, 1) == 4 and F.band_block(10, 6) == 2 and F.band_block(32, 3) == 2
    assert F.band_block(7, 1) == 1 and F.band_block(9, 1) == 3 and F.band_block(3, 6) == 1


def test_wrong_rank_and_dense_shape_errors():
    with pytest.raises(ValueError, match=r"rank 4 \(N, H, W, C\)"):
        F.max_pool(jnp.zeros((8, 8, 3)), 2)
    with pytest.raises(ValueError, match="flatten feature maps first"):
        F.dense(jnp.zeros((2, 4, 4, 1)), jnp.zeros((16, 3)))
