"""Losses against plain numpy double loops written from SPEC §2, gradients against finite
differences, and sharded (8 simulated devices) against single-device values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rrjax import losses, sharding

# Numerically sensitive: sharded global-batch losses against single-device ones.
# .ci/run runs these tests again with XLA's CPU code capped at AVX.
pytestmark = pytest.mark.numerics


TAU = 0.1


def _normalize(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_loss(student, teacher, kind, tau=TAU):
  """SPEC §2, one term at a time, in float64."""
  s, t = _normalize(np.float64(student)), _normalize(np.float64(teacher))
  n = len(s)
  total = 0.0
  if kind == "nt_xent":
    z = np.concatenate([t, s])
    for a in range(2 * n):
      p = a + n if a < n else a - n
      denominator = sum(np.exp(z[a] @ z[c] / tau) for c in range(2 * n) if c != a)
      total += -z[a] @ z[p] / tau + np.log(denominator)
    return total / (2 * n)
  for i in range(n):
    if kind == "mse":
      total += np.sum((s[i] - t[i]) ** 2)
      continue
    st = sum(np.exp(s[i] @ t[k] / tau) for k in range(n))
    ss = sum(np.exp(s[i] @ s[k] / tau) for k in range(n) if k != i)
    denominator = {"student_teacher": st, "student_student": ss, "student_both": st + ss}[kind]
    total += -s[i] @ t[i] / tau + np.log(denominator)
  return total / n


def _embeddings(n=8, d=5, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)).astype(np.float32) * 3,
          rng.normal(size=(n, d)).astype(np.float32) * 0.5)


@pytest.mark.parametrize("kind", losses.KINDS)
def test_matches_numpy_double_loop(kind):
  s, t = _embeddings()
  got = losses.contrastive_loss(s, t, kind=kind, temperature=TAU)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(got, reference_loss(s, t, kind), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", losses.KINDS)
def test_gradient_matches_finite_differences_and_skips_teacher(kind):
  s, t = _embeddings(n=4, d=3, seed=1)
  grad_s, grad_t = jax.grad(
      lambda a, b: losses.contrastive_loss(a, b, kind=kind), argnums=(0, 1))(s, t)
  np.testing.assert_array_equal(grad_t, 0.0)
  h = 1e-5
  numeric = np.zeros_like(s, dtype=np.float64)
  for idx in np.ndindex(s.shape):
    plus, minus = np.float64(s), np.float64(s)
    plus[idx] += h
    minus[idx] -= h
    numeric[idx] = (reference_loss(plus, t, kind) - reference_loss(minus, t, kind)) / (2 * h)
  np.testing.assert_allclose(grad_s, numeric, rtol=1e-3, atol=1e-4)


def test_student_teacher_is_softmax_cross_entropy_on_the_diagonal():
  s, t = _embeddings()
  logits = _normalize(s) @ _normalize(t).T / TAU
  logits -= logits.max(axis=1, keepdims=True)
  log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  np.testing.assert_allclose(losses.contrastive_loss(s, t), -np.mean(np.diag(log_softmax)),
                             rtol=1e-5)


def test_mse_equals_two_minus_two_cosine():
  s, t = _embeddings()
  cos = np.sum(_normalize(s) * _normalize(t), axis=1)
  np.testing.assert_allclose(losses.contrastive_loss(s, t, kind="mse"), 2 * np.mean(1 - cos),
                             rtol=1e-5)


def test_bfloat16_inputs_are_stable_in_float32():
  s, t = _embeddings(n=16, d=32)
  # Nearly identical, large-norm embeddings with a tiny temperature overflow a naive exp.
  big_s, big_t = jnp.asarray(s * 1e4, jnp.bfloat16), jnp.asarray(s * 1e4, jnp.bfloat16)
  for kind in losses.KINDS:
    value = losses.contrastive_loss(big_s, big_t, kind=kind, temperature=0.01)
    assert value.dtype == jnp.float32 and np.isfinite(value), kind
  got = losses.contrastive_loss(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
  np.testing.assert_allclose(got, reference_loss(s, t, "student_teacher"), rtol=2e-2)


@pytest.mark.parametrize("kind", losses.KINDS)
def test_sharded_global_batch_equals_single_device(kind):
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 8
  s, t = _embeddings(n=32, d=16, seed=2)
  fn = jax.jit(jax.value_and_grad(lambda a, b: losses.contrastive_loss(a, b, kind=kind)))
  single_value, single_grad = fn(jax.device_put(s, jax.devices()[0]),
                                 jax.device_put(t, jax.devices()[0]))
  sharded_s, sharded_t = sharding.shard_batch((s, t), mesh)
  assert len(sharded_s.addressable_shards) == 8
  value, grad = fn(sharded_s, sharded_t)
  np.testing.assert_allclose(value, single_value, rtol=1e-6)
  np.testing.assert_allclose(grad, single_grad, rtol=1e-5, atol=1e-7)
  # Uses the whole global batch as negatives: not the mean of per-shard losses.
  if kind != "mse":
    per_shard = np.mean([reference_loss(s[i:i + 4], t[i:i + 4], kind) for i in range(0, 32, 4)])
    assert abs(per_shard - float(value)) > 1e-3


@pytest.mark.parametrize("kind,temperature,field", [
    ("cosine", 0.1, "loss.kind"), ("student_teacher", 0.0, "loss.temperature")])
def test_bad_config_names_the_field(kind, temperature, field):
  s, t = _embeddings()
  with pytest.raises(ValueError, match=field):
    losses.contrastive_loss(s, t, kind=kind, temperature=temperature)


def test_shape_mismatch_is_refused():
  s, t = _embeddings()
  with pytest.raises(ValueError, match="same shape"):
    losses.contrastive_loss(s, t[:4])
