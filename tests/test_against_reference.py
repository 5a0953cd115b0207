"""functional's conv and pool forward passes and jax.grad gradients against the NumPy loop oracle, in float64 (float32
for the float32-only 'onednn' lowering)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import functional as F
from cnnjax import reference as ref

# (batch, height, width, in_channels, out_channels, filter, stride, pad)
CONV_CASES = [
    (2, 5, 5, 1, 1, 3, 1, 0),
    (2, 7, 6, 3, 4, 3, 2, 1),
    (1, 9, 8, 2, 5, 4, 3, 2),
    (3, 6, 7, 4, 2, 2, 2, 0),
    (2, 8, 8, 3, 3, 5, 1, 2),
    (2, 10, 12, 2, 8, 3, 1, 1),  # 'banded': 6 blocks of 2 output columns
    (1, 11, 23, 3, 6, 3, 2, 1),  # 'banded': 6 blocks of 2 strided output columns
]


def _conv2d(x, kernel, bias=None, *, lowering, **kwargs):
    """F.conv2d in float64, or float32 for 'onednn' (its only dtype), with a float64 result."""
    dtype = jnp.float32 if lowering == "onednn" else jnp.float64
    as_dtype = lambda a: None if a is None else jnp.asarray(a, dtype)  # noqa: E731
    return F.conv2d(as_dtype(x), as_dtype(kernel), as_dtype(bias), lowering=lowering, **kwargs).astype(jnp.float64)


def _tolerance(lowering):
    """float64 lowerings agree with the oracle to 1e-12; float32 ('onednn') to its rounding of sums of ~100 terms."""
    return dict(rtol=1e-4, atol=1e-4) if lowering == "onednn" else dict(rtol=1e-12, atol=1e-12)


def _conv_loss_grads(x, w, b, dz, **kwargs):
    """Gradients of sum(conv(x) * dz): exactly what conv_backward computes from the upstream gradient dz."""
    loss = lambda x, w, b: jnp.sum(_conv2d(x, w, b, **kwargs) * dz)  # noqa: E731
    return jax.grad(loss, argnums=(0, 1, 2))(x, w, b)


@pytest.mark.parametrize("lowering", F.CONV_LOWERINGS)
@pytest.mark.parametrize("m,h,w,c,o,f,stride,pad", CONV_CASES)
def test_conv_forward_and_gradients_match_reference(x64, rng, m, h, w, c, o, f, stride, pad, lowering):
    x = rng.standard_normal((m, h, w, c))
    kernel = rng.standard_normal((f, f, c, o))
    b = rng.standard_normal((1, 1, 1, o))
    z, cache = ref.conv_forward(x, kernel, b, stride, pad)
    out = _conv2d(x, kernel, b[0, 0, 0], stride=stride, padding=pad, lowering=lowering)
    np.testing.assert_allclose(out, z, **_tolerance(lowering))

    dz = rng.standard_normal(z.shape)
    dx_ref, dw_ref, db_ref = ref.conv_backward(dz, cache)
    dx, dw, db = _conv_loss_grads(x, kernel, b[0, 0, 0], dz, stride=stride, padding=pad, lowering=lowering)
    np.testing.assert_allclose(dx, dx_ref, **_tolerance(lowering))
    np.testing.assert_allclose(dw, dw_ref, **_tolerance(lowering))
    np.testing.assert_allclose(db, db_ref[0, 0, 0], **_tolerance(lowering))


def _dilate_kernel(kernel, dilation):
    """The equivalent undilated kernel: taps spread ``dilation`` apart with zeros between."""
    f_h, f_w, c, o = kernel.shape
    out = np.zeros((dilation * (f_h - 1) + 1, dilation * (f_w - 1) + 1, c, o))
    out[::dilation, ::dilation] = kernel
    return out


@pytest.mark.parametrize("lowering", F.CONV_LOWERINGS)
def test_dilated_conv_and_gradient_match_reference_on_dilated_kernel(x64, rng, lowering):
    x, kernel, dilation = rng.standard_normal((2, 9, 10, 2)), rng.standard_normal((3, 3, 2, 3)), 2  # 'banded': 4 blocks
    z, cache = ref.conv_forward(x, _dilate_kernel(kernel, dilation), np.zeros((1, 1, 1, 3)), 1, 1)
    np.testing.assert_allclose(
        _conv2d(x, kernel, padding=1, dilation=dilation, lowering=lowering), z, **_tolerance(lowering)
    )
    dz = rng.standard_normal(z.shape)
    dx_ref, dw_ref, _ = ref.conv_backward(dz, cache)
    dx, dw, _ = _conv_loss_grads(x, kernel, np.zeros(3), dz, padding=1, dilation=dilation, lowering=lowering)
    np.testing.assert_allclose(dx, dx_ref, **_tolerance(lowering))
    np.testing.assert_allclose(dw, dw_ref[::dilation, ::dilation], **_tolerance(lowering))


@pytest.mark.parametrize("lowering", F.CONV_LOWERINGS)
def test_grouped_conv_matches_reference_per_group(x64, rng, lowering):
    groups, x = 3, rng.standard_normal((2, 6, 8, 6))  # 'banded': 2 blocks per group
    kernel, b = rng.standard_normal((3, 3, 2, 9)), rng.standard_normal(9)
    out = _conv2d(x, kernel, b, stride=2, padding=1, groups=groups, lowering=lowering)
    dz = rng.standard_normal(out.shape)
    dx, dw, db = _conv_loss_grads(x, kernel, b, dz, stride=2, padding=1, groups=groups, lowering=lowering)
    for g in range(groups):
        cin, cout = slice(2 * g, 2 * g + 2), slice(3 * g, 3 * g + 3)
        z, cache = ref.conv_forward(x[..., cin], kernel[..., cout], b[cout].reshape(1, 1, 1, 3), 2, 1)
        np.testing.assert_allclose(out[..., cout], z, **_tolerance(lowering))
        dx_ref, dw_ref, db_ref = ref.conv_backward(dz[..., cout], cache)
        np.testing.assert_allclose(dx[..., cin], dx_ref, **_tolerance(lowering))
        np.testing.assert_allclose(dw[..., cout], dw_ref, **_tolerance(lowering))
        np.testing.assert_allclose(db[cout], db_ref.ravel(), **_tolerance(lowering))


@pytest.mark.parametrize("lowering", F.CONV_LOWERINGS)
def test_asymmetric_explicit_padding_matches_reference_on_padded_input(x64, rng, lowering):
    x, kernel = rng.standard_normal((1, 5, 6, 2)), rng.standard_normal((2, 3, 2, 2))
    padded = np.pad(x, ((0, 0), (1, 0), (0, 2), (0, 0)))
    z, _ = ref.conv_forward(padded, kernel, np.zeros((1, 1, 1, 2)), 1, 0)
    np.testing.assert_allclose(
        _conv2d(x, kernel, padding=((1, 0), (0, 2)), lowering=lowering), z, **_tolerance(lowering)
    )


def test_same_padding_keeps_size_and_matches_reference(x64, rng):
    x, kernel = rng.standard_normal((2, 7, 7, 3)), rng.standard_normal((5, 5, 3, 4))
    z, _ = ref.conv_forward(x, kernel, np.zeros((1, 1, 1, 4)), 1, 2)
    np.testing.assert_allclose(F.conv2d(x, kernel, padding="SAME"), z, rtol=1e-12)


# (batch, height, width, channels, window, stride)
POOL_CASES = [(2, 4, 4, 1, 2, 2), (2, 7, 6, 3, 3, 2), (1, 8, 9, 2, 2, 1), (3, 9, 9, 2, 3, 3), (2, 7, 9, 2, 2, 2)]


@pytest.mark.parametrize("m,h,w,c,f,stride", POOL_CASES)
@pytest.mark.parametrize("mode", ["max", "average"])
def test_pool_forward_and_gradient_match_reference(x64, rng, m, h, w, c, f, stride, mode):
    """Covers each pool implementation: stride == window reduces a reshaped view; otherwise max pooling takes the
    maxima of strided views, average pooling lax.reduce_window."""
    x = rng.standard_normal((m, h, w, c))
    a, cache = ref.pool_forward(x, f, stride, mode)
    pool = F.max_pool if mode == "max" else F.avg_pool
    np.testing.assert_allclose(pool(x, f, stride=stride), a, rtol=1e-12, atol=1e-12)
    da = rng.standard_normal(a.shape)
    dx = jax.grad(lambda x: jnp.sum(pool(x, f, stride=stride) * da))(x)
    np.testing.assert_allclose(dx, ref.pool_backward(da, cache, mode), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", [1, ((0, 1), (2, 0))])
def test_padded_max_pool_and_gradient_match_reference_on_minus_infinity_padded_input(x64, rng, padding):
    x = rng.standard_normal((2, 7, 8, 3))
    (top, _), (left, _) = pads = ((1, 1), (1, 1)) if padding == 1 else padding
    a, cache = ref.pool_forward(np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-np.inf), 3, 2, "max")
    da = rng.standard_normal(a.shape)
    pool = lambda x: F.max_pool(x, 3, stride=2, padding=padding)  # noqa: E731
    np.testing.assert_allclose(pool(x), a, rtol=1e-12)
    dx_padded = ref.pool_backward(da, cache, "max")
    dx = jax.grad(lambda x: jnp.sum(pool(x) * da))(x)
    np.testing.assert_allclose(dx, dx_padded[:, top : top + 7, left : left + 8], rtol=1e-12)


def test_reference_conv_backward_matches_finite_differences_with_and_without_padding(x64, rng):
    """The oracle itself is right: its gradients equal central finite differences, for pad=0 too."""
    for pad in (0, 1):
        x, w, b = (
            rng.standard_normal((1, 4, 4, 2)),
            rng.standard_normal((2, 2, 2, 2)),
            rng.standard_normal((1, 1, 1, 2)),
        )
        z, cache = ref.conv_forward(x, w, b, 1, pad)
        dz = rng.standard_normal(z.shape)
        dx, dw, db = ref.conv_backward(dz, cache)
        assert dx.shape == x.shape
        for array, grad in ((x, dx), (w, dw), (b, db)):
            index = tuple(rng.integers(0, n) for n in array.shape)
            eps = 1e-6
            array[index] += eps
            plus = np.sum(ref.conv_forward(x, w, b, 1, pad)[0] * dz)
            array[index] -= 2 * eps
            minus = np.sum(ref.conv_forward(x, w, b, 1, pad)[0] * dz)
            array[index] += eps
            assert grad[index] == pytest.approx((plus - minus) / (2 * eps), rel=1e-6, abs=1e-8)


def test_reference_pool_backward_routes_max_gradient_to_argmax_and_splits_average():
    x = np.array([[1.0, 5.0], [3.0, 2.0]]).reshape(1, 2, 2, 1)
    _, cache = ref.pool_forward(x, 2, 2, "max")
    np.testing.assert_array_equal(ref.pool_backward(np.full((1, 1, 1, 1), 2.0), cache, "max").ravel(), [0, 2, 0, 0])
    _, cache = ref.pool_forward(x, 2, 2, "average")
    np.testing.assert_array_equal(ref.pool_backward(np.full((1, 1, 1, 1), 2.0), cache, "average").ravel(), [0.5] * 4)
    with pytest.raises(ValueError, match="mode"):
        ref.pool_forward(x, 2, 2, "min")
