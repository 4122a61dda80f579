"""What each stage trains, as loss functions for `rrjax.train.train_step`, and the frozen
feature extractors that linear probes and evaluations read.

Batches hold clean uint8 crops (`"image"`), labels, example ids and view indices, and
for a cached teacher the teacher's embedding of the same crop (`"target"`). The
corruption is applied here, on device, inside the jitted step, with the step's key.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from rrjax import losses, sharding

# features(frozen_variables, corrupted_images01, batch) -> [B, D]: the signature of
# `rrjax.evaluate.collect_outputs`, so training and evaluation share feature functions.
FeatureFn = Callable[[object, jax.Array, dict], jax.Array]


def to_unit_range(images_uint8: jax.Array) -> jax.Array:
  return images_uint8.astype(jnp.float32) / 255.0


def to_uint8(images01: jax.Array) -> jax.Array:
  """What a saved corrupted image would hold: clipped and rounded to 8 bits. Teachers take
  uint8 images, so corrupted inputs reach them through this."""
  return jnp.round(jnp.clip(images01, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def apply_model(model: nn.Module, variables, images01, *, train: bool):
  """`(outputs, aux, new_model_state)`; the state is {} for models without one."""
  # flax returns (outputs, state) for any list, even an empty one (a CLIP ViT has no
  # state), so a model without state is applied with mutable=False.
  mutable = ([c for c in variables if c != "params"] if train else False) or False
  result = model.apply(variables, images01, train=train, mutable=mutable)
  if mutable:
    (outputs, aux), new_state = result
  else:
    (outputs, aux), new_state = result, {c: v for c, v in variables.items() if c != "params"}
  return outputs, aux, new_state


def training_forward(model: nn.Module, per_device_mesh: Mesh | None = None) -> Callable:
  """`forward(variables, images01) -> (outputs, new_model_state)` in training mode.

  BatchNorm statistics are those of the global batch (under jit on a data mesh XLA
  all-reduces them), or with `per_device_mesh` those of each device's shard of the batch,
  as PyTorch's DataParallel computed them: the model runs in `jax.shard_map` over the
  data axis, variables replicated in, images sharded in and outputs sharded out.
  Parameters split over the devices (`shard_params`) are gathered whole onto each device
  for the forward and backward, their gradients reduced back to the splits; the
  optimiser state stays split.
  """

  def forward(variables, images01):
    outputs, _, new_state = apply_model(model, variables, images01, train=True)
    return outputs, new_state

  if per_device_mesh is None:
    return forward

  def on_each_device(variables, images01):
    outputs, new_state = forward(variables, images01)
    # The state is one replicated value, so the devices' updated running statistics are
    # averaged: the expectation of DataParallel's (replica 0 kept its own shard's), with
    # 1/n of its variance on n devices, and independent of the devices' order.
    return outputs, jax.lax.pmean(new_state, sharding.DATA_AXIS)

  batch = P(sharding.DATA_AXIS)
  sharded = jax.shard_map(on_each_device, mesh=per_device_mesh, in_specs=(P(), batch),
                          out_specs=(batch, P()))

  def run(variables, images01):
    # Without batch statistics (a ViT) the two are one function, and the global one spares
    # gathering parameters split over the devices (`shard_params`) whole onto each at once.
    with_statistics = set(variables) != {"params"}
    return (sharded if with_statistics else forward)(variables, images01)

  return run


def at_size(images01: jax.Array, size: int) -> jax.Array:
  """Images [B,H,W,C] resized to size x size (bilinear, antialiased when shrinking), for
  a teacher whose input size differs from the student's views; unchanged when equal."""
  if images01.shape[1:3] == (size, size):
    return images01
  return jax.image.resize(images01, (images01.shape[0], size, size, images01.shape[3]),
                          "linear", antialias=True)


def teacher_on_uint8(teacher) -> Callable:
  """`fn(params, images_uint8)`: the teacher's `apply` on views of any size (resized to
  its own input size on device), e.g. the online teacher of a lower-resolution student."""
  size = teacher.image_size
  return lambda params, images: teacher.apply(
      params, to_uint8(at_size(to_unit_range(images), size)))


