"""A converged linear probe: L2-regularised multinomial logistic regression, CLIP style.

The paper's probe (Adam, lr 1e-3, 10 epochs; `rrjax.objectives.probe_loss`) stops long
before the optimum on small label fractions. This is the probe of the CLIP paper
(App. A.3): the same linear classifier fitted to convergence, full batch, with the L2
strength chosen on held-out training features.

With features x_i L2-normalised exactly as `rrjax.objectives.probe_logits` normalises
them, labels y_i and weights w_i (1 for the examples a fit uses, 0 otherwise), the fit
minimises

  f(W, b) = sum_i w_i CE(softmax(x_i W + b), y_i) / sum_i w_i + l2/2 (|W|^2 + |b|^2).

The bias is penalised too: without it softmax's invariance to shifting every bias leaves
the minimiser non-unique, and a class with no training examples would have its bias run
off to -inf. With it f is strictly convex, so the solution does not depend on where the
solver starts.

The solver is L-BFGS (`optax.lbfgs`, zoom line search) in one jitted while loop, in
float32 with matmuls at HIGHEST precision (GPUs otherwise use TF32, whose ~1e-3 relative
error stops L-BFGS far from the optimum). It stops when the gradient norm is at most
`tolerance`, when STALL_ITERS iterations in a row fail to lower the lowest gradient norm
so far (float32 can resolve no more), or after `max_iters` iterations.

Choosing l2: a stratified random `holdout_fraction` of each class's *groups* is held out
(`seed`), where a group is one image and its rows are that image's views (`groups`, e.g.
the example ids): every view of an image sits on one side of the split, so the choice
rewards what generalises to unseen images, not memorising seen ones (views of one image
are near-duplicates). Every grid value is fitted on the rest and scored by accuracy on
the held-out part; the best (ties go to the larger l2, the simpler model) is refitted on
all training features. When the best sits at either end of the values tried, the search
goes on past that end in the grid's own (logarithmic) step until the optimum is
bracketed, as CLIP's protocol does, at most `max_extensions` steps per end;
`LogisticProbe.bracketed` says whether it was.

`LogisticProbe.params` are the parameters of `rrjax.objectives.linear_head` (a flax
`nn.Dense`), so `objectives.probe_logits(probe.params, features, num_classes)` and the
evaluation code that uses it apply the probe unchanged.

Everything runs on the default device, features and all (the whole training set at once).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rrjax import losses
from rrjax.data import subsets

DEFAULT_L2_GRID = tuple(float(l2) for l2 in np.logspace(-6, 0, 13))
# L-BFGS stops after this many iterations without a new lowest gradient norm: float32's
# rounding noise in the gradient is then all that is left, and a `tolerance` below it
# (it grows with the number of parameters) would otherwise run to `max_iters`.
STALL_ITERS = 50


@dataclasses.dataclass(frozen=True)
class LogisticProbe:
  """A fitted probe: head `params` ({"kernel": [dim, C], "bias": [C]}, float32), the chosen
  `l2`, its `holdout_accuracy`, the holdout accuracy of every l2 tried (the grid and its
  extensions), whether the chosen l2 has tried values on both sides (`bracketed`), and
  the number of L-BFGS iterations of the final fit (on all training features)."""
  params: dict[str, np.ndarray]
  l2: float
  holdout_accuracy: float
  holdout_accuracies: dict[float, float]  # Every l2 tried, ascending -> holdout accuracy.
  bracketed: bool
  iterations: int

  def logits(self, features) -> jax.Array:
    """Logits [N, C] of raw (unnormalised) features [N, dim]."""
    return _logits(self.params, losses.l2_normalize(jnp.asarray(features)))


def _logits(params, unit_features: jax.Array) -> jax.Array:
  return jnp.dot(unit_features, params["kernel"],
                 precision=jax.lax.Precision.HIGHEST) + params["bias"]


def _objective(params, unit_features, labels, weights, l2) -> jax.Array:
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
      _logits(params, unit_features), labels)
  penalty = jnp.sum(params["kernel"] ** 2) + jnp.sum(params["bias"] ** 2)
  return jnp.sum(weights * cross_entropy) / jnp.sum(weights) + 0.5 * l2 * penalty


@jax.jit
def _minimise(params, unit_features, labels, weights, l2, max_iters, tolerance):
  """(argmin f from `params`, iterations). Everything is traced, so one compilation
  serves every l2 and every weighting of the same features."""
  value_fn = functools.partial(_objective, unit_features=unit_features, labels=labels,
                               weights=weights, l2=l2)
  solver = optax.lbfgs()
  # Reuses the value and gradient the line search computed at the accepted point.
  value_and_grad = optax.value_and_grad_from_state(value_fn)

  def step(carry):
    params, state, best_grad_norm, since_best, iteration = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                   value_fn=value_fn)
    # The state now holds the gradient at the new params.
    grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
    improved = grad_norm < best_grad_norm
    return (optax.apply_updates(params, updates), state,
            jnp.minimum(grad_norm, best_grad_norm), jnp.where(improved, 0, since_best + 1),
            iteration + 1)

  def keep_going(carry):
    _, state, _, since_best, iteration = carry
    grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))  # 0 before the first step.
    return (iteration == 0) | ((iteration < max_iters) & (grad_norm > tolerance)
                               & (since_best < STALL_ITERS))

  init = (params, solver.init(params), jnp.asarray(jnp.inf, jnp.float32), jnp.asarray(0),
          jnp.asarray(0))
  params, _, _, _, iterations = jax.lax.while_loop(keep_going, step, init)
  return params, iterations


@jax.jit
def _num_correct(params, unit_features, labels, mask) -> jax.Array:
  """How many of the examples in `mask` the probe classifies correctly (an exact count)."""
  correct = jnp.argmax(_logits(params, unit_features), axis=-1) == labels
  return jnp.sum(mask & correct)


def holdout_split(labels: np.ndarray, holdout_fraction: float, seed: int,
                  groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(train row indices, holdout row indices), both sorted. Rows come in `groups` (e.g.
  the views of one image, grouped by its id; None: every row its own group), and whole
  groups are held out: of each class's n groups, round(holdout_fraction * n) drawn at
  random from (seed). A class may end up with no training (or no held-out) groups; an
  empty split is a ValueError, and so is a group whose rows have different labels."""
  if not 0 < holdout_fraction < 1:
    raise ValueError(f"holdout_fraction={holdout_fraction} must be in (0, 1).")
  labels = np.asarray(labels)
  groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
  _, first_row, group_of_row = np.unique(groups, return_index=True, return_inverse=True)
  group_labels = labels[first_row]
  mixed = np.flatnonzero(group_labels[group_of_row] != labels)
  if len(mixed):
    raise ValueError(f"groups: group {groups[mixed[0]]} has rows with labels "
                     f"{sorted(set(labels[groups == groups[mixed[0]]].tolist()))}; the rows "
                     "of one group (one image's views) must share its label.")
  held_groups = subsets.stratified_sample(
      group_labels, lambda n: math.floor(holdout_fraction * n + 0.5),
      np.random.default_rng([seed, 0x686F6C646F7574]))
  held = np.isin(group_of_row, held_groups)
  train, holdout = np.flatnonzero(~held), np.flatnonzero(held)
  if not len(train) or not len(holdout):
    raise ValueError(f"holdout_fraction={holdout_fraction} splits {len(first_row)} groups "
                     f"({len(labels)} rows) into {len(train)} rows for training and "
                     f"{len(holdout)} held out; both need at least one (more examples or "
                     "another fraction).")
  return train, holdout


