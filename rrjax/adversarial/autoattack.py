"""APGD (Croce & Hein 2020) on cross-entropy or DLR, and AutoAttack's targeted APGD-T."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rrjax.adversarial.ball import TINY, ascent_direction, check_attack, per_example, projection

APGD_LOSSES = ("ce", "dlr")

# Croce & Hein's APGD constants (fra31/auto-attack `APGDAttack`): the initial step is
# 2 * eps, momentum weight 0.75 (the first step has none), and the checkpoints at which
# the step may be halved sit at fractions of the budget: the first after 22% of the
# steps, then windows shrinking by 3% of the budget each time, to no less than 6%.
_APGD_INITIAL_STEP = 2.0
_APGD_MOMENTUM = 0.75
_APGD_FIRST_WINDOW = 0.22
_APGD_WINDOW_DECREASE = 0.03
_APGD_MIN_WINDOW = 0.06


def dlr_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Croce & Hein's Difference of Logits Ratio, per example (higher = more fooled):

    -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)

  with z_pi1 >= z_pi2 >= z_pi3 the largest logits. Invariant to shifting and scaling the
  logits, so it does not saturate like cross-entropy. Needs at least 3 classes.
  """
  if logits.shape[-1] < 3:
    raise ValueError(
        f"the DLR loss needs at least 3 classes (it divides by z_pi1 - z_pi3); got "
        f"logits of shape {logits.shape}. Use loss='ce'.")
  logits = logits.astype(jnp.float32)
  top3 = jax.lax.top_k(logits, 3)[0]
  correct = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  best_other = jnp.where(jnp.argmax(logits, -1) == labels, top3[:, 1], top3[:, 0])
  return -(correct - best_other) / (top3[:, 0] - top3[:, 2] + 1e-12)


def _apgd_loss(kind: str):
  if kind == "ce":
    return lambda logits, labels: optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels)
  return dlr_loss


def targeted_dlr_loss(logits: jax.Array, labels: jax.Array,
                      targets: jax.Array) -> jax.Array:
  """Croce & Hein's targeted DLR loss, per example (higher = closer to the target):

    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)

  for true class y, target t and z_pi1 >= z_pi2 >= ... the sorted logits
  (fra31/auto-attack `APGDAttack_targeted.dlr_loss_targeted`). Needs at least 4 classes.
  """
  if logits.shape[-1] < 4:
    raise ValueError(
        f"the targeted DLR loss needs at least 4 classes (it divides by z_pi1 - (z_pi3 + "
        f"z_pi4) / 2); got logits of shape {logits.shape}. Use apgd with loss='ce'.")
  logits = logits.astype(jnp.float32)
  top4 = jax.lax.top_k(logits, 4)[0]
  correct = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  target = jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]
  return -(correct - target) / (top4[:, 0] - 0.5 * (top4[:, 2] + top4[:, 3]) + 1e-12)


def apgd_checkpoints(steps: int) -> np.ndarray:
  """`[steps]` ints: at iteration i (0-based), the length of the window that ends there
  when i is a checkpoint, else 0. Croce & Hein's p_j, in fra31/auto-attack's integers:
  the first window is max(int(0.22 n), 1) steps, each next one max(int(0.03 n), 1)
  shorter but at least max(int(0.06 n), 1)."""
  first = max(int(_APGD_FIRST_WINDOW * steps), 1)
  decrease = max(int(_APGD_WINDOW_DECREASE * steps), 1)
  minimum = max(int(_APGD_MIN_WINDOW * steps), 1)
  windows = np.zeros(steps, np.int32)
  i, window = first - 1, first
  while i < steps:
    windows[i] = window
    window = max(window - decrease, minimum)
    i += window
  return windows


