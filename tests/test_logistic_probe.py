"""The converged linear probe (rrjax.logistic_probe) against an independent reference:
the same objective written in float64 numpy and minimised by scipy's L-BFGS-B.

Every problem has the same shape (N, D, C), so the jitted solver compiles once.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

from rrjax import logistic_probe, objectives

N, D, C = 120, 24, 4


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _objective_and_gradient(theta, features, labels, l2):
  """mean CE(softmax(x W + b)) + l2/2 |theta|^2 on L2-normalised x, theta = (W, b)."""
  x = _unit(np.asarray(features, np.float64))
  kernel, bias = theta[:D * C].reshape(D, C), theta[D * C:]
  logits = x @ kernel + bias
  logits -= logits.max(axis=1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  onehot = np.eye(C)[labels]
  residual = (np.exp(log_probs) - onehot) / len(x)
  value = -(onehot * log_probs).sum() / len(x) + 0.5 * l2 * theta @ theta
  gradient = np.concatenate([(x.T @ residual).ravel(), residual.sum(axis=0)]) + l2 * theta
  return value, gradient


def _reference_fit(features, labels, l2):
  result = scipy.optimize.minimize(
      _objective_and_gradient, np.zeros(D * C + C), args=(features, labels, l2), jac=True,
      method="L-BFGS-B", options=dict(maxiter=10_000, ftol=1e-15, gtol=1e-12))
  assert result.success, result.message
  return result.x[:D * C].reshape(D, C), result.x[D * C:]


def _theta(params):
  return np.concatenate([params["kernel"].ravel(), params["bias"]]).astype(np.float64)


def _noisy_linear_problem(seed):
  """Labels from a random linear model plus Gumbel noise: not separable, so the L2
  strength matters."""
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(N, D)).astype(np.float32)
  labels = np.argmax(0.3 * features @ rng.normal(size=(D, C)) + rng.gumbel(size=(N, C)), -1)
  return features, labels


@pytest.fixture(scope="module")
def problem():
  return _noisy_linear_problem(0)


@pytest.fixture(scope="module")
def probe(problem):
  return logistic_probe.fit(*problem, C, l2_grid=(3e-3,))


def test_solution_matches_scipy_on_the_same_objective(problem, probe):
  kernel, bias = _reference_fit(*problem, 3e-3)
  assert probe.l2 == 3e-3 and probe.params["kernel"].shape == (D, C)
  scale = np.abs(kernel).max()
  np.testing.assert_allclose(probe.params["kernel"], kernel, atol=1e-4 * scale)
  np.testing.assert_allclose(probe.params["bias"], bias, atol=1e-4 * scale)


def test_gradient_vanishes_at_the_solution(problem, probe):
  _, gradient = _objective_and_gradient(_theta(probe.params), *problem, 3e-3)
  _, gradient_at_zero = _objective_and_gradient(np.zeros(D * C + C), *problem, 3e-3)
  assert np.linalg.norm(gradient) < 1e-5 < 1e-2 < np.linalg.norm(gradient_at_zero)
  assert 0 < probe.iterations < 1000


def test_params_are_an_objectives_probe_head(problem, probe):
  features = problem[0] * 7  # Raw features: both sides normalise them.
  ours = probe.logits(features)
  np.testing.assert_allclose(objectives.probe_logits(probe.params, features, C), ours,
                             atol=1e-5)
  np.testing.assert_allclose(ours, _unit(features) @ probe.params["kernel"]
                             + probe.params["bias"], atol=1e-5)


def test_l2_is_chosen_by_holdout_accuracy_and_refitted_on_everything():
  features, labels = _noisy_linear_problem(0)
  grid = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
  probe = logistic_probe.fit(features, labels, C, l2_grid=grid, holdout_fraction=0.25,
                             seed=3)
  train, holdout = logistic_probe.holdout_split(labels, 0.25, 3)
  accuracies = {}
  for l2 in grid:
    kernel, bias = _reference_fit(features[train], labels[train], l2)
    predictions = np.argmax(_unit(features[holdout]) @ kernel + bias, axis=-1)
    accuracies[l2] = np.mean(predictions == labels[holdout])
  assert {l2: probe.holdout_accuracies[l2] for l2 in grid} == accuracies
  best = max(accuracies.values())
  assert len(set(accuracies.values())) > 2 and best > accuracies[grid[0]] > 0
  # The best grid value is interior here, so the grid needed no extension.
  assert probe.bracketed and list(probe.holdout_accuracies) == list(grid)
  # Ties go to the larger l2.
  assert probe.l2 == max(l2 for l2 in grid if accuracies[l2] == best)
  assert probe.holdout_accuracy == best
  kernel, bias = _reference_fit(features, labels, probe.l2)
  np.testing.assert_allclose(_theta(probe.params), np.concatenate([kernel.ravel(), bias]),
                             atol=1e-4 * np.abs(kernel).max())


def test_holdout_split_is_stratified_and_seeded():
  labels = np.repeat(np.arange(4), [10, 5, 1, 2])
  train, holdout = logistic_probe.holdout_split(labels, 0.2, seed=0)
  assert np.bincount(labels[holdout], minlength=4).tolist() == [2, 1, 0, 0]
  assert sorted(np.concatenate([train, holdout]).tolist()) == list(range(18))
  assert (np.diff(train) > 0).all() and (np.diff(holdout) > 0).all()
  again, other = (logistic_probe.holdout_split(labels, 0.2, seed=s)[1] for s in (0, 1))
  np.testing.assert_array_equal(again, holdout)
  draws = {tuple(logistic_probe.holdout_split(labels, 0.2, seed=s)[1]) for s in range(8)}
  assert len(draws) > 4
  # 0.75 of one example rounds to 1: class 2 keeps no training example, which is allowed.
  train, _ = logistic_probe.holdout_split(labels, 0.75, seed=0)
  assert 2 not in labels[train]
  with pytest.raises(ValueError, match="0 held out"):
    logistic_probe.holdout_split(np.array([0, 1, 1]), 0.2, seed=0)
  with pytest.raises(ValueError, match=r"holdout_fraction=1\.0 must be in \(0, 1\)"):
    logistic_probe.holdout_split(labels, 1.0, seed=0)


def test_holdout_split_keeps_each_group_on_one_side():
  # 10 images of class 0, 5 of class 1, each with 3 views (rows), in shuffled row order.
  image_labels = np.repeat([0, 1], [10, 5])
  groups = np.random.default_rng(0).permutation(np.repeat(np.arange(15), 3))
  labels = image_labels[groups]
  train, holdout = logistic_probe.holdout_split(labels, 0.2, seed=0, groups=groups)
  assert sorted(np.concatenate([train, holdout]).tolist()) == list(range(45))
  assert not set(groups[train]) & set(groups[holdout])
  held_images = np.unique(groups[holdout])
  # round(0.2 * 10) = 2 images of class 0 and round(0.2 * 5) = 1 of class 1, all 3 views.
  assert np.bincount(image_labels[held_images]).tolist() == [2, 1] and len(holdout) == 9
  with pytest.raises(ValueError, match="group 7 has rows with labels"):
    logistic_probe.holdout_split(np.where(np.arange(45) == np.argmax(groups == 7), 1 - labels,
                                          labels), 0.2, seed=0, groups=groups)


def test_memorised_images_do_not_win_the_l2_choice():
  """Each image's views are near-duplicates and its label is random: nothing generalises
  to unseen images. Held out by image, accuracy is near chance (25%); held out by row, a
  view's near-twins are in the training part and a memorising fit scores near 100%."""
  rng = np.random.default_rng(0)
  num_images, views, dim = 200, 3, 256
  image_features = rng.normal(size=(num_images, dim))
  image_labels = rng.integers(0, C, num_images)
  groups = np.repeat(np.arange(num_images), views)
  features = (image_features[groups] + 0.01 * rng.normal(size=(len(groups), dim))
              ).astype(np.float32)
  labels = image_labels[groups]
  fit = lambda groups: logistic_probe.fit(features, labels, C, groups=groups,
                                          l2_grid=(1e-5, 1e-3, 1e-1), max_iters=200,
                                          max_extensions=2)
  by_image, by_row = fit(groups), fit(None)
  # 40 held-out images: chance is 0.25 with a standard deviation of 0.07; 0.45 leaves
  # room for taking the best of the values tried.
  assert by_image.holdout_accuracy < 0.45, by_image.holdout_accuracies
  assert by_row.holdout_accuracy > 0.9 and by_row.l2 < by_image.l2, by_row.holdout_accuracies