def _validate(features: np.ndarray, labels: np.ndarray, groups: np.ndarray | None,
              num_classes: int, l2_grid: Sequence[float], max_iters: int,
              max_extensions: int) -> None:
  if features.ndim != 2 or not len(features) or not np.issubdtype(features.dtype,
                                                                   np.floating):
    raise ValueError(f"features must be a non-empty float array [N, dim]; got "
                     f"{features.dtype} {features.shape}.")
  if not np.isfinite(features).all():
    raise ValueError("features hold NaN or infinite values.")
  if labels.shape != (len(features),) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers [{len(features)}] (one per feature row); "
                     f"got {labels.dtype} {labels.shape}.")
  if groups is not None and groups.shape != labels.shape:
    raise ValueError(f"groups must be one id per feature row [{len(features)}]; got "
                     f"{groups.shape}.")
  if num_classes < 2:
    raise ValueError(f"num_classes={num_classes}; a classifier needs at least 2.")
  outside = labels[(labels < 0) | (labels >= num_classes)]
  if len(outside):
    raise ValueError(f"labels {sorted(set(outside.tolist()))[:10]} are outside "
                     f"[0, {num_classes}).")
  if not len(l2_grid) or not all(math.isfinite(l2) and l2 > 0 for l2 in l2_grid):
    raise ValueError(f"l2_grid={tuple(l2_grid)} must be a non-empty list of positive "
                     "L2 strengths.")
  if max_iters < 1:
    raise ValueError(f"max_iters={max_iters} must be at least 1.")
  if max_extensions < 0:
    raise ValueError(f"max_extensions={max_extensions} must be at least 0.")


