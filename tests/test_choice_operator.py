"""The `choice` operator (one operator drawn per image) against references that apply each
drawn sub-operator to the image alone with the documented key (rrjax/operators.py)."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rrjax import operators, sharding
from rrjax.operators import mixtures

MASK, NOISE = {"kind": "mask", "p": 0.5}, {"kind": "noise", "sigma": 0.3}


def drawn_indices(rng, batch_size, weights):
  """The documented draw: u from each image's level key, j = #{partial-sum bounds <= u}."""
  partial_sums = np.cumsum(weights, dtype=np.float64)
  bounds = np.float32(partial_sums[:-1] / partial_sums[-1])
  level_keys = jax.vmap(lambda key: jax.random.split(key)[0])(jax.random.split(rng, batch_size))
  u = np.asarray(jax.vmap(jax.random.uniform)(level_keys))
  return np.sum(u[:, None] >= bounds[None, :], axis=1)


def test_each_image_is_its_drawn_operators_output_for_its_sample_key():
  ops = [NOISE, {"kind": "blur", "kernel_size": 3, "sigma": 1.0},
         {"kind": "identity"},  # weight 0: never drawn
         {"kind": "choice", "ops": [{"kind": "blur", "kernel_size": 5, "sigma": 2.0},
                                    {"kind": "downsample", "factor": 2}]}]
  weights = [1, 2, 0, 1]
  rng, batch_size = jax.random.key(7), 24
  images = jax.random.uniform(jax.random.key(0), (batch_size, 8, 8, 3))
  out = np.asarray(jax.jit(operators.build({"kind": "choice", "ops": ops,
                                            "weights": weights}))(rng, images))
  indices = drawn_indices(rng, batch_size, weights)
  assert set(indices) == {0, 1, 3}
  singles = [jax.jit(operators.build(spec)) for spec in ops]
  for i, key in enumerate(jax.random.split(rng, batch_size)):
    sample_key = jax.random.split(key)[1]
    expected = singles[indices[i]](sample_key, images[i:i + 1])[0]
    np.testing.assert_allclose(out[i], expected, atol=1e-6, err_msg=f"image {i}")


@pytest.mark.parametrize("weights", [[0.4, 0.3, 0.2, 0.1, 0.0], None])
def test_frequencies_follow_the_weights(weights):
  # Deterministic operators whose outputs on this 2 x 2 image all differ (blur: other
  # sigmas, other values), so each output tells which operator was drawn.
  ops = [{"kind": "identity"}, {"kind": "downsample", "factor": 2},
         *({"kind": "blur", "kernel_size": 3, "sigma": s} for s in (0.5, 3.0, 1.5))]
  spec = {"kind": "choice", "ops": ops}
  if weights is None:  # uniform; also a ConfigDict holding a list of specs
    spec = ml_collections.ConfigDict(spec)
    probabilities = np.full(5, 0.2)
  else:
    spec["weights"] = weights
    probabilities = np.array(weights)
  n = 5000
  image = jnp.broadcast_to(jnp.array([[0.2, 0.4], [0.6, 0.8]])[..., None], (1, 2, 2, 3))
  out = np.asarray(jax.jit(operators.build(spec))(jax.random.key(3),
                                                 jnp.broadcast_to(image, (n, 2, 2, 3))))
  outputs = [np.asarray(operators.build(op)(jax.random.key(0), image))[0] for op in ops]
  found = np.stack([np.all(np.isclose(out, o, atol=1e-6), axis=(1, 2, 3)) for o in outputs])
  assert np.all(found.sum(axis=0) == 1)
  counts = found.sum(axis=1)
  drawn = probabilities > 0
  assert np.all(counts[~drawn] == 0)
  expected = n * probabilities[drawn]
  chi_square = np.sum((counts[drawn] - expected) ** 2 / expected)
  # The 0.001 quantile of chi-square with 3 (4) degrees of freedom.
  assert chi_square < {3: 16.27, 4: 18.47}[drawn.sum() - 1], (counts, chi_square)


def test_labels():
  assert operators.describe({"kind": "choice", "ops": [MASK, NOISE]}) == (
      "choice(mask p=0.5 or noise sigma=0.3)")
  assert operators.describe({"kind": "choice", "ops": [MASK, NOISE], "weights": [3, 1]}) == (
      "choice(0.75: mask p=0.5 or 0.25: noise sigma=0.3)")
  severities = {"kind": "choice", "ops": [
      {"kind": "imagenet_c", "corruption": "fog", "severity": s} for s in range(1, 6)]}
  assert operators.describe({"kind": "choice", "ops": [severities, MASK]}) == (
      "choice(imagenet_c corruption=fog severity~{1,2,3,4,5} or mask p=0.5)")


