"""The L-BFGS probe's feature pass (rrjax.stages.probe.corrupted_features) against a
single-device reference, run on the data mesh like training and evaluation."""

import jax
import jax.numpy as jnp
import numpy as np

from rrjax import objectives, operators, sharding
from rrjax.stages import probe as probe_stage

CHOICE = {"kind": "choice", "ops": [{"kind": "mask", "p": 0.5}, {"kind": "noise", "sigma": 0.1},
                                    {"kind": "blur", "kernel_size": 3, "sigma": 1.0}]}


def test_features_are_computed_on_the_data_mesh_once_per_shape():
  """Traced under the 8-device data mesh (so a choice operator groups each device's own
  images, rrjax.operators.mixtures), compiled once for several passes (label fractions),
  and equal to each batch corrupted and embedded on one device without a mesh."""
  mesh = sharding.make_mesh()
  traced_under = []

  def features_fn(variables, corrupted, batch):
    traced_under.append(dict(jax.sharding.get_abstract_mesh().shape))
    return jnp.mean(corrupted, axis=(1, 2)) * variables + batch["label"][:, None]

  rng = np.random.default_rng(0)
  batches = [{"image": rng.integers(0, 256, (16, 6, 6, 3), dtype=np.uint8),
              "label": rng.integers(0, 5, 16).astype(np.int32),
              "id": rng.permutation(100)[:16].astype(np.int32)} for _ in range(3)]
  operator, key = operators.build(CHOICE), jax.random.key(4)
  run = lambda: probe_stage.corrupted_features(
      features_fn, jnp.float32(2.0), iter(batches), operator=operator, mesh=mesh, key=key)
  features, labels, ids = run()
  assert traced_under == [{sharding.DATA_AXIS: 8}]
  again = run()
  assert len(traced_under) == 1  # The second pass reuses the compiled program.

  reference_fn = jax.jit(lambda k, batch: jnp.mean(
      operator(k, objectives.to_unit_range(batch["image"])), axis=(1, 2)) * 2.0
      + batch["label"][:, None])
  reference = np.concatenate([reference_fn(jax.random.fold_in(key, b), batch)
                              for b, batch in enumerate(batches)])
  assert features.dtype == np.float32 and features.shape == (48, 3)
  # Each image's computation is the same on one device or eight: equal up to fusion.
  np.testing.assert_allclose(features, reference, atol=1e-6, rtol=0)
  np.testing.assert_array_equal(labels, np.concatenate([b["label"] for b in batches]))
  np.testing.assert_array_equal(ids, np.concatenate([b["id"] for b in batches]))
  for a, b in zip(again, (features, labels, ids)):
    np.testing.assert_array_equal(a, b)
