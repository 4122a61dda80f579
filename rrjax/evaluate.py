"""Evaluation protocol: each image is decoded once, its R corruptions are drawn on device.

The corruption of example `id` in repeat `r` uses the key `fold_in(fold_in(key, r), id)`,
so results do not depend on batch size, device count or host count. Metrics are reported
as mean, standard deviation and standard error over the R repeats.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from rrjax import in_flight, objectives, sharding


def summarize(values: np.ndarray) -> dict[str, float]:
  """Mean, standard deviation (ddof=1) and standard error over repeats."""
  values = np.asarray(values, np.float64)
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return {"mean": float(np.mean(values)), "std": std, "sem": std / math.sqrt(len(values))}


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney U with ties counted one half)."""
  positives, negatives = scores[labels == 1], scores[labels == 0]
  if not len(positives) or not len(negatives):
    raise ValueError("AUC needs both classes among the evaluation labels.")
  greater = (positives[:, None] > negatives[None, :]).sum()
  ties = (positives[:, None] == negatives[None, :]).sum()
  return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, dict]:
  """top-1 (and top-5 with 5+ classes, AUC with 2) in percent / AUC, over repeats.

  Args:
    logits: `[R, N, C]` class scores for R corruption draws of N examples.
    labels: `[N]` integer labels.
  """
  ranks = np.argsort(-logits, axis=-1)
  metrics = {"top1": summarize(100 * np.mean(ranks[..., 0] == labels, axis=1))}
  if logits.shape[-1] >= 5:
    metrics["top5"] = summarize(100 * np.mean(np.any(ranks[..., :5] == labels[:, None], -1), 1))
  if logits.shape[-1] == 2:
    metrics["auc"] = summarize([binary_auc(r[:, 1] - r[:, 0], labels) for r in logits])
  return metrics


def agreement_metrics(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
  """Mean cosine between S(A(x_i)) and R(x_i), and retrieval@1: how often R(x_i) is the
  teacher embedding nearest to S(A(x_i)) among all held-out examples."""
  s = student / np.linalg.norm(student, axis=1, keepdims=True)
  t = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
  nearest = np.concatenate([np.argmax(s[i:i + 1024] @ t.T, axis=1)
                            for i in range(0, len(s), 1024)])
  return {"cosine": float(np.mean(np.sum(s * t, axis=1))),
          "retrieval_at_1": float(np.mean(nearest == np.arange(len(s))))}


@functools.lru_cache(maxsize=64)
def _compiled_draws(output_fn: Callable, program: Callable, repeats: int, replicated):
  """The jitted R-draw function, kept per (output_fn, operator program) so that evaluating
  several models with the same function (e.g. trained and initial student) compiles once,
  and operators that share a program (the five severities of an ImageNet-C corruption)
  too: their level is an argument."""

  def repeated(variables, batch, key, level):
    images = objectives.to_unit_range(batch["image"])

    def one_draw(r):
      keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, r), i))(batch["id"])
      return output_fn(variables, program(level, keys, images), batch).astype(jnp.float32)

    return {"outputs": jax.lax.map(one_draw, jnp.arange(repeats)),
            **{k: batch[k] for k in ("label", "id", "valid")}}

  return jax.jit(repeated, out_shardings=replicated)


def collect_outputs(output_fn: Callable, variables, batches: Iterable[dict], *, mesh,
                    key: jax.Array, repeats: int, operator) -> dict[str, np.ndarray]:
  """Runs `output_fn(variables, corrupted_images01, batch)` on R corruption draws of every
  example (`operator`: a `rrjax.operators.Operator`, each image corrupted alone with its
  own key) and returns {"outputs": [R, N, K], "label": [N], "id": [N]}, sorted by id.

  `batches` are host-local shares of padded global batches with a boolean "valid" mask
  (`rrjax.data.pipeline.eval_batches`); padding rows are dropped here.
  """
  replicated = sharding.replicated(mesh)
  run = _compiled_draws(output_fn, operator.program, repeats, replicated)
  variables = sharding.replicate(variables, mesh)
  key = sharding.replicate(key, mesh)
  level = sharding.replicate(np.int32(operator.level), mesh)

  def dispatch(batch):
    # Traced under the mesh, so that a choice operator groups each device's images
    # (rrjax.operators.mixtures) instead of gathering the batch.
    with jax.set_mesh(mesh):
      return run(variables, sharding.shard_batch(batch, mesh), key, level)

  outputs, labels, ids = [], [], []
  # Replicating outputs of a batch split over several devices is a collective.
  depth = in_flight.default_depth(collectives=mesh.devices.size > 1)
  for result in in_flight.pipelined(batches, dispatch, depth=depth):
    valid = np.asarray(result["valid"], bool)
    outputs.append(result["outputs"][:, valid])
    labels.append(result["label"][valid])
    ids.append(result["id"][valid])
  ids = np.concatenate(ids)
  order = np.argsort(ids, kind="stable")
  return {"outputs": np.concatenate(outputs, axis=1)[:, order],
          "label": np.concatenate(labels)[order], "id": ids[order]}
