"""PGD and APGD (rrjax.adversarial) against numpy references and closed-form optima.

Models are tiny pure-jnp functions on 4 x 4 x 3 images and every attack compiles once
per configuration, so the module runs in seconds on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rrjax import adversarial, sharding

# Numerically sensitive: attacks on 8 devices against 1, and against closed forms.
# .ci/run runs these tests again with XLA's CPU code capped at AVX.
pytestmark = pytest.mark.numerics


SHAPE = (8, 4, 4, 3)
PIXELS = int(np.prod(SHAPE[1:]))
STEP_COUNTS = (0, 1, 2, 5, 10)
# (eps, step size) per norm: FARE's linf budget (4/255, steps of 1/255), and an l2 one of
# similar strength for 48 pixels (the linf ball's corners lie at l2 distance 0.11).
BUDGETS = {"linf": (4 / 255, 1 / 255), "l2": (0.25, 0.06)}


def _images(seed=0, shape=SHAPE):
  """Uniform in [0, 1] with some pixels exactly 0 or 1, so the [0, 1] clip is active."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=shape)
  images[rng.uniform(size=shape) < 0.1] = 0.0
  images[rng.uniform(size=shape) < 0.1] = 1.0
  return jnp.asarray(images, jnp.float32)


# A small nonlinear student, and FARE's loss: the per-example squared L2 distance to the
# clean embedding of a teacher close to the student (as after FARE's initialisation).
_PARAMS = np.random.default_rng(1)
W1 = jnp.asarray(_PARAMS.normal(size=(PIXELS, 32)) / np.sqrt(PIXELS), jnp.float32)
W2 = jnp.asarray(_PARAMS.normal(size=(32, 16)) / np.sqrt(32), jnp.float32)


def student(w1, images):
  return jnp.tanh(images.reshape(images.shape[0], -1) @ w1) @ W2


TARGETS = student(W1 + 0.02 * _PARAMS.normal(size=W1.shape).astype(np.float32), _images())


def fare_loss(images, w1=W1):
  return jnp.sum(jnp.square(student(w1, images) - TARGETS), axis=-1)


def deltas(adv, images):
  return np.asarray(adv, np.float64) - np.asarray(images, np.float64)


@functools.lru_cache(maxsize=None)
def _pgd_runs(norm):
  """Images after each of STEP_COUNTS steps, for 8 keys: `[keys, steps, B, H, W, C]`,
  with eps and the step size traced."""

  def run(keys, eps, step_size):
    def one(key):
      return jnp.stack([adversarial.pgd(fare_loss, _images(), key, eps=eps, steps=steps,
                                        step_size=step_size, norm=norm)
                        for steps in STEP_COUNTS])
    return jax.vmap(one)(keys)

  eps, step_size = BUDGETS[norm]
  return np.asarray(jax.jit(run)(jax.random.split(jax.random.key(0), 8), eps, step_size))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_loss_grows_with_steps(norm):
  """The mean loss over 8 random starts x 8 images never decreases with more steps."""
  runs = _pgd_runs(norm)
  mean_loss = [float(jnp.mean(jax.vmap(fare_loss)(jnp.asarray(runs[:, j]))))
               for j in range(len(STEP_COUNTS))]
  assert all(b >= a for a, b in zip(mean_loss, mean_loss[1:])), mean_loss
  assert mean_loss[-1] > 1.5 * mean_loss[0], mean_loss


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_the_eps_ball_and_the_unit_box(norm):
  runs = _pgd_runs(norm)
  eps, _ = BUDGETS[norm]
  delta = deltas(runs, np.broadcast_to(_images(), runs.shape))
  assert runs.min() >= 0.0 and runs.max() <= 1.0
  if norm == "linf":
    assert np.abs(delta).max() <= eps + 1e-6
    # Ten steps of eps / 4 reach the boundary (unless clipped by the box).
    assert np.abs(delta[:, -1]).max() >= eps - 1e-6
  else:
    norms = np.sqrt(np.sum(np.square(delta), axis=(-3, -2, -1)))
    assert norms.max() <= eps * (1 + 1e-5)
    assert norms[:, -1].max() >= 0.9 * eps


