"""Stage "probe": linear classifiers on frozen features of A(x) (SPEC §5), one per label
fraction (`probe.label_fraction` and `probe.extra_label_fractions`).

`probe.features` chooses the frozen network: the trained "student" (the method), the
"teacher" itself or a supervised "imagenet" network (E11, no contrastive step), or
"clean_teacher": the teacher's cached embeddings of clean training views (E7, E8).
`probe.solver` chooses the fit:
- "adam": the paper's probe (Adam, `probe.learning_rate`, `probe.num_epochs` epochs of
  random training views, each with a fresh corruption draw), resumable like any stage;
- "lbfgs": CLIP's linear-probe protocol, L2-regularised logistic regression fitted to
  convergence (`rrjax.logistic_probe`) on the features of `probe.num_epochs` passes over
  the training views (a fresh view and corruption draw each), the L2 strength chosen on
  held-out training features. Converged, so a better-founded number for comparing
  encoders; the paper's numbers come from "adam".

Artifact: `WORKDIR/probe_<fraction>/head.msgpack` (the head's params, written when its
fit is finished), for "lbfgs" beside it `selection.json` (the chosen l2 and its held-out
accuracy, which result rows carry) and `WORKDIR/probe/done.json`.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rrjax import config as config_lib
from rrjax import in_flight, logistic_probe, models, objectives, sharding, train
from rrjax.data import subsets
from rrjax.stages import artifacts
from rrjax.stages import student as student_stage
from rrjax.stages.context import Context

NAME = "probe"
SOLVERS = ("adam", "lbfgs")
# What an "lbfgs" probe's result rows carry from its fit: the chosen l2 and its accuracy
# on held-out training images.
SELECTION = ("l2", "holdout_accuracy")


def fractions(config) -> tuple[float, ...]:
  return (config.probe.label_fraction, *config.probe.extra_label_fractions)


def head_path(workdir: str, fraction: float) -> str:
  return os.path.join(workdir, f"probe_{fraction:g}", "head.msgpack")


def selection_path(workdir: str, fraction: float) -> str:
  return os.path.join(os.path.dirname(head_path(workdir, fraction)), "selection.json")


def imagenet_model_config(init: str) -> ml_collections.ConfigDict:
  """The `config.student`-shaped model config of `probe.imagenet_init` ("resnet101:imagenet:
  microsoft/resnet-101" = model name, then the init)."""
  model, _, init = init.partition(":")
  return ml_collections.ConfigDict({"model": model, "init": init, "dtype": "float32"})


def features(ctx: Context) -> tuple[objectives.FeatureFn, Any]:
  """(features_fn, its frozen variables) the probes are fitted on (`probe.features`)."""
  kind = ctx.config.probe.features
  if kind == "student":
    return student_stage.features(ctx, NAME)
  if kind == "teacher":
    return objectives.teacher_features(ctx.teacher)
  if kind == "clean_teacher":
    return objectives.cached_clean_teacher_features, None
  if kind == "imagenet":
    # SPEC E11: a supervised ImageNet network's pooled features (its head is unused).
    cfg = imagenet_model_config(ctx.config.probe.imagenet_init)
    model = models.build_model(cfg, 1)
    return objectives.pre_logits_features(model), models.init_variables(
        cfg, model, ctx.init_key("imagenet"), ctx.config.data.image_size)
  raise ValueError(f"probe.features={kind!r}; allowed: {', '.join(config_lib.PROBE_FEATURES)}.")


def method(config) -> str:
  """The result rows' method key of this config's probes ("student_probe", ...)."""
  return f"{config.probe.features}_probe"


def _source(ctx: Context, fraction: float):
  source = ctx.train_source
  if fraction < 1:
    source = subsets.Subset(source, subsets.class_balanced_indices(
        source.labels, fraction, ctx.config.seed))
  return source


def _batch_size(ctx: Context, source) -> int:
  # The paper's label-efficiency probes use batch 8 when the subset is small (here: the
  # smallest multiple of the device count that is at least 8).
  num_devices = ctx.mesh.devices.size
  return (ctx.config.probe.batch_size if len(source) >= 4 * ctx.config.probe.batch_size
          else -(-8 // num_devices) * num_devices)


def _prepare_batch(ctx: Context):
  return ctx.with_targets if ctx.config.probe.features == "clean_teacher" else (lambda b: b)


def _fit_adam(ctx: Context, fraction: float, features_fn, frozen) -> tuple[Any, dict]:
  config = ctx.config
  source = _source(ctx, fraction)
  batch_size = _batch_size(ctx, source)
  loader = ctx.train_loader(source, batch_size)
  num_steps = config.probe.num_epochs * loader.steps_per_epoch
  num_classes = ctx.train_source.num_classes
  example = _example_batch(ctx, batch_size)
  corrupted = jax.ShapeDtypeStruct(example["image"].shape, jnp.float32)
  feature_dim = jax.eval_shape(features_fn, frozen, corrupted, example).shape[-1]
  head = objectives.linear_head(num_classes).init(jax.random.key(0),
                                                  jnp.zeros((1, feature_dim)))["params"]
  tx = train.make_optimizer(learning_rate=config.probe.learning_rate, total_steps=num_steps)
  try:
    result = train.fit(
        state=train.create_state(head, {}, tx), loss_fn=objectives.probe_loss(
            features_fn, ctx.operator, num_classes), loader=loader, num_steps=num_steps,
        mesh=ctx.mesh, key=ctx.key(f"probe{fraction}"), frozen=frozen,
        workdir=os.path.dirname(head_path(ctx.workdir, fraction)),
        prepare_batch=_prepare_batch(ctx),
        checkpoint_every=config.checkpoint_every_steps, keep_checkpoints=config.keep_checkpoints,
        log_every=config.log_every_steps, writer=ctx.writer, name=f"probe_{fraction:g}",
        profile_steps=tuple(config.profile_steps))
  finally:
    loader.close()
  return result.state.params, {"final_metrics": result.last_metrics,
                               "train_seconds": result.seconds}


@functools.lru_cache(maxsize=16)
def _compiled_features(features_fn, operator, replicated):
  """The jitted feature pass of one (features_fn, operator), kept so that the fits of
  several label fractions reuse its compilation (per batch shape)."""

  def batch_features(variables, batch, key, index):
    corrupted = operator(jax.random.fold_in(key, index),
                         objectives.to_unit_range(batch["image"]))
    return {"features": features_fn(variables, corrupted, batch).astype(jnp.float32),
            "label": batch["label"], "id": batch["id"]}

  return jax.jit(batch_features, out_shardings=replicated)


def corrupted_features(features_fn, frozen, batches, *, operator, mesh,
                       key: jax.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(features [N, dim] float32, labels [N], ids [N]) of every row of `batches`, in order:
  `features_fn(frozen, operator(fold_in(key, b), images01), batch)` for batch b, each a
  host-local share of a global batch, sharded over `mesh` and run under it like training
  and evaluation (a choice operator then groups each device's own images instead of
  gathering the global batch on every device); every process gets every row."""
  replicated = sharding.replicated(mesh)
  run = _compiled_features(features_fn, operator, replicated)
  frozen, key = sharding.replicate((frozen, key), mesh)

  def dispatch(indexed):
    index, batch = indexed
    with jax.set_mesh(mesh):
      return run(frozen, sharding.shard_batch(batch, mesh), key, np.int32(index))

  # Replicating outputs of a batch split over several devices is a collective.
  depth = in_flight.default_depth(collectives=mesh.devices.size > 1)
  collected = list(in_flight.pipelined(enumerate(batches), dispatch, depth=depth))
  return tuple(np.concatenate([part[k] for part in collected])
               for k in ("features", "label", "id"))


def _fit_lbfgs(ctx: Context, fraction: float, features_fn, frozen) -> tuple[Any, dict]:
  config = ctx.config
  source = _source(ctx, fraction)
  loader = ctx.train_loader(source, _batch_size(ctx, source))
  prepare = _prepare_batch(ctx)
  num_batches = config.probe.num_epochs * loader.steps_per_epoch
  try:
    features, labels, ids = corrupted_features(
        features_fn, frozen, (prepare(next(loader)) for _ in range(num_batches)),
        operator=ctx.operator, mesh=ctx.mesh, key=ctx.key(f"probe{fraction}"))
  finally:
    loader.close()
  # The views of one image are held out together (groups = example ids): l2 is chosen for
  # unseen images, not for the seen images' other views.
  fitted = logistic_probe.fit(features, labels, ctx.train_source.num_classes, groups=ids,
                              seed=config.seed)
  return fitted.params, {
      "l2": fitted.l2, "holdout_accuracy": fitted.holdout_accuracy,
      "bracketed": fitted.bracketed, "num_features": len(features),
      "holdout_accuracies": {f"{l2:.3g}": a for l2, a in fitted.holdout_accuracies.items()}}


def _example_batch(ctx: Context, batch_size: int) -> dict:
  size = ctx.config.data.image_size
  batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
           "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
           "id": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
           "view": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  if ctx.config.probe.features == "clean_teacher":
    batch["target"] = jax.ShapeDtypeStruct((batch_size, ctx.teacher.dim), jnp.float32)
  return batch


def run(ctx: Context) -> dict:
  """Fits the probe of every label fraction whose head is not written yet."""
  solver = ctx.config.probe.solver
  fit = {"adam": _fit_adam, "lbfgs": _fit_lbfgs}[solver]
  features_fn, frozen = features(ctx)
  summary = {}
  for fraction in fractions(ctx.config):
    path = head_path(ctx.workdir, fraction)
    if os.path.isfile(path):
      summary[f"{fraction:g}"] = {"finished_before": True}
      continue
    head, summary[f"{fraction:g}"] = fit(ctx, fraction, features_fn, frozen)
    selection = {k: summary[f"{fraction:g}"][k] for k in SELECTION
                 if k in summary[f"{fraction:g}"]}
    _save_head(ctx.workdir, fraction, head, selection)
  return {"solver": solver, "fractions": summary}


def _save_head(workdir: str, fraction: float, head, selection: dict) -> None:
  """The selection first, the head last: a head on disk means its fit is complete."""
  if jax.process_index() != 0:
    return
  path = head_path(workdir, fraction)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if selection:
    with open(selection_path(workdir, fraction), "w") as f:
      json.dump(selection, f)
  with open(path + ".tmp", "wb") as f:
    f.write(flax.serialization.msgpack_serialize(jax.device_get(head)))
  os.replace(path + ".tmp", path)


def load_head(ctx: Context, fraction: float, needed_by: str) -> tuple[dict, dict]:
  """(the fitted head params of `fraction`, its l2 selection: {"l2", "holdout_accuracy"}
  for "lbfgs" probes, {} otherwise)."""
  artifacts.require(ctx.workdir, NAME, needed_by)
  with open(head_path(ctx.workdir, fraction), "rb") as f:
    head = flax.serialization.msgpack_restore(f.read())
  selection = selection_path(ctx.workdir, fraction)
  if not os.path.isfile(selection):
    return head, {}
  with open(selection) as f:
    return head, json.load(f)
