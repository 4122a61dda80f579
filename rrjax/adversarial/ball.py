"""The eps-balls the attacks work in: per-example norms, projections onto the linf and
l2 balls (intersected with [0, 1]), unit ascent directions, and the checks every
attack makes of its static arguments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NORMS = ("linf", "l2")

# Keeps unit-vector normalisations finite for a zero gradient or perturbation.
TINY = 1e-12


def check_attack(images, norm: str, steps: int) -> None:
  """Trace-time checks of the static arguments and the image batch."""
  if norm not in NORMS:
    raise ValueError(f"norm={norm!r} is not supported; use one of {NORMS}.")
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
    raise ValueError(f"steps={steps!r} must be a static integer >= 0.")
  if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(
        f"images must be floats in [0, 1] of shape [B, H, W, C]; got {images.dtype} "
        f"{images.shape}.")


def per_example(x: jax.Array) -> jax.Array:
  """A `[B]` vector broadcast against `[B, H, W, C]`."""
  return x.reshape(x.shape[:1] + (1,) * 3)


def l2_norms(x: jax.Array) -> jax.Array:
  """Per-example l2 norms of a `[B, ...]` batch, shape `[B]`."""
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim))))


def project_linf(adv: jax.Array, images: jax.Array, eps) -> jax.Array:
  """The nearest point to `adv` with ||adv - images||_inf <= eps, clipped to [0, 1]."""
  return jnp.clip(images + jnp.clip(adv - images, -eps, eps), 0.0, 1.0)


def project_l2(adv: jax.Array, images: jax.Array, eps) -> jax.Array:
  """`adv - images` scaled onto the l2 ball of radius eps (per example) when outside it,
  then clipped to [0, 1]. With images in [0, 1], clipping only shrinks the
  perturbation, so the result stays in the ball."""
  delta = adv - images
  scale = jnp.minimum(1.0, eps / jnp.maximum(l2_norms(delta), TINY))
  return jnp.clip(images + delta * per_example(scale), 0.0, 1.0)


def projection(norm: str):
  return project_linf if norm == "linf" else project_l2


def ascent_direction(grad: jax.Array, norm: str) -> jax.Array:
  """The steepest-ascent direction of unit norm: sign(g) for linf, g / ||g||_2 for l2."""
  if norm == "linf":
    return jnp.sign(grad)
  return grad / per_example(jnp.maximum(l2_norms(grad), TINY))
