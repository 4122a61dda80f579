"""Projected gradient ascent (Madry et al. 2018) in the linf or l2 ball of each image."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rrjax.adversarial.ball import ascent_direction, check_attack, per_example, projection


def _per_example_grad(loss_fn: Callable[[jax.Array], jax.Array]):
  """x -> gradient of sum(loss_fn(x)): example i's gradient is its own loss's."""
  return jax.grad(lambda x: jnp.sum(loss_fn(x)))


def pgd(loss_fn: Callable[[jax.Array], jax.Array], images: jax.Array, key: jax.Array, *,
        eps, steps: int, step_size, norm: str = "linf",
        random_start: bool = True) -> jax.Array:
  """Projected gradient ascent on `loss_fn` within the eps-ball of each image.

  Args:
    loss_fn: `images [B, H, W, C] -> per-example losses [B]`, to be maximised.
    images: clean float images in [0, 1], `[B, H, W, C]`.
    key: the random start's key (unused when `random_start=False`).
    eps: the radius of each example's ball (linf or l2), a float or a traced scalar.
    steps: the number of ascent steps, static. 0 returns the starting point.
    step_size: the length of each step (per pixel for linf, the l2 length for l2).
    norm: "linf" or "l2".
    random_start: start uniformly in the linf ball, or uniformly in the l2 ball
      (a Gaussian direction, a radius eps * U^(1/n) for n = H * W * C); otherwise
      start at the clean images.

  Returns:
    The perturbed images, `[B, H, W, C]` in [0, 1] and within eps of `images`, with
    `stop_gradient` applied.
  """
  check_attack(images, norm, steps)
  images = jax.lax.stop_gradient(images)
  project = projection(norm)
  if not random_start:
    adv = images
  elif norm == "linf":
    adv = project(images + jax.random.uniform(key, images.shape, images.dtype, -eps, eps),
                  images, eps)
  else:
    direction_key, radius_key = jax.random.split(key)
    direction = ascent_direction(
        jax.random.normal(direction_key, images.shape, images.dtype), "l2")
    radius = eps * jax.random.uniform(radius_key, images.shape[:1], images.dtype) ** (
        1.0 / np.prod(images.shape[1:]))
    adv = project(images + direction * per_example(radius), images, eps)

  grad_fn = _per_example_grad(loss_fn)

  def step(_, adv):
    ascent = ascent_direction(grad_fn(adv), norm)
    return project(adv + step_size * ascent, images, eps)

  # The step compiles once, whatever `steps` is. Under an outer jax.grad over parameters
  # that loss_fn closes over, stop_gradient leaves the loop's tangents unused and JAX
  # drops them: the loop runs forward only, with no residuals kept for the backward pass.
  adv = jax.lax.fori_loop(0, steps, step, adv)
  return jax.lax.stop_gradient(adv)
