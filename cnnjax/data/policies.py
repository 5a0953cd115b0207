"""Photometric and geometric augmentation policies: RandAugment, TrivialAugment, colour jitter, random scale and
random erasing, on the device, per example, jittable.

The ops work on one image (H, W, C) in [0, 1], grayscale or RGB, built on DeepMind's ``dm_pix`` where it has the
op (rotation and affine warps, contrast, saturation, hue, solarization) and written here where it has not
(auto-contrast, equalization, posterization, sharpness). Their magnitudes follow timm's ``rand_augment_transform``
(magnitude m in [0, 1] of each op's maximum, a random sign for the signed ones). The training step hands the
policies its standardized images; :func:`apply_policies` maps them to [0, 1] with the run's preprocessing and back.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import dm_pix as pix
import jax
import jax.numpy as jnp

RANDAUGMENT = re.compile(r"^rand-m(?P<m>\d+(\.\d+)?)-n(?P<n>\d+)(-mstd(?P<mstd>\d+(\.\d+)?))?$")


def _grayscale(image):
    return jnp.mean(image, axis=-1, keepdims=True) if image.shape[-1] == 1 else pix.rgb_to_grayscale(image)


def _affine(image, matrix, shift=(0.0, 0.0)):
    """``image`` warped by the 2x2 ``matrix`` about its centre and shifted by ``shift`` (rows, columns) pixels;
    outside pixels are 0 (black). ``matrix`` maps output to input coordinates."""
    h, w, _ = image.shape
    full = jnp.eye(3).at[:2, :2].set(matrix)
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2, 0.0])
    offset = centre - full @ centre - jnp.array([shift[0], shift[1], 0.0])
    return pix.affine_transform(image, full, offset=offset, order=1, mode="constant", cval=0.0)


def _signed(key, magnitude):
    return jnp.where(jax.random.bernoulli(key), magnitude, -magnitude)


def _sharpness(image, factor):
    """PIL's ImageEnhance.Sharpness: a blend with the image smoothed by PIL's 3x3 kernel (edges kept)."""
    kernel = jnp.array([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    smooth = jax.vmap(lambda c: jax.scipy.signal.convolve2d(c, kernel, mode="same"), in_axes=-1, out_axes=-1)(image)
    smooth = image.at[1:-1, 1:-1].set(smooth[1:-1, 1:-1])
    return smooth + factor * (image - smooth)


def _equalize(image):
    """Histogram equalization per channel over 256 levels, as PIL's ImageOps.equalize."""
    levels = jnp.round(image * 255).astype(jnp.int32)

    def channel(q):
        counts = jnp.zeros(256, jnp.float32).at[q.ravel()].add(1.0)
        cdf = jnp.cumsum(counts)
        low = cdf[jnp.argmax(counts > 0)]
        lut = jnp.clip(jnp.round((cdf - low) / jnp.maximum(cdf[-1] - low, 1.0) * 255), 0, 255)
        return jnp.where(cdf[-1] - low > 0, lut[q], q.astype(jnp.float32)) / 255

    return jax.vmap(channel, in_axes=-1, out_axes=-1)(levels)


def _auto_contrast(image):
    low, high = image.min(axis=(0, 1), keepdims=True), image.max(axis=(0, 1), keepdims=True)
    return jnp.where(high > low, (image - low) / jnp.maximum(high - low, 1e-6), image)


def _posterize(image, bits):
    step = 2.0 ** (8 - bits)
    return jnp.floor(jnp.round(image * 255) / step) * step / 255


def _colour(image, factor):
    return pix.adjust_saturation(image, factor) if image.shape[-1] == 3 else image