def student_loss(model: nn.Module, operator, *, kind: str, temperature: float,
                 online_teacher: Callable | None = None, per_device_mesh: Mesh | None = None):
  """SPEC §2 loss of S(A(x)) against R(x). Teacher targets come from the batch (cache) or,
  with `online_teacher(params, images_uint8)`, from the teacher run in the step on the
  clean crop (`frozen` then holds the teacher's parameters). The loss is always over the
  global batch; with `per_device_mesh`, BatchNorm normalises each device's shard by its
  own statistics (`training_forward`, `config.student.batch_norm`).

  An adversarial operator (`operators`, kind "pgd") gets the per-image loss it maximises:
  the current student in inference mode (BatchNorm statistics fixed, so each image's
  loss is its own) against the same targets, in float32, with its parameters held
  constant, so the gradient of the step is that of the loss at the attacked images
  (Danskin), not through the attack."""

  forward = training_forward(model, per_device_mesh)

  def loss_fn(params, model_state, batch, key, frozen):
    targets = batch["target"] if online_teacher is None else online_teacher(frozen, batch["image"])
    variables = {"params": params, **model_state}
    fixed_variables = jax.lax.stop_gradient(variables)

    def attack_loss(images, loss):
      attacked, _, _ = apply_model(model, fixed_variables, images, train=False)
      return losses.per_example_loss(attacked, targets, kind="mse" if loss == "mse" else kind,
                                     temperature=temperature)

    corrupted = operator(key, to_unit_range(batch["image"]), attack_loss)
    embeddings, new_state = forward(variables, corrupted)
    loss = losses.contrastive_loss(embeddings, targets, kind=kind, temperature=temperature)
    cosine = jnp.mean(jnp.sum(losses.l2_normalize(embeddings) * losses.l2_normalize(targets), -1))
    return loss, (new_state, {"cosine": cosine})

  return loss_fn


def student_features(model: nn.Module) -> FeatureFn:
  """Frozen student embeddings S(A(x)) (BatchNorm in inference mode)."""
  return lambda variables, corrupted, batch: apply_model(model, variables, corrupted,
                                                         train=False)[0]


def pre_logits_features(model: nn.Module) -> FeatureFn:
  """A frozen network's pooled backbone features (`aux["pre_logits"]`), e.g. ImageNet's."""
  return lambda variables, corrupted, batch: apply_model(model, variables, corrupted,
                                                         train=False)[1]["pre_logits"]


def teacher_features(teacher) -> tuple[FeatureFn, object]:
  """The teacher's embeddings of corrupted images, R(A(x)) (SPEC E11), as
  `(features_fn, frozen_variables)`.

  Images are resized to the teacher's input size first when they differ (`at_size`).
  A teacher with `params` and a pure `apply` (CLIP, jittable plug-ins) runs inside the
  jitted function on its params. A plug-in with only `embed` (`rrjax.teachers.plugin`) is
  called on the host with numpy uint8 images and returns [B, dim] (cast to float32);
  its variables are None.
  """
  size = teacher.image_size
  if hasattr(teacher, "params") and callable(getattr(teacher, "apply", None)):
    apply = teacher.apply
    return (lambda params, corrupted, batch: apply(
        params, to_uint8(at_size(corrupted, size)))), teacher.params
  embed, dim = teacher.embed, teacher.dim

  def host_embed(images):
    # The callback receives jax Arrays; plug-ins get numpy, as the cache builder gives them.
    return np.asarray(embed(np.asarray(images)), np.float32)

  def features(variables, corrupted, batch):
    del variables, batch
    images = to_uint8(at_size(corrupted, size))
    # `embed` is host code (numpy, torch, ...) that jit cannot trace, so it runs on the host
    # through a callback: each batch goes to the host and its embeddings come back, with a
    # sync, and nothing can be differentiated through it. That is fine for frozen
    # features, which probes and evaluations only read. "sequential": under vmap, `embed`
    # sees one batch at a time, never a stack of them.
    return jax.pure_callback(host_embed, jax.ShapeDtypeStruct((images.shape[0], dim),
                                                              jnp.float32),
                             images, vmap_method="sequential")

  return features, None


def cached_clean_teacher_features(variables, corrupted, batch) -> jax.Array:
  """The teacher's embedding of the clean crop, looked up in the cache (SPEC E8)."""
  del variables, corrupted
  return batch["target"]


def linear_head(num_classes: int) -> nn.Module:
  return nn.Dense(num_classes, name="head")


def probe_logits(head_params, features: jax.Array, num_classes: int) -> jax.Array:
  """A linear classifier on L2-normalised features: the contrastive loss constrains only
  directions, so normalising makes a probe transfer between teacher and student (E8)."""
  return linear_head(num_classes).apply({"params": head_params},
                                        losses.l2_normalize(features))


def probe_loss(features_fn: FeatureFn, operator, num_classes: int):
  """Cross-entropy of a linear probe on frozen features of A(x) (`frozen` = the feature
  extractor's variables)."""

  def loss_fn(params, model_state, batch, key, frozen):
    corrupted = operator(key, to_unit_range(batch["image"]))
    features = jax.lax.stop_gradient(features_fn(frozen, corrupted, batch))
    logits = probe_logits(params, features, num_classes)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, (model_state, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])})

  return loss_fn


def classifier_loss(model: nn.Module, operator):
  """The supervised baseline: the whole classifier fine-tuned on A(x) with cross-entropy."""

  def loss_fn(params, model_state, batch, key, frozen):
    del frozen
    corrupted = operator(key, to_unit_range(batch["image"]))
    logits, _, new_state = apply_model(model, {"params": params, **model_state}, corrupted,
                                       train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, (new_state, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])})

  return loss_fn