def apgd(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
         labels: jax.Array, key: jax.Array, *, eps, steps: int = 100, loss: str = "ce",
         norm: str = "linf", rho=0.75) -> tuple[jax.Array, jax.Array]:
  """APGD (Croce & Hein 2020, Algorithm 1), one random restart, untargeted.

  From a random point on the sphere of radius eps (fra31/auto-attack's start), gradient
  steps with momentum 0.75 on `loss`, per example: the step starts at 2 * eps and is
  halved at a checkpoint (`apgd_checkpoints`) when fewer than a fraction `rho` of the
  steps since the last checkpoint increased the loss, or when the step was not halved
  at the last checkpoint and the best loss has not improved since; a halved example
  restarts from its best point.

  Args:
    logits_fn: `images [B, H, W, C] -> logits [B, K]` (K >= 3 for loss="dlr").
    images: clean float images in [0, 1].
    labels: int `[B]` true classes.
    key: the random start's key.
    eps: the radius of the linf or l2 ball, a float or a traced scalar.
    steps: iterations, static (the paper: 100).
    loss: "ce" (cross-entropy) or "dlr" (`dlr_loss`).
    norm: "linf" or "l2".
    rho: the oscillation threshold of the step-size rule (the paper: 0.75).

  Returns:
    `(adversarial, robust)`: `robust` is a bool `[B]`, True where the prediction was
    correct on the clean image and on every point the attack visited (robust accuracy
    is its mean); `adversarial` holds, per example, the last misclassified point seen
    (the clean image when only it was misclassified) where not robust, else the point
    of highest loss. All within the eps-ball and [0, 1], with `stop_gradient` applied.
  """
  check_attack(images, norm, steps)
  if loss not in APGD_LOSSES:
    raise ValueError(f"loss={loss!r} is not supported by apgd; use one of {APGD_LOSSES}.")
  criterion = _apgd_loss(loss)
  images = jax.lax.stop_gradient(images)
  clean_logits = logits_fn(images)
  if loss == "dlr":
    criterion(clean_logits, labels)  # Raises at trace time for fewer than 3 classes.
  clean_correct = jnp.argmax(clean_logits, -1) == labels
  adversarial, robust = _apgd_run(logits_fn, criterion, images, labels, clean_correct, key,
                                  eps=eps, steps=steps, norm=norm, rho=rho)
  return jax.lax.stop_gradient(adversarial), robust


def apgd_targeted(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
                  labels: jax.Array, key: jax.Array, *, eps, steps: int = 100,
                  num_targets: int = 9, norm: str = "linf", rho=0.75,
                  robust: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """APGD-T (Croce & Hein 2020; AutoAttack's "apgd-t", fra31/auto-attack
  `APGDAttack_targeted` with one restart): `apgd` on `targeted_dlr_loss`, once for each
  of the `num_targets` classes other than the true one with the highest clean logits
  (highest first), each run from its own random start (`fold_in(key, r)` for run r).

  As in AutoAttack, an example misclassified on its clean image is not attacked (it
  keeps its clean image), and an example fooled by a run is not attacked by the later
  ones: it keeps that run's adversarial image. Once every example of the batch is
  fooled, the remaining runs are skipped (their cost too). AutoAttack runs APGD-T only
  on the examples APGD-CE left robust: pass `apgd`'s `robust` as `robust` to do the same
  (a batch APGD-CE fooled entirely then costs one forward pass here).

  Args:
    logits_fn, images, labels, key, eps, steps, norm, rho: as for `apgd`; K >= 4 classes.
    num_targets: the number of target classes, static, at most K - 1 (AutoAttack: 9).
    robust: optional bool `[B]`, the examples still robust to earlier attacks; the
      others are not attacked (they keep their clean image and stay non-robust).

  Returns:
    `(adversarial, robust)` as for `apgd`: `robust` is True where the prediction stayed
    correct on the clean image and on every point of every run (and, given `robust`,
    where that was True); `adversarial` is, where not robust, the clean image (not
    attacked) or the first fooling run's last misclassified point, and where robust the
    highest-loss point of the last run.
  """
  check_attack(images, norm, steps)
  images = jax.lax.stop_gradient(images)
  clean_logits = logits_fn(images).astype(jnp.float32)
  num_classes = clean_logits.shape[-1]
  if num_classes < 4:
    raise ValueError(
        f"apgd_targeted needs at least 4 classes (the targeted DLR loss); got logits of "
        f"shape {clean_logits.shape}. Use apgd with loss='ce' alone, as AutoAttack does.")
  if (isinstance(num_targets, bool) or not isinstance(num_targets, (int, np.integer))
      or not 1 <= num_targets <= num_classes - 1):
    raise ValueError(
        f"num_targets={num_targets!r} must be a static integer from 1 to the number of "
        f"classes - 1 = {num_classes - 1}.")
  others = jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool), -jnp.inf, clean_logits)
  targets = jax.lax.top_k(others, num_targets)[1]  # [B, num_targets], highest first.

  def attack_target(carry, run):
    adversarial, still_robust = carry

    def attack():
      def criterion(logits, labels):
        return targeted_dlr_loss(logits, labels, targets[:, run])

      # `still_robust` as the clean correctness: an example fooled by an earlier run
      # (or not to be attacked) is already decided, whatever this run does.
      run_adversarial, run_robust = _apgd_run(
          logits_fn, criterion, images, labels, still_robust, jax.random.fold_in(key, run),
          eps=eps, steps=steps, norm=norm, rho=rho)
      return (jnp.where(per_example(still_robust), run_adversarial, adversarial),
              run_robust)

    return jax.lax.cond(jnp.any(still_robust), attack, lambda: carry), None

  to_attack = jnp.argmax(clean_logits, -1) == labels
  if robust is not None:
    to_attack &= robust
  (adversarial, still_robust), _ = jax.lax.scan(attack_target, (images, to_attack),
                                                jnp.arange(num_targets))
  return jax.lax.stop_gradient(adversarial), still_robust