# name -> (key, image (H, W, C) in [0, 1], magnitude in [0, 1]) -> image; timm's ranges at magnitude 1
OPS = {
    "Identity": lambda k, x, m: x,
    "AutoContrast": lambda k, x, m: _auto_contrast(x),
    "Equalize": lambda k, x, m: _equalize(x),
    "Invert": lambda k, x, m: 1.0 - x,
    "Rotate": lambda k, x, m: pix.rotate(x, _signed(k, m * math.radians(30)), mode="constant", cval=0.0),
    "Posterize": lambda k, x, m: _posterize(x, 8 - jnp.floor(m * 4)),
    "Solarize": lambda k, x, m: pix.solarize(x, 1.0 - m),
    "SolarizeAdd": lambda k, x, m: jnp.where(x < 0.5, x + m * 110 / 255, x),
    "Color": lambda k, x, m: _colour(x, 1.0 + _signed(k, m * 0.9)),
    "Contrast": lambda k, x, m: pix.adjust_contrast(x, 1.0 + _signed(k, m * 0.9)),
    "Brightness": lambda k, x, m: x * (1.0 + _signed(k, m * 0.9)),
    "Sharpness": lambda k, x, m: _sharpness(x, 1.0 + _signed(k, m * 0.9)),
    "ShearX": lambda k, x, m: _affine(x, jnp.array([[1.0, 0.0], [_signed(k, m * 0.3), 1.0]])),
    "ShearY": lambda k, x, m: _affine(x, jnp.array([[1.0, _signed(k, m * 0.3)], [0.0, 1.0]])),
    "TranslateX": lambda k, x, m: _affine(x, jnp.eye(2), (0.0, _signed(k, m * 0.45 * x.shape[1]))),
    "TranslateY": lambda k, x, m: _affine(x, jnp.eye(2), (_signed(k, m * 0.45 * x.shape[0]), 0.0)),
}
RANDAUGMENT_OPS = tuple(name for name in OPS if name != "Identity")  # timm's rand_augment ops


class Policies(NamedTuple):
    """The augmentation policies of a data config (``data.randaugment``, ``data.trivialaugment``,
    ``data.color_jitter``, ``data.random_scale``, ``data.random_erasing``, ``data.random_erasing_area``)."""

    randaugment: str = ""
    trivialaugment: bool = False
    color_jitter: float = 0.0
    random_scale: tuple = (1.0, 1.0)
    random_erasing: float = 0.0
    random_erasing_area: tuple = (0.02, 1 / 3)

    @property
    def photometric(self) -> bool:
        """Whether a policy needs the images in [0, 1] (not ZCA-whitened)."""
        return bool(self.randaugment or self.trivialaugment or self.color_jitter)

    @property
    def enabled(self) -> bool:
        return self.photometric or tuple(self.random_scale) != (1.0, 1.0) or self.random_erasing > 0


def parse_randaugment(spec: str) -> tuple[float, int, float]:
    """(magnitude in [0, 1], ops per image, magnitude noise std) of a timm-style 'rand-m9-n2[-mstd0.5]' (m of 10).
    Raises a ValueError naming ``data.randaugment`` otherwise."""
    match = RANDAUGMENT.match(spec)
    if not match or float(match["m"]) > 10 or int(match["n"]) < 1:
        raise ValueError(
            f"config.data.randaugment={spec!r} is invalid: use '' (off) or 'rand-m<0..10>-n<ops>[-mstd<std>]', "
            "e.g. 'rand-m9-n2'"
        )
    return float(match["m"]) / 10, int(match["n"]), float(match["mstd"] or 0) / 10


def _random_op(key, image, magnitude, names):
    index_key, op_key = jax.random.split(key)
    branches = [lambda x, k, m, op=OPS[name]: jnp.clip(op(k, x, m), 0.0, 1.0) for name in names]
    return jax.lax.switch(jax.random.randint(index_key, (), 0, len(names)), branches, image, op_key, magnitude)


def randaugment(key, image, spec: str):
    """RandAugment (Cubuk et al., 2020) as timm's 'rand-mM-nN': N ops drawn uniformly, each at magnitude M/10
    (plus Gaussian noise of std mstd/10, clipped to [0, 1]).

    Args:
      key: the PRNG key.
      image: (H, W, C) in [0, 1].
      spec: e.g. 'rand-m9-n2' (see :func:`parse_randaugment`).

    Returns:
      (H, W, C) in [0, 1].
    """
    magnitude, count, noise = parse_randaugment(spec)
    for op_key in jax.random.split(key, count):
        noise_key, op_key = jax.random.split(op_key)
        m = jnp.clip(magnitude + noise * jax.random.normal(noise_key), 0.0, 1.0) if noise else magnitude
        image = _random_op(op_key, image, m, RANDAUGMENT_OPS)
    return image


def trivialaugment(key, image):
    """TrivialAugment (Müller & Hutter, 2021): one op drawn uniformly (identity included) at a uniform magnitude."""
    magnitude_key, op_key = jax.random.split(key)
    return _random_op(op_key, image, jax.random.uniform(magnitude_key), tuple(OPS))


