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

Choosing l2: a stratified random `holdout_fraction` of each class is held out (`seed`);
every grid value is fitted on the rest and scored by accuracy on the held-out part; the
best (ties go to the larger l2, the simpler model) is refitted on all training features.
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
  `l2`, its `holdout_accuracy`, every grid value's holdout accuracy and the number of
  L-BFGS iterations of the final fit (on all training features)."""
  params: dict[str, np.ndarray]
  l2: float
  holdout_accuracy: float
  holdout_accuracies: dict[float, float]  # Grid l2 -> holdout accuracy.
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


def holdout_split(labels: np.ndarray, holdout_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, holdout indices), both sorted: of each class's n examples,
  round(holdout_fraction * n) drawn at random from (seed) are held out. A class may end
  up with no training (or no held-out) examples; an empty split is a ValueError."""
  if not 0 < holdout_fraction < 1:
    raise ValueError(f"holdout_fraction={holdout_fraction} must be in (0, 1).")
  labels = np.asarray(labels)
  holdout = subsets.stratified_sample(labels, lambda n: math.floor(holdout_fraction * n + 0.5),
                                      np.random.default_rng([seed, 0x686F6C646F7574]))
  train = np.setdiff1d(np.arange(len(labels)), holdout)
  if not len(train) or not len(holdout):
    raise ValueError(f"holdout_fraction={holdout_fraction} splits {len(labels)} examples "
                     f"into {len(train)} for training and {len(holdout)} held out; both "
                     "need at least one (more examples or another fraction).")
  return train, holdout


def _validate(features: np.ndarray, labels: np.ndarray, num_classes: int,
              l2_grid: Sequence[float], max_iters: int) -> None:
  if features.ndim != 2 or not len(features) or not np.issubdtype(features.dtype,
                                                                   np.floating):
    raise ValueError(f"features must be a non-empty float array [N, dim]; got "
                     f"{features.dtype} {features.shape}.")
  if not np.isfinite(features).all():
    raise ValueError("features hold NaN or infinite values.")
  if labels.shape != (len(features),) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers [{len(features)}] (one per feature row); "
                     f"got {labels.dtype} {labels.shape}.")
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


def fit(features, labels, num_classes: int, *, l2_grid: Sequence[float] = DEFAULT_L2_GRID,
        holdout_fraction: float = 0.2, seed: int = 0, max_iters: int = 1000,
        tolerance: float = 1e-6) -> LogisticProbe:
  """The probe on raw features [N, dim] with integer labels [N] in [0, num_classes), its
  L2 strength chosen from `l2_grid` on a held-out part (see the module docstring)."""
  features, labels = np.asarray(features), np.asarray(labels)
  l2_grid = [float(l2) for l2 in l2_grid]
  _validate(features, labels, num_classes, l2_grid, max_iters)
  train, holdout = holdout_split(labels, holdout_fraction, seed)
  unit_features = losses.l2_normalize(jnp.asarray(features))
  labels_on_device = jnp.asarray(labels, jnp.int32)
  train_weights = jnp.asarray(np.isin(np.arange(len(labels)), train), jnp.float32)
  holdout_mask = jnp.asarray(np.isin(np.arange(len(labels)), holdout))
  solve = functools.partial(_minimise, unit_features=unit_features, labels=labels_on_device,
                            max_iters=max_iters, tolerance=tolerance)

  params = {"kernel": jnp.zeros((features.shape[1], num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}
  solutions, accuracies = {}, {}
  # From the strongest penalty down, each fit starting at the previous solution:
  # neighbours on the regularisation path are close, so this saves iterations.
  for l2 in sorted(set(l2_grid), reverse=True):
    params, _ = solve(params, weights=train_weights, l2=l2)
    solutions[l2] = params
    accuracies[l2] = int(_num_correct(params, unit_features, labels_on_device,
                                      holdout_mask)) / len(holdout)
  # max keeps the first of equals, and the dict runs from the largest l2 down.
  best = max(accuracies, key=accuracies.get)
  params, iterations = solve(solutions[best], weights=jnp.ones_like(train_weights), l2=best)
  iterations = int(iterations)
  if iterations >= max_iters:
    logging.warning("logistic probe: l2=%g stopped at max_iters=%d before the gradient "
                    "norm reached %g.", best, max_iters, tolerance)
  return LogisticProbe(params=jax.tree.map(np.asarray, params), l2=best,
                       holdout_accuracy=accuracies[best],
                       holdout_accuracies={l2: accuracies[l2] for l2 in l2_grid},
                       iterations=iterations)