def _apgd_run(logits_fn, criterion, images, labels, clean_correct, key, *, eps,
              steps: int, norm: str, rho) -> tuple[jax.Array, jax.Array]:
  """One APGD run on the per-example loss `criterion(logits, labels) -> [B]`: `apgd`'s
  algorithm and return convention, with `clean_correct` the clean images' correctness."""
  project = projection(norm)

  def value_and_grad(x):
    def total(x):
      logits = logits_fn(x)
      per_example = criterion(logits, labels)
      return jnp.sum(per_example), (per_example, jnp.argmax(logits, -1) == labels)

    (_, (values, correct)), grad = jax.value_and_grad(total, has_aux=True)(x)
    return values, correct, grad

  if norm == "linf":
    start = jax.random.uniform(key, images.shape, images.dtype, -1.0, 1.0)
    start = start / per_example(jnp.maximum(jnp.max(jnp.abs(start), axis=(1, 2, 3)), TINY))
  else:
    start = ascent_direction(jax.random.normal(key, images.shape, images.dtype), "l2")
  adv = project(images + eps * start, images, eps)
  values, correct, grad = value_and_grad(adv)
  batch = images.shape[0]
  # loss_history[0] is the start's loss, loss_history[i + 1] the loss after step i: the
  # oscillation test counts increases f(x_{k+1}) > f(x_k) over a window.
  state = dict(
      adv=adv, previous=adv, grad=grad,
      step=jnp.full((batch,), _APGD_INITIAL_STEP * eps, images.dtype),
      best=adv, best_grad=grad, best_loss=values,
      # Where the start is classified correctly, the clean image: misclassified when
      # the clean prediction is wrong, and replaced by any later misclassified point.
      last_wrong=jnp.where(per_example(correct), images, adv),
      robust=clean_correct & correct,
      loss_history=jnp.zeros((steps + 1, batch), values.dtype).at[0].set(values),
      best_loss_at_check=values, halved_at_check=jnp.ones((batch,), bool))
  windows = jnp.asarray(apgd_checkpoints(steps))

  def iteration(i, s):
    eta = per_example(s["step"])
    momentum = jnp.where(i > 0, _APGD_MOMENTUM, 1.0)
    z = project(s["adv"] + eta * ascent_direction(s["grad"], norm), images, eps)
    new = project(s["adv"] + momentum * (z - s["adv"])
                  + (1 - momentum) * (s["adv"] - s["previous"]), images, eps)
    values, correct, grad = value_and_grad(new)
    robust = s["robust"] & correct
    last_wrong = jnp.where(per_example(correct), s["last_wrong"], new)
    improved = values > s["best_loss"]
    best = jnp.where(per_example(improved), new, s["best"])
    best_grad = jnp.where(per_example(improved), grad, s["best_grad"])
    best_loss = jnp.where(improved, values, s["best_loss"])
    history = s["loss_history"].at[i + 1].set(values)

    window = windows[i]
    increases = history[1:] > history[:-1]  # increases[m]: did step m raise the loss?
    in_window = (jnp.arange(steps) > i - window) & (jnp.arange(steps) <= i)
    count = jnp.sum(increases & in_window[:, None], axis=0)
    oscillating = count <= window * rho
    stalled = ~s["halved_at_check"] & (s["best_loss_at_check"] >= best_loss)
    checkpoint = window > 0
    halve = checkpoint & (oscillating | stalled)
    return dict(
        adv=jnp.where(per_example(halve), best, new),
        previous=s["adv"],
        grad=jnp.where(per_example(halve), best_grad, grad),
        step=jnp.where(halve, s["step"] / 2, s["step"]),
        best=best, best_grad=best_grad, best_loss=best_loss,
        last_wrong=last_wrong, robust=robust, loss_history=history,
        best_loss_at_check=jnp.where(checkpoint, best_loss, s["best_loss_at_check"]),
        halved_at_check=jnp.where(checkpoint, halve, s["halved_at_check"]))

  s = jax.lax.fori_loop(0, steps, iteration, state)
  return jnp.where(per_example(s["robust"]), s["best"], s["last_wrong"]), s["robust"]
