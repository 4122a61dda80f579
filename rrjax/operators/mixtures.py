"""Operators made of operators: compose (stages in order) and choice (one entry drawn per
image), whose cost follows what it draws."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rrjax import sharding
from rrjax.operators.core import Operator, natural, single_image_keys


def compose(stages: Sequence[Operator]) -> Operator:
  adversarial = any(stage.adversarial for stage in stages)

  def batch(rng, images, loss_fn=None):
    for stage_key, stage in zip(jax.random.split(rng, len(stages)), stages):
      images = stage(stage_key, images, loss_fn)
    return images

  def keyed(keys, images):
    # Image i alone would give stage j the key split(keys[i], len(stages))[j].
    stage_keys = jax.vmap(lambda key: jax.random.split(key, len(stages)))(keys)
    for j, stage in enumerate(stages):
      images = stage.keyed(stage_keys[:, j], images)
    return images

  return Operator(batch, keyed, adversarial=adversarial)


def _select_keys(chosen, on_true, on_false):
  """jnp.where over a batch of keys, typed (key<impl>[B]) or raw (uint32 [B, 2])."""
  return jnp.where(chosen.reshape(chosen.shape + (1,) * (on_true.ndim - 1)), on_true, on_false)


@dataclasses.dataclass(frozen=True, eq=False)
class Draw:
  """What a choice draws from: `entries` (operators, or nested Draws of nested choices)
  and the float32 bounds of the documented draw (rrjax.operators' key layout)."""
  bounds: np.ndarray
  entries: tuple

  @classmethod
  def of(cls, entries: Sequence, weights: Sequence[float] | None) -> "Draw":
    partial_sums = np.cumsum(np.ones(len(entries)) if weights is None else weights)
    # Divided by their own last entry, the sums after the last positive weight are exactly
    # 1, which the uniform u < 1 never reaches: zero-weight entries are never drawn.
    return cls(np.float32(partial_sums[:-1] / partial_sums[-1]), tuple(entries))

  @property
  def leaves(self) -> tuple[Operator, ...]:
    """The operators a draw ends in, nested choices flattened, in order."""
    return tuple(leaf for entry in self.entries
                 for leaf in (entry.leaves if isinstance(entry, Draw) else (entry,)))

  def resolve(self, keys):
    """(leaf index [B], leaf key [B]) of images whose choice gets per-image `keys` (after
    the batch split): the image becomes `leaves[index].keyed(key[None], image[None])[0]`,
    exactly the documented nested draw (a nested choice is called on the image alone with
    the sample key), computed for every nested choice and selected: a few scalar draws."""
    pairs = jax.vmap(jax.random.split)(keys)
    level_keys, sample_keys = pairs[:, 0], pairs[:, 1]
    u = jax.vmap(jax.random.uniform)(level_keys)
    drawn = jnp.sum(u[:, None] >= jnp.asarray(self.bounds)[None, :], axis=1)
    leaf, leaf_keys, offset = jnp.zeros_like(drawn), sample_keys, 0
    for j, entry in enumerate(self.entries):
      chosen = drawn == j
      if isinstance(entry, Draw):
        inner_leaf, inner_keys = entry.resolve(single_image_keys(sample_keys))
        leaf = jnp.where(chosen, offset + inner_leaf, leaf)
        leaf_keys = _select_keys(chosen, inner_keys, leaf_keys)
        offset += len(entry.leaves)
      else:
        leaf = jnp.where(chosen, offset, leaf)
        offset += 1
    return leaf, leaf_keys


def chunk_size(batch_size: int, num_leaves: int) -> int:
  """Images per conditional call of a leaf. Each leaf drawn at all runs on whole chunks,
  so a batch costs at most batch_size + num_leaves (chunk - 1) images of work (about half
  that padding on average); this chunk keeps that below 1.5 x batch_size while calls stay
  as large as it allows (fewer, better vectorised calls)."""
  return max(1, math.ceil(batch_size / (2 * num_leaves)))


def dispatch(leaves: Sequence[Operator], leaf, leaf_keys, images):
  """`out[i] = leaves[leaf[i]].keyed(leaf_keys[i][None], images[i][None])[0]`, running
  each leaf only on the images that drew it.

  Images are sorted by leaf; a loop walks the groups in chunks of static size
  (`chunk_size`), and each chunk goes through `jax.lax.switch` on its one leaf index, a
  real conditional (not a select: the index is a scalar, not batched), so only that leaf
  runs. A group's last chunk spills past its end into the next group (or padding); those
  rows are rewritten by the next group's chunks, which come later, so no mask is needed.
  """
  if len(leaves) == 1:
    return leaves[0].keyed(leaf_keys, images)
  batch_size = images.shape[0]
  chunk = chunk_size(batch_size, len(leaves))
  order = jnp.argsort(leaf, stable=True)
  counts = jnp.bincount(leaf, length=len(leaves))
  group_starts = jnp.cumsum(counts) - counts
  chunks = (counts + chunk - 1) // chunk
  chunk_ends = jnp.cumsum(chunks)
  sorted_images = jnp.concatenate(
      [images[order], jnp.zeros((chunk,) + images.shape[1:], images.dtype)])
  sorted_keys = leaf_keys[order]
  sorted_keys = jnp.concatenate([sorted_keys, sorted_keys[:chunk]])
  branches = [leaf_op.keyed for leaf_op in leaves]

  def run_chunk(t, out):
    which = jnp.searchsorted(chunk_ends, t, side="right")
    start = group_starts[which] + (t - (chunk_ends[which] - chunks[which])) * chunk
    corrupted = jax.lax.switch(
        which, branches, jax.lax.dynamic_slice_in_dim(sorted_keys, start, chunk),
        jax.lax.dynamic_slice_in_dim(sorted_images, start, chunk))
    return jax.lax.dynamic_update_slice_in_dim(out, corrupted, start, axis=0)

  out = jax.lax.fori_loop(0, chunk_ends[-1], run_chunk, sorted_images)
  return out[:batch_size][jnp.argsort(order)]


def _dispatch_per_device(leaves: Sequence[Operator], leaf, leaf_keys, images):
  """`dispatch`, each device grouping its own images when the batch is split over the
  data axis of the mesh the caller traces under (`jax.set_mesh`, as the trainer and
  evaluation do): grouping the global batch would gather it and corrupt all of it on
  every device."""
  mesh = jax.sharding.get_abstract_mesh()
  devices = dict(mesh.shape).get(sharding.DATA_AXIS, 1) if not mesh.empty else 1
  if devices == 1 or images.shape[0] % devices:
    return dispatch(leaves, leaf, leaf_keys, images)
  batch = jax.sharding.PartitionSpec(sharding.DATA_AXIS)
  return jax.shard_map(functools.partial(dispatch, leaves), mesh=mesh,
                       in_specs=(batch, batch, batch), out_specs=batch,
                       axis_names={sharding.DATA_AXIS},
                       # The leaves' loops start from constants shared by all devices
                       # (e.g. mask's threshold search); the values are per-device anyway.
                       check_vma=False)(leaf, leaf_keys, images)


def choice(draw: Draw) -> Operator:
  """A choice holds no attacks (checked when parsed), so it is a natural operator."""
  leaves = draw.leaves
  return natural(
      lambda rng, images: _dispatch_per_device(
          leaves, *draw.resolve(jax.random.split(rng, images.shape[0])), images),
      lambda keys, images: _dispatch_per_device(
          leaves, *draw.resolve(single_image_keys(keys)), images))