def _best(accuracies: dict[float, float]) -> float:
  """The l2 of the highest holdout accuracy; ties go to the larger l2 (the simpler model)."""
  return max(accuracies, key=lambda l2: (accuracies[l2], l2))


def fit(features, labels, num_classes: int, *, groups=None,
        l2_grid: Sequence[float] = DEFAULT_L2_GRID, holdout_fraction: float = 0.2,
        seed: int = 0, max_iters: int = 1000, tolerance: float = 1e-6,
        max_extensions: int = 8) -> LogisticProbe:
  """The probe on raw features [N, dim] with integer labels [N] in [0, num_classes), its
  L2 strength chosen on held-out groups of rows (`groups` [N]: e.g. the image id of each
  view; None: rows are independent), starting from `l2_grid` and extending it while the
  best value sits at an end (see the module docstring)."""
  features, labels = np.asarray(features), np.asarray(labels)
  groups = None if groups is None else np.asarray(groups)
  _validate(features, labels, groups, num_classes, list(l2_grid), max_iters, max_extensions)
  grid = sorted({float(l2) for l2 in l2_grid})
  train, holdout = holdout_split(labels, holdout_fraction, seed, groups)
  unit_features = losses.l2_normalize(jnp.asarray(features))
  labels_on_device = jnp.asarray(labels, jnp.int32)
  train_weights = jnp.asarray(np.isin(np.arange(len(labels)), train), jnp.float32)
  holdout_mask = jnp.asarray(np.isin(np.arange(len(labels)), holdout))
  solve = functools.partial(_minimise, unit_features=unit_features, labels=labels_on_device,
                            max_iters=max_iters, tolerance=tolerance)
  solutions, accuracies = {}, {}

  def try_l2(l2, start):
    solutions[l2], _ = solve(start, weights=train_weights, l2=l2)
    accuracies[l2] = int(_num_correct(solutions[l2], unit_features, labels_on_device,
                                      holdout_mask)) / len(holdout)

  params = {"kernel": jnp.zeros((features.shape[1], num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}
  # From the strongest penalty down, each fit starting at the previous solution:
  # neighbours on the regularisation path are close, so this saves iterations.
  for l2 in reversed(grid):
    try_l2(l2, params)
    params = solutions[l2]
  # Past an end of the grid, in the grid's own step there, each fit starting at the
  # end's solution, until the best has a worse value beyond it on both sides.
  if len(grid) > 1:
    steps = {"down": grid[0] / grid[1], "up": grid[-1] / grid[-2]}
    extended = {"down": 0, "up": 0}
    while True:
      best, lowest, highest = _best(accuracies), min(accuracies), max(accuracies)
      end = "up" if best == highest else "down" if best == lowest else None
      if end is None or extended[end] == max_extensions:
        break
      extended[end] += 1
      try_l2(best * steps[end], solutions[best])
  best = _best(accuracies)
  bracketed = min(accuracies) < best < max(accuracies)
  if len(grid) > 1 and not bracketed:
    logging.warning("logistic probe: the best l2=%g is still at the end of the values tried "
                    "(%g to %g) after %d extensions; the optimum may lie further out.",
                    best, min(accuracies), max(accuracies), max_extensions)
  params, iterations = solve(solutions[best], weights=jnp.ones_like(train_weights), l2=best)
  iterations = int(iterations)
  if iterations >= max_iters:
    logging.warning("logistic probe: l2=%g stopped at max_iters=%d before the gradient "
                    "norm reached %g.", best, max_iters, tolerance)
  return LogisticProbe(params=jax.tree.map(np.asarray, params), l2=best,
                       holdout_accuracy=accuracies[best],
                       holdout_accuracies=dict(sorted(accuracies.items())),
                       bracketed=bracketed, iterations=iterations)
