"""Data augmentation as pure, jittable functions of (key, images (N, H, W, C)) -> images of the same shape.

Each example gets its own random draw from ``key``; the same key gives the same result, so a training step that
derives its key from ``fold_in(seed_key, step)`` augments identically after a resume.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.data.policies import Policies, apply_policies

PAD_MODES = ("constant", "reflect", "edge")


def random_crop(key: jax.Array, images: jax.Array, *, padding: int, mode: str = "constant") -> jax.Array:
    """Pads each side and crops a random window of the original size per example: the standard CIFAR augmentation
    (padding 4 on 32x32).

    Args:
      key: the PRNG key.
      images: (N, H, W, C).
      padding: pixels added on each side.
      mode: ``jnp.pad``'s mode: 'constant' (zeros), 'reflect' or 'edge'.

    Returns:
      (N, H, W, C).
    """
    if mode not in PAD_MODES:
        raise ValueError(f"random_crop: mode must be one of {PAD_MODES}, got {mode!r}")
    if padding == 0:
        return images
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=mode)
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
    crop = lambda image, offset: lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))  # noqa: E731
    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each example left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def translate(images: jax.Array, shifts: jax.Array) -> jax.Array:
    """Shifts image n by ``shifts[n] = (down, right)`` pixels, sub-pixel with bilinear interpolation; pixels shifted in
    from outside the image are zero. images: (N, H, W, C); shifts: (N, 2)."""
    n, h, w, c = images.shape
    scale = jnp.ones(2, images.dtype)

    def shift(image, offset):
        return jax.image.scale_and_translate(image, (h, w, c), (0, 1), scale, offset, "linear")

    return jax.vmap(shift)(images, shifts.astype(images.dtype))


def random_translate(key: jax.Array, images: jax.Array, *, max_shift: float) -> jax.Array:
    """Shifts each example by a random sub-pixel offset along each axis (see ``translate``).

    Args:
      key: the PRNG key.
      images: (N, H, W, C).
      max_shift: offsets are uniform in [-max_shift, max_shift] pixels.

    Returns:
      (N, H, W, C).
    """
    if max_shift == 0:
        return images
    return translate(images, jax.random.uniform(key, (images.shape[0], 2), images.dtype, -max_shift, max_shift))


def test_time_views(images: jax.Array, *, flip: bool = False, shift: int = 0) -> list[jax.Array]:
    """The views of ``images`` whose predictions test-time augmentation averages.

    Args:
      images: (N, H, W, C).
      flip: add the mirror images of every view.
      shift: > 0 adds copies shifted by ``shift`` pixels up, down, left and right (zeros shifted in, as
        ``random_crop`` pads).

    Returns:
      1, 2, 5 or 10 arrays (N, H, W, C), the unchanged images first.
    """
    views = [images]
    if shift:
        n, h, w, c = images.shape
        padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
        offsets = [(0, shift), (2 * shift, shift), (shift, 0), (shift, 2 * shift)]
        views += [padded[:, top : top + h, left : left + w, :] for top, left in offsets]
    return views + [view[:, :, ::-1, :] for view in views] if flip else views


def augment(
    key: jax.Array, images: jax.Array, *, crop_padding: int = 0, flip: bool = False, translate: float = 0.0,
    policies: Policies | None = None, scale=None, shift=None,
) -> jax.Array:  # fmt: skip
    """Random crop, flip and translation in that order, each with its own key, then the policies of
    :mod:`cnnjax.data.policies`; disabled ones are skipped.

    Args:
      key: the PRNG key.
      images: (N, H, W, C).
      crop_padding: > 0 enables :func:`random_crop` with this padding.
      flip: random horizontal flips.
      translate: > 0 enables :func:`random_translate` with this maximum shift.
      policies: RandAugment, TrivialAugment, colour jitter, random scale, random erasing; None: none.
      scale, shift: the preprocessing's per-channel constants (C,), for the photometric policies.

    Returns:
      (N, H, W, C).
    """
    crop_key, flip_key, translate_key = jax.random.split(key, 3)
    images = random_crop(crop_key, images, padding=crop_padding)
    if flip:
        images = random_flip(flip_key, images)
    images = random_translate(translate_key, images, max_shift=translate)
    if policies is None or not policies.enabled:
        return images
    constants = (None, None) if scale is None else (jnp.asarray(scale), jnp.asarray(shift))
    return apply_policies(jax.random.fold_in(key, 3), images, policies, *constants)


class Mixing(NamedTuple):
    """Mixup / CutMix settings (timm's semantics): ``data.mixup_alpha``, ``data.cutmix_alpha``, ``data.mix_prob``,
    ``data.mix_switch_prob``. An alpha of 0 disables that kind."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def mix(key: jax.Array, images: jax.Array, mixing: Mixing) -> tuple[jax.Array, jax.Array]:
    """Mixes each image with its partner in the reversed batch, as timm's ``Mixup`` in batch mode: with probability
    ``prob``, Mixup (``lam * x + (1 - lam) * partner``, lam ~ Beta(mixup_alpha, mixup_alpha)) or, with probability
    ``switch_prob`` when both are enabled, CutMix (a box of area ~ 1 - lam, lam ~ Beta(cutmix_alpha, cutmix_alpha),
    pasted from the partner; lam is then the share of the image kept).

    Args:
      key: the PRNG key.
      images: (N, H, W, C).
      mixing: the settings.

    Returns:
      (mixed images (N, H, W, C), lam ()): the targets are ``lam * target + (1 - lam) * target[::-1]``.
    """
    apply_key, switch_key, mixup_key, cutmix_key, box_key = jax.random.split(key, 5)
    _, h, w, _ = images.shape
    partner = images[::-1]
    use_cutmix = jnp.asarray(mixing.cutmix_alpha > 0) & (
        jnp.asarray(mixing.mixup_alpha <= 0) | jax.random.bernoulli(switch_key, mixing.switch_prob)
    )
    mixup_lam = jax.random.beta(mixup_key, max(mixing.mixup_alpha, 1e-3), max(mixing.mixup_alpha, 1e-3))
    cutmix_lam = jax.random.beta(cutmix_key, max(mixing.cutmix_alpha, 1e-3), max(mixing.cutmix_alpha, 1e-3))
    cut = jnp.sqrt(1.0 - cutmix_lam)
    cut_h, cut_w = (h * cut).astype(jnp.int32), (w * cut).astype(jnp.int32)
    cy, cx = jax.random.randint(box_key, (2,), 0, jnp.array([h, w]))
    top, bottom = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
    left, right = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = ((rows >= top) & (rows < bottom) & (cols >= left) & (cols < right))[None, :, :, None]
    box_lam = 1.0 - ((bottom - top) * (right - left)).astype(jnp.float32) / (h * w)
    mixed = jnp.where(use_cutmix, jnp.where(box, partner, images), mixup_lam * images + (1 - mixup_lam) * partner)
    lam = jnp.where(use_cutmix, box_lam, mixup_lam).astype(jnp.float32)
    applied = jax.random.bernoulli(apply_key, mixing.prob)
    return jnp.where(applied, mixed, images).astype(images.dtype), jnp.where(applied, lam, 1.0)
