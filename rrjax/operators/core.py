"""What every operator implementation shares: the Operator object, its two calling forms,
and the lift of a per-image function to a batch (the key layout of rrjax.operators)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True, eq=False)
class Operator:
  """A built operator (`rrjax.operators.build`); compared and hashed by identity, so that
  jitted functions cached per operator are reused.

  Fields:
    batch: `(rng, images, loss_fn) -> images`, one key for the batch (what calling the
      operator runs).
    keyed: `(keys [B], images [B, H, W, C]) -> images` with `out[i] == op(keys[i],
      images[i:i + 1])[0]`: each image corrupted alone with its own key, which evaluation
      (results independent of batching) and `choice` (its entries) need; attacks, which
      need the batch's training loss, raise there.
    program, level: `keyed(keys, images) == program(level, keys, images)` with `level` a
      traced int32, so that operators differing only in a level (ImageNet-C severities)
      share one compiled program; level 0 where the operator has no such level.
    adversarial: needs `loss_fn` (kind pgd, or a compose holding one).
  """
  batch: Callable
  keyed: Callable
  program: Callable | None = None
  level: int = 0
  adversarial: bool = False

  def __post_init__(self):
    if self.program is None:
      keyed = self.keyed
      object.__setattr__(self, "program", lambda level, keys, images: keyed(keys, images))

  def __call__(self, rng, images, loss_fn=None):
    return self.batch(rng, images, loss_fn)


def check_images(images) -> None:
  """Trace-time checks: shapes and dtypes are static, so these cost nothing under jit."""
  if images.ndim != 4:
    raise ValueError(f"images must have shape [B, H, W, C]; got shape {images.shape}.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(
        f"images must be floats in [0, 1] (convert uint8 with images / 255); got dtype "
        f"{images.dtype}.")


def single_image_keys(keys):
  """The per-image key each image of `keys` gets when corrupted as a batch of one:
  `op(k, image[None])` splits k into one key."""
  return jax.vmap(lambda key: jax.random.split(key, 1)[0])(keys)


def natural(batch_fn: Callable, keyed_fn: Callable, **fields) -> Operator:
  """An operator without attack from its batch form `(rng, images)` and keyed form."""

  def batch(rng, images, loss_fn=None):
    del loss_fn  # Natural operators need no model.
    check_images(images)
    return batch_fn(rng, images)

  def keyed(keys, images):
    check_images(images)
    return keyed_fn(keys, images)

  return Operator(batch, keyed, **fields)


def per_image(apply_one: Callable) -> Operator:
  """Lifts `apply_one(level_key, sample_key, image [H, W, C])` to an operator: image i of a
  batch uses `jax.random.split(rng, B)[i]`, split into its level and sample keys."""

  def one(key, image):
    level_key, sample_key = jax.random.split(key)
    return apply_one(level_key, sample_key, image).astype(image.dtype)

  return natural(
      lambda rng, images: jax.vmap(one)(jax.random.split(rng, images.shape[0]), images),
      lambda keys, images: jax.vmap(one)(single_image_keys(keys), images))


def deterministic(fn: Callable) -> Operator:
  """An operator that draws nothing: `fn(images)`, whatever the key."""
  return natural(lambda rng, images: fn(images), lambda keys, images: fn(images))