@pytest.mark.parametrize("spec, field", [
    ({"kind": "choice"}, "operator.ops"),
    ({"kind": "choice", "ops": []}, "operator.ops"),
    ({"kind": "choice", "ops": [MASK, NOISE], "weights": [1]}, "operator.weights"),
    ({"kind": "choice", "ops": [MASK, NOISE], "weights": [1, -1]}, "operator.weights"),
    ({"kind": "choice", "ops": [MASK, NOISE], "weights": [0, 0]}, "operator.weights"),
    ({"kind": "choice", "ops": [MASK, NOISE], "weights": "uniform"}, "operator.weights"),
    ({"kind": "choice", "ops": [MASK, {"kind": "noise", "sigma": -1}]}, "operator.ops[1].sigma"),
    ({"kind": "choice", "ops": [MASK], "p": 0.5}, "unknown field"),
    ({"kind": "choice", "ops": [MASK, {"kind": "choice", "ops": [MASK], "weights": [1, 1]}]},
     "operator.ops[1].weights"),
    ({"kind": "choice", "ops": [{"kind": "compose", "ops": [MASK, {"kind": "pgd", "eps": 0.1}]}]},
     "operator.ops[0].ops[1].kind' is an attack"),
])
def test_bad_specs_name_the_field(spec, field):
  with pytest.raises(ValueError, match=re.escape(field)):
    operators.build(spec)


def test_dispatch_runs_each_leaf_only_on_the_images_that_drew_it():
  """Leaves record the rows they are called on (a host callback inside the conditional):
  each image goes through its own leaf, and the work done is the batch plus at most one
  partial chunk per drawn leaf, not every leaf on every image."""
  calls = []
  num_leaves, batch_size = 7, 40
  chunk = mixtures.chunk_size(batch_size, num_leaves)

  def leaf(j):
    def keyed(keys, images):
      jax.debug.callback(lambda rows: calls.append((j, int(rows))), images.shape[0])
      return images + j
    return operators.Operator(batch=None, keyed=keyed)

  leaves = [leaf(j) for j in range(num_leaves)]
  drawn = np.random.default_rng(0).choice([0, 2, 3, 6], batch_size, p=[0.5, 0.3, 0.1, 0.1])
  images = jnp.broadcast_to(jnp.arange(batch_size, dtype=jnp.float32)[:, None, None, None],
                            (batch_size, 2, 2, 3))
  keys = jax.random.split(jax.random.key(0), batch_size)
  out = jax.jit(lambda idx, k, x: mixtures.dispatch(leaves, idx, k, x))(
      jnp.asarray(drawn, jnp.int32), keys, images)
  jax.effects_barrier()
  np.testing.assert_array_equal(np.asarray(out)[:, 0, 0, 0], np.arange(batch_size) + drawn)
  rows = {j: sum(n for i, n in calls if i == j) for j in range(num_leaves)}
  counts = np.bincount(drawn, minlength=num_leaves)
  for j in range(num_leaves):  # Whole chunks: the group rounded up to a multiple of chunk.
    assert rows[j] == -(-counts[j] // chunk) * chunk, (j, rows, chunk)
  assert sum(rows.values()) <= 1.5 * batch_size


def test_keyed_form_corrupts_each_image_alone_with_its_key():
  """op.keyed(keys, images)[i] == op(keys[i], images[i:i+1])[0], what evaluation relies on,
  for a choice (nested) inside a compose."""
  spec = {"kind": "compose", "ops": [
      {"kind": "choice", "ops": [NOISE, {"kind": "choice", "ops": [
          {"kind": "downsample", "factor": 2},
          {"kind": "blur", "kernel_size": 3, "sigma": 1.0}]}]},
      {"kind": "noise", "sigma": 0.1}]}
  op = operators.build(spec)
  images = jax.random.uniform(jax.random.key(1), (12, 6, 6, 3))
  keys = jax.random.split(jax.random.key(2), 12)
  out = np.asarray(jax.jit(op.keyed)(keys, images))
  alone = jax.jit(lambda key, image: op(key, image[None])[0])
  for i in range(12):
    # The same float32 operations on the same values: equal up to XLA's fusion choices.
    np.testing.assert_allclose(out[i], alone(keys[i], images[i]), atol=1e-6)


def test_each_device_groups_its_own_images_under_the_mesh():
  """Traced under a data mesh (as the trainer and evaluation do), a choice groups each
  device's share of the batch: the output stays split over the devices with no
  collective in the program, and equals the single-device result."""
  mesh = sharding.make_mesh()
  op = operators.build({"kind": "choice", "ops": [
      NOISE, {"kind": "downsample", "factor": 2},
      {"kind": "blur", "kernel_size": 3, "sigma": 1.0}]})
  images = jax.random.uniform(jax.random.key(0), (8 * len(mesh.devices), 6, 6, 3))
  key = sharding.replicate(jax.random.key(1), mesh)
  sharded = jax.device_put(images, sharding.data_sharding(mesh))
  with jax.set_mesh(mesh):
    compiled = jax.jit(op).lower(key, sharded).compile()
  assert compiled.output_shardings.spec == sharding.data_sharding(mesh).spec
  assert not re.search(r"all-gather|all-reduce|all-to-all|collective-permute",
                       compiled.as_text())
  # Each image's computation is the same on one device or eight: equal up to fusion.
  np.testing.assert_allclose(compiled(key, sharded), jax.jit(op)(jax.random.key(1), images),
                             atol=1e-6)
