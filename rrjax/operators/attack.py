"""The adversarial kind pgd: an attack on the student's training loss (rrjax.operators)."""

from __future__ import annotations

import jax.numpy as jnp

from rrjax import adversarial
from rrjax.operators.core import Operator, check_images


def pgd(eps: float, steps: int, step_size: float | None, norm: str, loss: str,
        where: str) -> Operator:
  step = step_size if step_size is not None else 2.5 * eps / max(steps, 1)

  def batch(rng, images, loss_fn=None):
    check_images(images)
    if loss_fn is None:
      raise ValueError(
          f"operator field '{where}.kind' is 'pgd', an attack on the student's training "
          "loss: it runs only inside the student stage, which passes it the student. Where "
          "no model is trained (the probe and baseline stages, eval.operators, tools) use "
          "natural operators, e.g. eval.operators=({'kind': 'identity'},); fit probes in a "
          "second run with student.restore_from (configs/adversarial.py:student=WORKDIR).")
    attacked = adversarial.pgd(lambda x: loss_fn(x, loss), images.astype(jnp.float32), rng,
                               eps=eps, steps=steps, step_size=step, norm=norm)
    return attacked.astype(images.dtype)

  # Corrupting images one by one (evaluation) has no training loss to attack: the keyed
  # form raises the message above.
  return Operator(batch, lambda keys, images: batch(None, images), adversarial=True)