def test_pgd_without_random_start_and_steps_starts_at_the_clean_images():
  images = _images()
  for norm in adversarial.NORMS:
    np.testing.assert_array_equal(
        adversarial.pgd(fare_loss, images, jax.random.key(0), eps=0.1, steps=0, step_size=0.1,
                        norm=norm, random_start=False), images)


def _numpy_pgd(loss, images, start, *, eps, steps, step_size, norm):
  """Float64 PGD with central finite-difference gradients: exact for quadratic losses."""
  x = start.copy()
  h = 1e-3
  for _ in range(steps):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape[1:]):
      up, down = x.copy(), x.copy()
      up[(slice(None),) + index] += h
      down[(slice(None),) + index] -= h
      grad[(slice(None),) + index] = (loss(up) - loss(down)) / (2 * h)
    if norm == "linf":
      x = x + step_size * np.sign(grad)
      x = np.clip(images + np.clip(x - images, -eps, eps), 0, 1)
    else:
      grad_norm = np.sqrt(np.sum(grad**2, axis=(1, 2, 3), keepdims=True))
      x = x + step_size * grad / np.maximum(grad_norm, 1e-12)
      delta = x - images
      delta_norm = np.sqrt(np.sum(delta**2, axis=(1, 2, 3), keepdims=True))
      x = np.clip(images + delta * np.minimum(1, eps / np.maximum(delta_norm, 1e-12)), 0, 1)
  return x


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_matches_a_numpy_reference_on_a_linear_model(norm):
  rng = np.random.default_rng(2)
  weights = rng.normal(size=(PIXELS, 5))
  targets = rng.normal(size=(SHAPE[0], 5))
  images = _images(seed=3)

  def loss_np(x):
    return np.sum((x.reshape(len(x), -1) @ weights - targets)**2, axis=-1)

  def loss_jnp(x):
    return jnp.sum(jnp.square(x.reshape(len(x), -1) @ jnp.asarray(weights, jnp.float32)
                              - jnp.asarray(targets, jnp.float32)), axis=-1)

  eps, step_size = BUDGETS[norm]
  attack = functools.partial(adversarial.pgd, loss_jnp, eps=eps, step_size=step_size,
                             norm=norm)
  # Zero steps from the same key give the random start the 5 steps begin from.
  start, result = jax.jit(lambda key: (attack(images, key, steps=0),
                                       attack(images, key, steps=5)))(jax.random.key(4))
  start = np.asarray(start, np.float64)
  expected = _numpy_pgd(loss_np, np.asarray(images, np.float64), start, eps=eps, steps=5,
                        step_size=step_size, norm=norm)
  np.testing.assert_allclose(result, expected, atol=1e-5)
  assert np.abs(expected - start).max() > step_size  # The steps moved the images.


def test_pgd_sharded_over_8_devices_equals_one_device():
  images = _images(seed=5, shape=(16,) + SHAPE[1:])
  targets = jnp.asarray(np.random.default_rng(6).normal(size=(16, 16)), jnp.float32)

  def attack(w1, images, targets, key):
    def loss(x):
      return jnp.sum(jnp.square(student(w1, x) - targets), axis=-1)
    return adversarial.pgd(loss, images, key, eps=4 / 255, steps=3, step_size=1 / 255)

  results = []
  for mesh in (sharding.make_mesh(jax.devices()[:1]), sharding.make_mesh()):
    adv = jax.jit(attack)(sharding.replicate(W1, mesh),
                          *sharding.shard_batch((images, targets), mesh), jax.random.key(7))
    results.append(adv)
  assert len(results[1].sharding.device_set) == 8
  np.testing.assert_allclose(results[1], results[0], atol=1e-6)


