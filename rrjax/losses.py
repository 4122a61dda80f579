"""The contrastive loss family of SPEC §2, over the global batch.

All losses take unnormalised student and teacher embeddings `[N, D]` (any float dtype),
L2-normalise them in float32, and return a float32 scalar. Teacher embeddings are fixed
targets: `stop_gradient` makes the student the only thing that receives gradients.

Under `jax.jit` with the batch sharded over a device mesh, the N x N similarity matrices
are global (jit's semantics are those of one big device; XLA inserts the all-gathers),
so every example sees the whole global batch as negatives and the value equals the
single-device one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS = ("student_teacher", "student_student", "student_both", "nt_xent", "mse")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _without_diagonal(logits: jax.Array) -> jax.Array:
  """Sets the diagonal to -inf so it drops out of a log-sum-exp."""
  return jnp.where(jnp.eye(logits.shape[0], dtype=bool), -jnp.inf, logits)


# Each returns the loss of every anchor: `[N]`, or `[2N]` for nt_xent (teacher anchors,
# then student anchors); the loss is their mean.


def _student_teacher(s, t, tau):
  logits = s @ t.T / tau
  return jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits)


def _student_student(s, t, tau):
  positives = jnp.sum(s * t, axis=1) / tau
  return jax.nn.logsumexp(_without_diagonal(s @ s.T / tau), axis=1) - positives


def _student_both(s, t, tau):
  positives = jnp.sum(s * t, axis=1) / tau
  negatives = jnp.concatenate([_without_diagonal(s @ s.T / tau), s @ t.T / tau], axis=1)
  return jax.nn.logsumexp(negatives, axis=1) - positives


def _nt_xent(s, t, tau):
  n = s.shape[0]
  z = jnp.concatenate([t, s], axis=0)
  logits = z @ z.T / tau
  # The positive of anchor a is the other view of the same image: a + N or a - N.
  partner = jnp.concatenate([jnp.arange(n) + n, jnp.arange(n)])
  positives = jnp.take_along_axis(logits, partner[:, None], axis=1)[:, 0]
  return jax.nn.logsumexp(_without_diagonal(logits), axis=1) - positives


def _mse(s, t, tau):
  del tau  # Not a contrastive loss: no temperature.
  return jnp.sum(jnp.square(s - t), axis=1)


_LOSSES = {
    "student_teacher": _student_teacher,
    "student_student": _student_student,
    "student_both": _student_both,
    "nt_xent": _nt_xent,
    "mse": _mse,
}


def check_loss_config(kind: str, temperature: float) -> None:
  """Validates `config.loss` values before anything is compiled."""
  if kind not in _LOSSES:
    raise ValueError(f"loss.kind={kind!r} is not a known loss; allowed: {', '.join(KINDS)}.")
  if not temperature > 0:
    raise ValueError(f"loss.temperature={temperature!r} must be > 0 (the paper uses 0.1).")


def _anchor_losses(student, teacher, kind, temperature) -> jax.Array:
  check_loss_config(kind, temperature)
  if student.shape != teacher.shape or student.ndim != 2:
    raise ValueError(f"student {student.shape} and teacher {teacher.shape} embeddings must "
                     "both be [N, D] with the same shape.")
  s = l2_normalize(student)
  t = jax.lax.stop_gradient(l2_normalize(teacher))
  return _LOSSES[kind](s, t, jnp.float32(temperature))


def contrastive_loss(student: jax.Array, teacher: jax.Array, *,
                     kind: str = "student_teacher", temperature: float = 0.1) -> jax.Array:
  """The SPEC §2 loss `kind` of student embeddings against fixed teacher targets.

  Args:
    student: `[N, D]` student embeddings S(A(x_i)), unnormalised.
    teacher: `[N, D]` teacher embeddings R(x_i), unnormalised; receives no gradient.
    kind: one of `KINDS`.
    temperature: tau, fixed (the paper: 0.1).

  Returns:
    A float32 scalar: the mean over the N (2N for `nt_xent`) anchors.
  """
  return jnp.mean(_anchor_losses(student, teacher, kind, temperature))


def per_example_loss(student: jax.Array, teacher: jax.Array, *,
                     kind: str = "student_teacher", temperature: float = 0.1) -> jax.Array:
  """The loss `kind` split over the examples: `[N]` float32 whose mean is
  `contrastive_loss` (nt_xent: the mean of example i's two anchors, its teacher and its
  student embedding). What an attack maximises per image (`rrjax.adversarial.pgd`).

  Example i's value depends on the other examples' embeddings too where they are its
  negatives (student_student, student_both, nt_xent): attacking the sum then perturbs
  every image also to make it a harder negative for the others, which is what
  maximising the batch's loss means.
  """
  anchors = _anchor_losses(student, teacher, kind, temperature)
  if kind == "nt_xent":
    return jnp.mean(anchors.reshape(2, -1), axis=0)
  return anchors