def color_jitter(key, image, strength: float):
    """torchvision's ColorJitter(strength, strength, strength, strength / 4) in random order of the four kinds;
    saturation and hue only on RGB images.

    Args:
      key: the PRNG key.
      image: (H, W, C) in [0, 1], C = 1 or 3.
      strength: factors are uniform in [max(0, 1 - strength), 1 + strength]; hue shifts in +-strength / 4.

    Returns:
      (H, W, C) in [0, 1].
    """
    keys = jax.random.split(key, 5)
    factor = lambda k: jax.random.uniform(k, minval=max(0.0, 1 - strength), maxval=1 + strength)  # noqa: E731
    steps = [
        lambda x: x * factor(keys[0]),
        lambda x: pix.adjust_contrast(x, factor(keys[1])),
    ]
    if image.shape[-1] == 3:
        steps += [
            lambda x: pix.adjust_saturation(x, factor(keys[2])),
            lambda x: pix.adjust_hue(x, jax.random.uniform(keys[3], minval=-strength / 4, maxval=strength / 4)),
        ]
    order = jax.random.permutation(keys[4], len(steps))
    for position in range(len(steps)):
        image = jnp.clip(jax.lax.switch(order[position], steps, image), 0.0, 1.0)
    return image


def random_scale(key, image, scale_range):
    """Zooms about the centre, keeping the size.

    Args:
      key: the PRNG key.
      image: (H, W, C).
      scale_range: (low, high): the factor is uniform in it (> 1 zooms in; outside pixels are 0).

    Returns:
      (H, W, C).
    """
    low, high = scale_range
    factor = jax.random.uniform(key, minval=low, maxval=high)
    return _affine(image, jnp.eye(2) / factor)


def random_erasing(key, image, probability: float, area_range):
    """Random erasing (Zhong et al., 2020) as timm's per-pixel mode: with ``probability``, a rectangle of area in
    ``area_range`` of the image and aspect ratio in [0.3, 3.3] (log-uniform) is filled with N(0, 1) noise.

    Args:
      key: the PRNG key.
      image: (H, W, C), standardized.
      probability: of erasing at all.
      area_range: (low, high) shares of the image's area.

    Returns:
      (H, W, C).
    """
    apply_key, area_key, ratio_key, place_key, noise_key = jax.random.split(key, 5)
    h, w, _ = image.shape
    area = jax.random.uniform(area_key, minval=area_range[0], maxval=area_range[1]) * h * w
    ratio = jnp.exp(jax.random.uniform(ratio_key, minval=math.log(0.3), maxval=math.log(1 / 0.3)))
    eh = jnp.clip(jnp.round(jnp.sqrt(area * ratio)), 1, h).astype(jnp.int32)
    ew = jnp.clip(jnp.round(jnp.sqrt(area / ratio)), 1, w).astype(jnp.int32)
    top_key, left_key = jax.random.split(place_key)
    top = jax.random.randint(top_key, (), 0, h - eh + 1)
    left = jax.random.randint(left_key, (), 0, w - ew + 1)
    rows, cols = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
    box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
    erased = jnp.where(box, jax.random.normal(noise_key, image.shape, image.dtype), image)
    return jnp.where(jax.random.bernoulli(apply_key, probability), erased, image)


def apply_policies(key, images, policies: Policies, scale=None, shift=None):
    """The enabled policies on a batch, each example with its own key: random scale, then (in [0, 1], from the
    standardized images by ``x01 = (x - shift) / (255 * scale)``) colour jitter and RandAugment / TrivialAugment,
    then random erasing on the standardized images.

    Args:
      key: the PRNG key.
      images: (N, H, W, C) standardized (``Preprocessing``'s ``x * scale + shift`` of uint8 images).
      policies: what to apply.
      scale, shift: the preprocessing's per-channel (C,) constants; needed by the photometric policies.

    Returns:
      (N, H, W, C).
    """
    if not policies.enabled:
        return images
    if policies.photometric:
        scale, shift = jnp.reshape(scale, (1, 1, -1)), jnp.reshape(shift, (1, 1, -1))

    def one(key, x):
        scale_key, jitter_key, policy_key, erase_key = jax.random.split(key, 4)
        if tuple(policies.random_scale) != (1.0, 1.0):
            x = random_scale(scale_key, x, policies.random_scale)
        if policies.photometric:
            unit = (x - shift) / (255.0 * scale)
            if policies.color_jitter:
                unit = color_jitter(jitter_key, jnp.clip(unit, 0.0, 1.0), policies.color_jitter)
            if policies.randaugment:
                unit = randaugment(policy_key, jnp.clip(unit, 0.0, 1.0), policies.randaugment)
            elif policies.trivialaugment:
                unit = trivialaugment(policy_key, jnp.clip(unit, 0.0, 1.0))
            x = unit * 255.0 * scale + shift
        if policies.random_erasing:
            x = random_erasing(erase_key, x, policies.random_erasing, policies.random_erasing_area)
        return x.astype(images.dtype)

    return jax.vmap(one)(jax.random.split(key, images.shape[0]), images)