def test_pgd_passes_no_gradient_back_through_the_attack():
  """Inside a training step, d loss(params, pgd(params)) / d params is the gradient at
  the fixed perturbed images: the attack is a constant for the outer update."""
  images = _images(seed=8)

  def training_loss(w1, key):
    # l2: its normalised-gradient steps depend smoothly on w1 (linf's sign steps would
    # pass no gradient anyway). No random start: it plays no part here, and threefry
    # costs seconds of compilation.
    adv = adversarial.pgd(functools.partial(fare_loss, w1=w1), images, key, eps=0.25,
                          steps=3, step_size=0.06, norm="l2", random_start=False)
    return jnp.mean(fare_loss(adv, w1)), adv

  grads, adv = jax.jit(jax.grad(training_loss, has_aux=True))(W1, jax.random.key(9))
  assert np.abs(deltas(adv, images)).max() > 0
  np.testing.assert_allclose(
      grads, jax.grad(lambda w1: jnp.mean(fare_loss(adv, w1)))(W1), rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_refused():
  images = _images()
  with pytest.raises(ValueError, match="norm"):
    adversarial.pgd(fare_loss, images, jax.random.key(0), eps=0.1, steps=1, step_size=0.1,
                    norm="l1")
  with pytest.raises(ValueError, match="steps"):
    adversarial.pgd(fare_loss, images, jax.random.key(0), eps=0.1, steps=-1, step_size=0.1)
  with pytest.raises(ValueError, match="loss"):
    adversarial.apgd(lambda x: x.reshape(len(x), -1)[:, :3], images, jnp.zeros(8, int),
                     jax.random.key(0), eps=0.1, steps=1, loss="cw")
  with pytest.raises(ValueError, match="3 classes"):
    adversarial.apgd(lambda x: x.reshape(len(x), -1)[:, :2], images, jnp.zeros(8, int),
                     jax.random.key(0), eps=0.1, steps=1, loss="dlr")


def test_dlr_loss_follows_its_definition():
  logits = jnp.asarray([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
  # Label 0 is the top class: -(3 - 2) / (3 - 1); label 2 is not: -(2 - 3) / (3 - 1).
  np.testing.assert_allclose(adversarial.dlr_loss(logits, jnp.asarray([0, 2])), [-0.5, 0.5])
  # Invariant to shifting and scaling the logits.
  np.testing.assert_allclose(adversarial.dlr_loss(5 * logits + 7, jnp.asarray([0, 2])),
                             [-0.5, 0.5], rtol=1e-6)


def test_apgd_checkpoints_follow_auto_attack():
  """fra31/auto-attack's counter: check when `counter3 == k`, then k shrinks by
  size_decr down to n_iter_min and the counter restarts."""
  for steps in (1, 10, 50, 100, 250):
    k = max(int(0.22 * steps), 1)
    size_decr, n_iter_min = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    expected, counter = np.zeros(steps, int), 0
    for i in range(steps):
      counter += 1
      if counter == k:
        expected[i], counter = k, 0
        k = max(k - size_decr, n_iter_min)
    np.testing.assert_array_equal(adversarial.apgd_checkpoints(steps), expected)
  assert list(np.nonzero(adversarial.apgd_checkpoints(100))[0][:4]) == [21, 40, 56, 69]


# A linear classifier: for logits W^T x + b and label y, the smallest margin
# z_y - z_j reachable with ||delta||_p <= eps is margin_j - eps * ||w_y - w_j||_q (q the
# dual norm: 1 for linf, 2 for l2), as long as the box [0, 1] does not bind (images in
# [0.3, 0.7], perturbations of at most 0.2 per pixel).
NUM_CLASSES = 5
_CLASSIFIER = np.random.default_rng(10)
CLASS_WEIGHTS = _CLASSIFIER.normal(size=(PIXELS, NUM_CLASSES)).astype(np.float32)
CLASS_BIAS = (0.1 * _CLASSIFIER.normal(size=NUM_CLASSES)).astype(np.float32)
APGD_EPS = {"linf": 0.03, "l2": 0.2}


def linear_logits(images):
  return images.reshape(images.shape[0], -1) @ CLASS_WEIGHTS + CLASS_BIAS


def closed_form_robust_margin(images, labels, norm):
  """min over j != y of the smallest reachable margin, per example (negative: fooled)."""
  x = np.asarray(images, np.float64).reshape(len(images), -1)
  logits = x @ CLASS_WEIGHTS + CLASS_BIAS
  margins = logits[np.arange(len(x)), labels][:, None] - logits
  differences = CLASS_WEIGHTS.T[labels][:, None, :] - CLASS_WEIGHTS.T[None, :, :]
  dual = np.abs(differences).sum(-1) if norm == "linf" else np.linalg.norm(differences, axis=-1)
  reachable = margins - APGD_EPS[norm] * dual
  reachable[np.arange(len(x)), labels] = np.inf
  return reachable.min(axis=1)


def _linear_set(norm):
  """12 clearly robust and 12 clearly fooled examples (|margin| > 0.3), and one that is
  misclassified clean (its label is not the predicted class)."""
  rng = np.random.default_rng(11)
  candidates = rng.uniform(0.3, 0.7, size=(2000,) + SHAPE[1:]).astype(np.float32)
  labels = np.argmax(linear_logits(candidates), -1)
  margin = closed_form_robust_margin(candidates, labels, norm)
  chosen = np.concatenate([np.nonzero(margin > 0.3)[0][:12], np.nonzero(margin < -0.3)[0][:12]])
  assert len(chosen) == 24
  images, labels = candidates[chosen], labels[chosen]
  labels[0] = (labels[0] + 1) % NUM_CLASSES  # Robust by its margin, but misclassified.
  expected = closed_form_robust_margin(images, labels, norm) > 0
  expected[0] = False
  return jnp.asarray(images), jnp.asarray(labels), expected


@pytest.mark.parametrize("loss,norm", [("ce", "linf"), ("dlr", "linf"), ("ce", "l2")])
def test_apgd_robust_accuracy_equals_the_closed_form_on_a_linear_classifier(loss, norm):
  images, labels, expected = _linear_set(norm)
  eps = APGD_EPS[norm]
  attack = jax.jit(functools.partial(adversarial.apgd, linear_logits, steps=50, loss=loss,
                                     norm=norm))
  adv, robust = attack(images, labels, jax.random.key(12), eps=eps)
  np.testing.assert_array_equal(robust, expected)
  assert float(jnp.mean(robust)) == pytest.approx(11 / 24)

  delta = deltas(adv, images)
  assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
  if norm == "linf":
    assert np.abs(delta).max() <= eps + 1e-6
  else:
    assert np.sqrt(np.sum(np.square(delta), axis=(1, 2, 3))).max() <= eps * (1 + 1e-5)
  # The returned images of fooled examples are misclassified, the others are not.
  still_correct = np.asarray(jnp.argmax(linear_logits(adv), -1) == labels)
  np.testing.assert_array_equal(still_correct, expected)


# APGD-T on a linear classifier whose last two classes have large weights and low
# biases: rarely a top class, but often the easiest to reach. Some examples are then
# fooled only towards a class outside the two highest non-true ones, which tells the
# target choice (and num_targets) apart. The closed form of the robust margin is as above,
# restricted to the attacked targets; eps 0.015 on images in [0.3, 0.7] keeps the box
# from binding.
TARGETED_CLASSES = 6
_TARGETED = np.random.default_rng(0)
TARGETED_WEIGHTS = (_TARGETED.normal(size=(PIXELS, TARGETED_CLASSES))
                    * np.array([1, 1, 1, 1, 6, 6])).astype(np.float32)
TARGETED_BIAS = (-0.5 * TARGETED_WEIGHTS.sum(0) - np.array([0, 0, 0, 0, 1, 1])).astype(
    np.float32)
TARGETED_EPS = 0.015
TARGETED_STEPS = 50


def targeted_linear_logits(images):
  return images.reshape(images.shape[0], -1) @ TARGETED_WEIGHTS + TARGETED_BIAS


def closed_form_targeted_margins(images, labels, num_targets):
  """Per example, the smallest linf-reachable margin z_y - z_t over the `num_targets`
  classes t != y of highest clean logit (negative: a targeted run can fool it)."""
  x = np.asarray(images, np.float64).reshape(len(images), -1)
  logits = x @ TARGETED_WEIGHTS + TARGETED_BIAS
  rows = np.arange(len(x))
  margins = logits[rows, labels][:, None] - logits
  differences = TARGETED_WEIGHTS.T[labels][:, None, :] - TARGETED_WEIGHTS.T[None, :, :]
  reachable = margins - TARGETED_EPS * np.abs(differences).sum(-1)
  others = logits.copy()
  others[rows, labels] = -np.inf
  targets = np.argsort(-others, axis=1, kind="stable")[:, :num_targets]
  return np.take_along_axis(reachable, targets, axis=1).min(axis=1)


@functools.lru_cache(maxsize=None)
def _targeted_set():
  """32 examples, each decided with a clearance of 0.3 in margin: 11 robust to every
  target (the first relabelled, so misclassified clean), 10 fooled towards one of the
  two highest non-true classes, 11 fooled only towards a lower one."""
  rng = np.random.default_rng(11)
  candidates = rng.uniform(0.3, 0.7, size=(4000,) + SHAPE[1:]).astype(np.float32)
  labels = np.argmax(targeted_linear_logits(candidates), -1)
  top2 = closed_form_targeted_margins(candidates, labels, 2)
  every = closed_form_targeted_margins(candidates, labels, TARGETED_CLASSES - 1)
  chosen = np.concatenate([np.nonzero((top2 > 0.3) & (every > 0.3))[0][:11],
                           np.nonzero(top2 < -0.3)[0][:10],
                           np.nonzero((top2 > 0.3) & (every < -0.3))[0][:11]])
  assert len(chosen) == 32
  images, labels = candidates[chosen], labels[chosen]
  labels[0] = (labels[0] + 1) % TARGETED_CLASSES
  return images, labels


def _expected_robust(num_targets):
  images, labels = _targeted_set()
  expected = closed_form_targeted_margins(images, labels, num_targets) > 0
  expected[0] = False
  return expected


# Forward passes of the model, counted by a callback: runs that are skipped make none.
MODEL_CALLS = []


def counted_targeted_logits(images):
  jax.debug.callback(lambda: MODEL_CALLS.append(1))
  return targeted_linear_logits(images)


@functools.lru_cache(maxsize=None)
def _apgd_targeted_attack(num_targets):
  """APGD-T on the targeted classifier, jitted once per target count (and mesh)."""
  return jax.jit(functools.partial(adversarial.apgd_targeted, counted_targeted_logits,
                                   steps=TARGETED_STEPS, num_targets=num_targets))


def _run_apgd_targeted(num_targets, num_devices, images, labels, robust):
  mesh = sharding.make_mesh(jax.devices()[:num_devices])
  images, labels, robust = sharding.shard_batch((images, labels, robust), mesh)
  adv, robust = _apgd_targeted_attack(num_targets)(images, labels, jax.random.key(13),
                                                   eps=TARGETED_EPS, robust=robust)
  assert len(adv.sharding.device_set) == num_devices
  return np.asarray(adv), np.asarray(robust)


@functools.lru_cache(maxsize=None)
def _apgd_targeted_run(num_targets, num_devices):
  """(adversarial, robust) of APGD-T on the targeted set (every example still robust
  before it), its batch sharded over the first `num_devices` devices."""
  images, labels = _targeted_set()
  return _run_apgd_targeted(num_targets, num_devices, images, labels,
                            np.ones(len(labels), bool))


@pytest.mark.parametrize("num_targets,num_devices",
                         [(2, 1), (TARGETED_CLASSES - 1, 1), (TARGETED_CLASSES - 1, 8)])
def test_apgd_targeted_robust_accuracy_equals_the_closed_form(num_targets, num_devices):
  images, labels = _targeted_set()
  adv, robust = _apgd_targeted_run(num_targets, num_devices)
  expected = _expected_robust(num_targets)
  np.testing.assert_array_equal(robust, expected)
  # 11 robust examples less the misclassified one, plus, with only two targets, the
  # 11 fooled only towards a lower class.
  assert int(robust.sum()) == (21 if num_targets == 2 else 10)

  assert adv.dtype == images.dtype and adv.shape == images.shape
  assert np.abs(deltas(adv, images)).max() <= TARGETED_EPS + 1e-6
  still_correct = np.argmax(targeted_linear_logits(adv), -1) == labels
  np.testing.assert_array_equal(still_correct, expected)
  # The example misclassified clean is not attacked: it keeps its clean image.
  np.testing.assert_array_equal(adv[0], images[0])


def test_apgd_targeted_keeps_the_first_fooling_run_and_shards_like_one_device():
  """Runs 0 and 1 of five targets are those of two targets (same targets, same keys):
  an example they fool keeps their image whatever the later runs do. The tolerance:
  identical arithmetic, up to XLA choosing other kernels for other programs or shards
  (float32 rounding of the 48-term logits, far below a pixel step of eps / 8)."""
  fooled_early = ~_apgd_targeted_run(2, 1)[1]
  np.testing.assert_allclose(_apgd_targeted_run(TARGETED_CLASSES - 1, 1)[0][fooled_early],
                             _apgd_targeted_run(2, 1)[0][fooled_early], atol=1e-6)
  np.testing.assert_allclose(_apgd_targeted_run(TARGETED_CLASSES - 1, 8)[0],
                             _apgd_targeted_run(TARGETED_CLASSES - 1, 1)[0], atol=1e-6)


def test_apgd_targeted_attacks_nothing_when_nothing_is_left_to_fool():
  """A batch whose first half is misclassified clean and whose second half earlier
  attacks fooled (`robust=False`) is not attacked: the model runs once, on the clean
  images, and every image comes back unchanged and non-robust. (The same compiled
  attack as the closed-form test's, whose two runs make 1 + 2 x (1 + 50) passes.)"""
  images, labels = _targeted_set()
  half = len(labels) // 2
  labels = np.concatenate([(labels[:half] + 1) % TARGETED_CLASSES, labels[half:]])
  earlier_robust = np.arange(len(labels)) < half
  _apgd_targeted_run(2, 1)  # Compiled and run before counting.
  jax.effects_barrier()
  MODEL_CALLS.clear()
  adv, robust = _run_apgd_targeted(2, 1, images, labels, earlier_robust)
  jax.effects_barrier()
  assert len(MODEL_CALLS) == 1
  assert not robust.any()
  np.testing.assert_array_equal(adv, images)

  MODEL_CALLS.clear()
  _run_apgd_targeted(2, 1, *_targeted_set(), np.ones(len(labels), bool))
  jax.effects_barrier()
  assert len(MODEL_CALLS) == 1 + 2 * (1 + TARGETED_STEPS)


def _numpy_targeted_dlr(logits, labels, targets):
  rows = np.arange(len(logits))
  ordered = np.sort(logits, axis=1)[:, ::-1]
  return -(logits[rows, labels] - logits[rows, targets]) / (
      ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


def test_targeted_dlr_loss_follows_its_definition():
  logits = np.random.default_rng(14).normal(size=(16, 7)).astype(np.float32)
  labels = np.arange(16) % 7
  targets = (labels + 1 + np.arange(16) % 6) % 7
  # float32 logits of size ~1: the ratio is accurate to a few ulps.
  np.testing.assert_allclose(
      adversarial.targeted_dlr_loss(jnp.asarray(logits), jnp.asarray(labels),
                                    jnp.asarray(targets)),
      _numpy_targeted_dlr(logits.astype(np.float64), labels, targets), rtol=1e-5, atol=1e-6)
  # Sorted logits 4 > 3 > 2 > 1 > 0: label 4, target 2: -(4 - 2) / (4 - (2 + 1) / 2).
  np.testing.assert_allclose(
      adversarial.targeted_dlr_loss(jnp.asarray([[0.0, 1, 2, 3, 4]]), jnp.asarray([4]),
                                    jnp.asarray([2])), [-2 / 2.5])


def test_apgd_targeted_refuses_too_few_classes_or_too_many_targets():
  images = _images()
  with pytest.raises(ValueError, match="4 classes"):
    adversarial.apgd_targeted(lambda x: x.reshape(len(x), -1)[:, :3], images,
                              jnp.zeros(8, int), jax.random.key(0), eps=0.1, steps=1)
  with pytest.raises(ValueError, match="num_targets"):
    adversarial.apgd_targeted(lambda x: x.reshape(len(x), -1)[:, :5], images,
                              jnp.zeros(8, int), jax.random.key(0), eps=0.1, steps=1,
                              num_targets=5)