def test_grid_extends_until_the_best_l2_is_bracketed(problem):
  grid = (1e-7, 1e-6)
  probe = logistic_probe.fit(*problem, C, l2_grid=grid)
  tried = list(probe.holdout_accuracies)
  # Upwards in the grid's own step (x10 here) from its top, until a worse value lies above.
  np.testing.assert_allclose(tried, [1e-7 * 10**k for k in range(len(tried))], rtol=1e-9)
  assert len(tried) > 3 and probe.bracketed and tried[0] < probe.l2 < tried[-1]
  assert probe.holdout_accuracy == max(probe.holdout_accuracies.values())
  assert probe.holdout_accuracies[tried[-1]] < probe.holdout_accuracy
  unextended = logistic_probe.fit(*problem, C, l2_grid=grid, max_extensions=0)
  assert list(unextended.holdout_accuracies) == list(grid) and not unextended.bracketed


def _anisotropic_problem(seed, n):
  """Classes spaced 0.3 apart along a quiet direction and 0.5 apart along one with noise
  std 2: nearly separable, but not along the class means."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % C
  features = 0.05 * rng.normal(size=(n, D))
  features[:, 0] = 4.0  # A common component, so normalising keeps the geometry linear.
  features[:, 1] += 2.0 * rng.normal(size=n) + 0.5 * labels
  features[:, 2] += 0.3 * labels
  return features.astype(np.float32), labels


def test_beats_the_papers_underfit_probe():
  features, labels = _anisotropic_problem(0, N)
  test_features, test_labels = _anisotropic_problem(1, 400)
  probe = logistic_probe.fit(features, labels, C)
  # The paper's probe: Adam at lr 1e-3 for 10 epochs of batch 8, from flax's initialisation.
  params = objectives.linear_head(C).init(jax.random.key(0), jnp.zeros((1, D)))["params"]
  adam = optax.adam(1e-3)
  state = adam.init(params)

  @jax.jit
  def step(params, state, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        objectives.probe_logits(p, x, C), y).mean()
    updates, state = adam.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  rng = np.random.default_rng(0)
  for _ in range(10):
    order = rng.permutation(N)
    for start in range(0, N, 8):
      batch = order[start:start + 8]
      params, state = step(params, state, features[batch], labels[batch])
  accuracy = lambda logits: np.mean(np.argmax(logits, axis=-1) == test_labels)
  probe_accuracy = accuracy(probe.logits(test_features))
  baseline_accuracy = accuracy(objectives.probe_logits(params, test_features, C))
  assert probe_accuracy > 0.9 and baseline_accuracy < 0.5


@pytest.mark.parametrize("change, message", [
    (dict(features=np.zeros((N, D, 1), np.float32)), r"float array \[N, dim\]"),
    (dict(features=np.full((N, D), np.nan, np.float32)), "NaN"),
    (dict(labels=np.zeros(N - 1, np.int64)), r"integers \[120\]"),
    (dict(labels=np.zeros(N, np.float32)), "integers"),
    (dict(labels=np.full(N, C)), r"labels \[4\] are outside \[0, 4\)"),
    (dict(num_classes=1), "at least 2"),
    (dict(l2_grid=()), "non-empty"),
    (dict(l2_grid=(1e-3, 0.0)), "positive"),
    (dict(holdout_fraction=0.0), "holdout_fraction"),
    (dict(max_iters=0), "max_iters"),
    (dict(max_extensions=-1), "max_extensions"),
    (dict(groups=np.zeros(N - 1, np.int64)), r"groups must be one id per feature row"),
])
def test_bad_inputs_are_named(problem, change, message):
  arguments = dict(features=problem[0], labels=problem[1], num_classes=C)
  arguments.update(change)
  with pytest.raises(ValueError, match=message):
    logistic_probe.fit(**arguments)
