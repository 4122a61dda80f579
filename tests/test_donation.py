"""The training step updates its state in place: every buffer of the input state is
donated to the step's outputs, replicated or split over the devices (`shard_params`)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rrjax import sharding, train


def _loss_fn(params, model_state, batch, key, frozen):
  del key, frozen
  loss = jnp.mean((batch["x"] @ params["kernel"] + params["bias"]) ** 2)
  return loss, (model_state, {})


@pytest.mark.parametrize("shard_params", [False, True])
def test_every_state_buffer_is_donated_to_the_step(shard_params):
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  # Large enough that shard_params splits the kernel and its Adam moments.
  params = {"kernel": jnp.asarray(rng.normal(size=(256, 128)), jnp.float32),
            "bias": jnp.zeros((128,), jnp.float32)}
  tx = train.make_optimizer(learning_rate=1e-3, total_steps=10, weight_decay=1e-4)
  state = sharding.place_state(train.create_state(params, {}, tx), mesh, shard_params)
  assert shard_params != state.params["kernel"].sharding.is_fully_replicated
  step = train.jitted_step(_loss_fn, jax.tree.map(lambda x: x.sharding, state), mesh)
  batch = sharding.shard_batch({"x": rng.normal(size=(16, 256)).astype(np.float32)}, mesh)
  stop = sharding.shard_batch(np.zeros(8, bool), mesh)
  key = sharding.replicate(jax.random.key(0), mesh)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with jax.set_mesh(mesh):
      new_state, _, _ = step(state, batch, key, None, stop)
    jax.block_until_ready(new_state)
  assert not [w for w in caught if "donated" in str(w.message)]
  leaves = jax.tree.leaves(state)
  assert leaves and all(x.is_deleted() for x in leaves)
  assert not any(x.is_deleted() for x in jax.tree.leaves(new_state))
