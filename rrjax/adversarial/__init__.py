"""Adversarial attacks on float images in [0, 1], as pure, jittable JAX functions.

Three attacks, all on batches `[B, H, W, C]`, all per example (each example has its
own perturbation delta, its own ball ||delta|| <= eps around its clean image, and the
result is always clipped to [0, 1]):

  pgd(loss_fn, images, key, eps=, steps=, step_size=, norm=)
      Projected gradient ascent (Madry et al. 2018) on per-example losses
      `loss_fn(images) -> [B]`: linf takes sign steps and clips delta to [-eps, eps];
      l2 takes steps along the per-example unit gradient and rescales delta onto the
      l2 ball. This is the inner maximisation of adversarial fine-tuning of CLIP
      encoders: FARE (Schlarmann et al. 2024, "Robust CLIP", chs20/RobustVLM: the
      student's squared L2 distance to the frozen encoder's clean embedding, linf
      eps 4/255 or 2/255, 10 steps of 1/255) and TeCoA (Mao et al. 2023: the CLIP
      contrastive loss against text embeddings). `loss_fn` closes over whatever it
      needs (the current student parameters, the cached teacher target); the result
      is wrapped in `stop_gradient`, so a training step that calls `pgd` inside
      `jax.grad` gets the gradient of its loss at the perturbed images, with no
      gradient through the attack itself.

  apgd(logits_fn, images, labels, key, eps=, steps=, loss=, norm=)
      APGD of Croce & Hein 2020 ("Reliable evaluation of adversarial robustness with
      an ensemble of diverse parameter-free attacks", ICML; fra31/auto-attack), one
      restart, untargeted, on cross-entropy or the DLR loss, to evaluate a classifier:
      it returns the adversarial images and, per example, whether the prediction is
      still correct on every point the attack visited (the clean image included).

  apgd_targeted(logits_fn, images, labels, key, eps=, steps=, num_targets=, norm=)
      AutoAttack's APGD-T: APGD on the targeted DLR loss, one run per target class
      (the `num_targets` highest non-true classes of the clean logits), the same
      return convention; an example is fooled when any run fooled it. With `apgd` on
      cross-entropy it makes the attack pair of RobustBench and FARE's zero-shot tables.

The gradient of an attack is that of the SUM of the per-example losses, so as long as
`loss_fn`'s i-th value depends only on the i-th image (a model in inference mode:
no batch statistics) each example is attacked independently of the others, and a
batch sharded over a device mesh gives the same perturbations as on one device.
`steps` (and `norm`, `loss`, `num_targets`) are static; `eps`, `step_size` and `rho` may be traced.
"""

from __future__ import annotations

from rrjax.adversarial.autoattack import (APGD_LOSSES, apgd, apgd_checkpoints, apgd_targeted,
                                          dlr_loss, targeted_dlr_loss)
from rrjax.adversarial.ball import NORMS, project_l2, project_linf
from rrjax.adversarial.projected_gradient import pgd

__all__ = ["APGD_LOSSES", "NORMS", "apgd", "apgd_checkpoints", "apgd_targeted", "dlr_loss", "pgd",
           "project_l2", "project_linf", "targeted_dlr_loss"]
