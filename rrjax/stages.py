"""The stages a config names, in order: cache -> student -> probe -> baseline -> eval.

Every stage keeps its work under `WORKDIR/<stage>`: training stages resume from their
orbax checkpoints (a finished one restores its final state without training), the cache
resumes chunk by chunk, and a finished stage leaves `done.json` with its summary and
time, so a re-run skips it. Results land in `WORKDIR/results.json` and `results.md`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rrjax import cache as cache_lib
from rrjax import config as config_lib
from rrjax import evaluate, losses, models, objectives, operators, sharding, train
from rrjax import writers as writers_lib
from rrjax.cache import from_config as cache_config
from rrjax.data import pipeline, sources, subsets
from rrjax.data.views import ViewSpec
from rrjax.data.workers import ViewCutter


def student_config(config) -> ml_collections.ConfigDict:
  """`config.student` with `teacher_name` defaulting to the teacher's checkpoint."""
  cfg = ml_collections.ConfigDict(config.student.to_dict())
  cfg.teacher_name = cfg.teacher_name or config.teacher.name
  return cfg


def probe_fractions(config) -> tuple[float, ...]:
  return (config.probe.label_fraction, *config.probe.extra_label_fractions)


@dataclasses.dataclass
class Context:
  """What the stages share: the config, the workdir, the mesh, and lazily built parts."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any

  @functools.cached_property
  def teacher(self):
    from rrjax import teachers
    teacher = teachers.build_teacher(self.config.teacher)
    if teacher.image_size != self.config.data.image_size:
      raise ValueError(
          f"data.image_size={self.config.data.image_size} but the teacher embeds "
          f"{teacher.image_size}x{teacher.image_size} crops; set "
          f"--config.data.image_size={teacher.image_size}.")
    return teacher

  @functools.cached_property
  def view(self) -> ViewSpec:
    return ViewSpec.from_config(self.config.data)

  @functools.cached_property
  def train_source(self):
    return sources.build_source(self.config.data, self.config.data.train_split)

  @functools.cached_property
  def eval_source(self):
    """`data.eval_split`, or with `eval.data_name` another data set (e.g. ImageNet-100C);
    `eval.out_of_class` relabels the 5 unseen classes (SPEC E5)."""
    data = ml_collections.ConfigDict(self.config.data.to_dict())
    data.out_of_class = self.config.eval.out_of_class
    if self.config.eval.data_name:
      data.name = self.config.eval.data_name
    return sources.build_source(data, self.config.data.eval_split)

  @functools.cached_property
  def operator(self):
    return self.operator_for(self.config.operator.to_dict())

  def operator_for(self, spec: dict):
    """One operator object per spec, so compiled evaluation functions are reused."""
    key = json.dumps(spec, sort_keys=True)
    if key not in self._operators:
      self._operators[key] = operators.build(spec)
    return self._operators[key]

  @functools.cached_property
  def _operators(self) -> dict:
    return {}

  @functools.cached_property
  def memo(self) -> dict:
    """Results reused across stages of one run (e.g. the trained student's variables)."""
    return {}

  @functools.cached_property
  def writer(self) -> writers_lib.MetricWriter:
    return writers_lib.MetricWriter(self.workdir)

  def key(self, name: str, impl: str | None = None) -> jax.Array:
    """An independent base key per purpose, from the config's seed."""
    return jax.random.fold_in(jax.random.key(self.config.seed, impl=impl),
                              zlib.crc32(name.encode()))

  def init_key(self, name: str) -> jax.Array:
    """A key for parameter initialisation. "rbg" rather than the default threefry: as good
    for drawing initial weights, and a large model's init compiles several times faster
    (threefry's hash is unrolled per parameter tensor)."""
    return self.key(name, impl="rbg")

  def cutter(self, source) -> ViewCutter:
    """The worker processes cutting `source`'s views: started once per run."""
    if id(source) not in self._cutters:
      self._cutters[id(source)] = ViewCutter(source, self.view, self.config.seed,
                                             self.config.data.num_workers)
    return self._cutters[id(source)]

  @functools.cached_property
  def _cutters(self) -> dict[int, ViewCutter]:
    return {}

  def close(self) -> None:
    for cutter in self._cutters.values():
      cutter.close()
    self._cutters.clear()

  def train_loader(self, source, batch_size: int) -> pipeline.TrainLoader:
    return pipeline.TrainLoader(source, global_batch_size=batch_size, view=self.view,
                                num_views=self.config.cache.num_views, seed=self.config.seed,
                                cutter=self.cutter(source))

  def eval_batches(self, source):
    return pipeline.eval_batches(source, global_batch_size=self.config.eval.batch_size,
                                 view=self.view, seed=self.config.seed,
                                 cutter=self.cutter(source))

  def uses_cache(self) -> bool:
    return self.config.teacher.mode == "cached"

  @functools.cached_property
  def train_cache(self) -> cache_lib.TeacherCache:
    """The training views' cache, read into RAM once when it fits `cache.ram_budget_gb`:
    every training step looks up a batch of random rows."""
    cache = cache_config.open_cache(self.config, self.workdir, self.teacher,
                                    self.train_source, split=self.config.data.train_split,
                                    view_set="train")
    if cache.keep_in_memory(self.config.cache.ram_budget_gb * 2**30):
      logging.info("teacher cache %s: %.2f GB held in memory", cache.path, cache.nbytes / 1e9)
    return cache

  @functools.cached_property
  def eval_cache(self) -> cache_lib.TeacherCache:
    return cache_config.open_cache(self.config, self.workdir, self.teacher, self.eval_source,
                                   split=self.config.data.eval_split, view_set="eval")

  def with_targets(self, batch: dict) -> dict:
    """Adds the cached teacher embedding of each (id, view) of a training batch."""
    return dict(batch, target=self.train_cache.lookup(batch["id"], batch["view"]))


# ---------------------------------------------------------------------------- cache


def run_cache(ctx: Context) -> dict:
  """Teacher embeddings of the training views (and of the evaluation views of the eval
  split when agreement is measured): computed once, by every host and device."""
  config = ctx.config
  built = {}
  if ctx.uses_cache() or config.probe.features == "clean_teacher":
    built["train"] = cache_config.build_from_config(
        config, ctx.workdir, ctx.teacher, ctx.train_source, split=config.data.train_split,
        view_set="train")
  if ctx.uses_cache() and "eval" in config.stages and config.eval.agreement:
    built["eval"] = cache_config.build_from_config(
        config, ctx.workdir, ctx.teacher, ctx.eval_source, split=config.data.eval_split,
        view_set="eval")
  return {name: dataclasses.asdict(report) for name, report in built.items()}


# -------------------------------------------------------------------------- student


def student_model(ctx: Context):
  return models.build_model(student_config(ctx.config), ctx.teacher.dim)


def initial_student_variables(ctx: Context, model) -> dict:
  return models.init_variables(student_config(ctx.config), model, ctx.init_key("student_init"),
                               ctx.config.data.image_size)


def _split_variables(variables: dict) -> tuple[Any, dict]:
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def initial_student_state(ctx: Context, total_steps: int) -> train.TrainState:
  config = ctx.config
  params, model_state = _split_variables(initial_student_variables(ctx, student_model(ctx)))
  tx = train.make_optimizer(
      learning_rate=config.optimizer.learning_rate, total_steps=total_steps,
      weight_decay=config.optimizer.weight_decay, warmup_steps=config.optimizer.warmup_steps,
      grad_clip_norm=config.optimizer.grad_clip_norm)
  float16 = config.student.dtype == "float16" and config.optimizer.loss_scale > 0
  return train.create_state(params, model_state, tx,
                            config.optimizer.loss_scale if float16 else 0.0)


def train_student(ctx: Context) -> train.FitResult:
  """Trains (or resumes, or restores the finished) student of SPEC §1-§2."""
  config = ctx.config
  loader = ctx.train_loader(ctx.train_source, config.batch_size)
  num_steps = config.num_epochs * loader.steps_per_epoch
  state = initial_student_state(ctx, num_steps)
  online = not ctx.uses_cache()
  loss_fn = objectives.student_loss(
      student_model(ctx), ctx.operator, kind=config.loss.kind,
      temperature=config.loss.temperature,
      online_teacher=ctx.teacher.apply if online else None)
  try:
    return train.fit(
        state=state, loss_fn=loss_fn, loader=loader, num_steps=num_steps, mesh=ctx.mesh,
        key=ctx.key("student"), frozen=ctx.teacher.params if online else None,
        workdir=os.path.join(ctx.workdir, "student"),
        prepare_batch=(lambda b: b) if online else ctx.with_targets,
        checkpoint_every=config.checkpoint_every_steps, keep_checkpoints=config.keep_checkpoints,
        log_every=config.log_every_steps, writer=ctx.writer, name="student",
        dynamic_loss_scale=bool(state.loss_scale != 1.0), shard_params=config.shard_params,
        profile_steps=tuple(config.profile_steps))
  finally:
    loader.close()


def run_student(ctx: Context) -> dict:
  if ctx.uses_cache():
    ctx.train_cache  # Fingerprint and completeness checked before anything compiles.
  result = train_student(ctx)
  return {"final_metrics": result.last_metrics, "resumed_from": result.resumed_from,
          "train_seconds": result.seconds}


def student_variables(ctx: Context) -> dict:
  """The trained student: this run's (trained now, or restored once trained), or with
  `student.restore_from` the final student of another run's workdir (SPEC E4)."""
  if "student_variables" not in ctx.memo:
    if ctx.config.student.restore_from:
      state = train.load_final_state(os.path.join(ctx.config.student.restore_from, "student"),
                                     initial_student_state(ctx, 1), ctx.mesh)
    else:
      state = train_student(ctx).state
    ctx.memo["student_variables"] = {"params": state.params, **state.model_state}
  return ctx.memo["student_variables"]


# ---------------------------------------------------------------------------- probe


def probe_features(ctx: Context) -> tuple[objectives.FeatureFn, Any]:
  """(features_fn, its frozen variables) for `config.probe.features`."""
  kind = ctx.config.probe.features
  if kind == "student":
    return objectives.student_features(student_model(ctx)), student_variables(ctx)
  if kind == "teacher":
    return objectives.teacher_features(ctx.teacher.apply), ctx.teacher.params
  if kind == "clean_teacher":
    return objectives.cached_clean_teacher_features, None
  if kind == "imagenet":
    # SPEC E11: a supervised ImageNet network's pooled features (its head is unused).
    model = models.build_model(config_as_model(ctx.config.probe.imagenet_init), 1)
    return objectives.pre_logits_features(model), models.init_variables(
        config_as_model(ctx.config.probe.imagenet_init), model, ctx.init_key("imagenet"),
        ctx.config.data.image_size)
  raise ValueError(f"probe.features={kind!r}; allowed: {', '.join(config_lib.PROBE_FEATURES)}.")


def config_as_model(init: str) -> ml_collections.ConfigDict:
  """The `config.student`-shaped model config of `probe.imagenet_init` ("resnet101:imagenet:
  microsoft/resnet-101" = model name, then the init)."""
  model, _, init = init.partition(":")
  return ml_collections.ConfigDict({"model": model, "init": init, "dtype": "float32"})


def train_probe(ctx: Context, fraction: float, features=None) -> train.FitResult:
  config = ctx.config
  features_fn, frozen = features or probe_features(ctx)
  source = ctx.train_source
  if fraction < 1:
    source = subsets.Subset(source, subsets.class_balanced_indices(
        source.labels, fraction, config.seed))
  # The paper's label-efficiency probes use batch 8 when the subset is small (here: the
  # smallest multiple of the device count that is at least 8).
  num_devices = ctx.mesh.devices.size
  batch_size = (config.probe.batch_size if len(source) >= 4 * config.probe.batch_size
                else -(-8 // num_devices) * num_devices)
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
    return train.fit(
        state=train.create_state(head, {}, tx), loss_fn=objectives.probe_loss(
            features_fn, ctx.operator, num_classes), loader=loader, num_steps=num_steps, mesh=ctx.mesh,
        key=ctx.key(f"probe{fraction}"), frozen=frozen,
        workdir=os.path.join(ctx.workdir, f"probe_{fraction:g}"),
        prepare_batch=ctx.with_targets if config.probe.features == "clean_teacher" else (
            lambda b: b),
        checkpoint_every=config.checkpoint_every_steps, keep_checkpoints=config.keep_checkpoints,
        log_every=config.log_every_steps, writer=ctx.writer, name=f"probe_{fraction:g}",
        profile_steps=tuple(config.profile_steps))
  finally:
    loader.close()


def _example_batch(ctx: Context, batch_size: int) -> dict:
  size = ctx.config.data.image_size
  batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
           "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
           "id": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
           "view": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  if ctx.config.probe.features == "clean_teacher":
    batch["target"] = jax.ShapeDtypeStruct((batch_size, ctx.teacher.dim), jnp.float32)
  return batch


def run_probe(ctx: Context) -> dict:
  features = probe_features(ctx)
  summary = {}
  for fraction in probe_fractions(ctx.config):
    result = train_probe(ctx, fraction, features)
    summary[f"{fraction:g}"] = {"final_metrics": result.last_metrics,
                                "train_seconds": result.seconds}
  return summary


# ------------------------------------------------------------------------- baseline


def baseline_model(ctx: Context):
  return models.build_model(ctx.config.baseline, ctx.train_source.num_classes)


def train_baseline(ctx: Context) -> train.FitResult:
  """SPEC §5 supervised baseline: a classifier fine-tuned end to end on A(x)."""
  config = ctx.config
  model = baseline_model(ctx)
  params, model_state = _split_variables(models.init_variables(
      config.baseline, model, ctx.init_key("baseline_init"), config.data.image_size))
  loader = ctx.train_loader(ctx.train_source, config.baseline.batch_size)
  num_steps = config.baseline.num_epochs * loader.steps_per_epoch
  tx = train.make_optimizer(learning_rate=config.baseline.learning_rate, total_steps=num_steps)
  try:
    return train.fit(
        state=train.create_state(params, model_state, tx),
        loss_fn=objectives.classifier_loss(model, ctx.operator), loader=loader,
        num_steps=num_steps, mesh=ctx.mesh, key=ctx.key("baseline"),
        workdir=os.path.join(ctx.workdir, "baseline"),
        checkpoint_every=config.checkpoint_every_steps, keep_checkpoints=config.keep_checkpoints,
        log_every=config.log_every_steps, writer=ctx.writer, name="baseline",
        shard_params=config.shard_params, profile_steps=tuple(config.profile_steps))
  finally:
    loader.close()


def run_baseline(ctx: Context) -> dict:
  result = train_baseline(ctx)
  return {"final_metrics": result.last_metrics, "train_seconds": result.seconds}


# ----------------------------------------------------------------------------- eval


def eval_operators(config) -> list[dict]:
  """The operator specs to test: `eval.operators`, else `eval.levels` of the trained
  operator, else the trained operator itself."""
  if config.eval.operators:
    return [dict(spec) for spec in config.eval.operators]
  spec = config.operator.to_dict()
  return [evaluate.with_level(spec, level) for level in config.eval.levels] or [spec]


def _classify(ctx: Context, output_fn: Callable, variables, spec: dict) -> dict:
  collected = evaluate.collect_outputs(
      output_fn, variables, ctx.eval_batches(ctx.eval_source), mesh=ctx.mesh,
      key=ctx.key("eval"), repeats=ctx.config.eval.repeats, operator=ctx.operator_for(spec))
  return evaluate.classification_metrics(collected["outputs"], collected["label"])


def _teacher_on_clean(ctx: Context) -> np.ndarray:
  """R(x) of every evaluation view of the eval split, by id: cached or computed now."""
  if "teacher_eval" not in ctx.memo:
    if ctx.uses_cache():
      ids = np.arange(len(ctx.eval_source))
      ctx.memo["teacher_eval"] = ctx.eval_cache.lookup(ids, np.zeros_like(ids))
    else:
      ctx.memo["teacher_eval"] = evaluate.collect_outputs(
          objectives.teacher_features(ctx.teacher.apply), ctx.teacher.params,
          ctx.eval_batches(ctx.eval_source), mesh=ctx.mesh, key=ctx.key("agreement"),
          repeats=1, operator=ctx.operator_for({"kind": "identity"}))["outputs"][0]
  return ctx.memo["teacher_eval"]


def _agreement(ctx: Context, embed: Callable, variables, spec: dict) -> dict:
  """Cosine and retrieval@1 of S(A(x)) against R(x) on held-out evaluation views."""
  student = evaluate.collect_outputs(
      embed, variables, ctx.eval_batches(ctx.eval_source), mesh=ctx.mesh,
      key=ctx.key("agreement"), repeats=1, operator=ctx.operator_for(spec))
  return evaluate.agreement_metrics(student["outputs"][0], _teacher_on_clean(ctx)[student["id"]])


def _after(restore: Callable, features_fn: objectives.FeatureFn) -> objectives.FeatureFn:
  """Features of restored images: pixel-space restoration, then the frozen network."""
  return lambda variables, corrupted, batch: features_fn(variables, restore(corrupted), batch)


def zero_shot_class_names(ctx: Context) -> list[str]:
  """Names for "a photo of a {name}." prompts: `eval.class_names_file` (one per line, in
  label order) or the data set's own class names (wnids for ImageNet-style data)."""
  path = ctx.config.eval.class_names_file
  if not path:
    return list(ctx.train_source.class_names)
  with open(path) as f:
    names = [line.strip() for line in f if line.strip()]
  if len(names) != ctx.train_source.num_classes:
    raise ValueError(f"eval.class_names_file={path!r} has {len(names)} names for "
                     f"{ctx.train_source.num_classes} classes.")
  return names


def run_eval(ctx: Context) -> dict:
  """Top-1/top-5 (AUC) over R corruption draws for every trained method and severity,
  zero-shot with the teacher's text embeddings, and student-teacher agreement."""
  config = ctx.config
  stages = set(config.stages)
  num_classes = ctx.train_source.num_classes
  methods = []  # (method, label fraction, output_fn, variables)
  has_student = ("student" in stages or bool(config.student.restore_from)
                 or config.probe.features == "student")
  if has_student:
    embed = objectives.student_features(student_model(ctx))
    variables = student_variables(ctx)
  if "probe" in stages:
    train_features = probe_features(ctx)
    features_fn, frozen = train_features
    if config.probe.features == "clean_teacher":
      # The probe fitted on clean teacher embeddings is applied unchanged to the student
      # (SPEC E8) or, without one, to the teacher (the clean classifier of SPEC E7).
      features_fn, frozen = ((embed, variables) if has_student else
                             (objectives.teacher_features(ctx.teacher.apply), ctx.teacher.params))
    method = f"{config.probe.features}_probe"
    if config.eval.restore:
      from rrjax import baselines
      restore = baselines.restoration(config.eval.restore, config.operator.to_dict(),
                                      steps=config.eval.restore_steps)
      features_fn = _after(restore, features_fn)
      method = f"{config.eval.restore}+{method}"
    probe_output = lambda v, corrupted, batch: objectives.probe_logits(
        v[1], features_fn(v[0], corrupted, batch), num_classes)
    for fraction in probe_fractions(config):
      head = train_probe(ctx, fraction, train_features).state.params
      methods.append((method, fraction, probe_output, (frozen, head)))
  if "baseline" in stages:
    state = train_baseline(ctx).state
    # The classifier's outputs are its class logits.
    methods.append(("baseline", 1.0, objectives.student_features(baseline_model(ctx)),
                    {"params": state.params, **state.model_state}))
  if config.eval.zero_shot and has_student and hasattr(ctx.teacher, "embed_text"):
    from rrjax.teachers import clip as clip_teacher
    text = losses.l2_normalize(ctx.teacher.embed_text(
        clip_teacher.class_prompts(zero_shot_class_names(ctx))))
    zero_shot = lambda v, corrupted, batch: 100 * losses.l2_normalize(
        embed(v["student"], corrupted, batch)) @ v["text"].T
    methods.append(("zero_shot", 0.0, zero_shot, {"student": variables, "text": text}))
  if has_student and config.eval.agreement:
    initial = initial_student_variables(ctx, student_model(ctx))

  results, agreement = [], {}
  for spec in eval_operators(config):
    label = operators.describe(spec)
    for method, fraction, output_fn, method_variables in methods:
      results.append({"method": method, "label_fraction": fraction, "operator": label,
                      "spec": spec, **_classify(ctx, output_fn, method_variables, spec)})
    if has_student and config.eval.agreement:
      agreement[label] = {"trained": _agreement(ctx, embed, variables, spec),
                          "initial": _agreement(ctx, embed, initial, spec)}
  report = {"experiment": config.experiment,
            "setting": {"dataset": f"{config.data.name}:{config.data.eval_split}",
                        "teacher": config.teacher.name, "student": config.student.model,
                        "loss": config.loss.kind,
                        "train_operator": operators.describe(config.operator.to_dict()),
                        "train_spec": config.operator.to_dict(),
                        "probe_features": config.probe.features,
                        "repeats": config.eval.repeats},
            "results": results, "agreement": agreement}
  write_results(ctx.workdir, report)
  return report


def markdown_table(report: dict) -> str:
  """The results as a Markdown table: one row per (method, labels, operator)."""
  lines = ["| method | labels | operator | top-1 (%) | top-5 (%) | AUC |",
           "| --- | --- | --- | --- | --- | --- |"]
  fmt = lambda m, scale=1: (f"{m['mean'] * scale:.2f} ± {m['sem'] * scale:.2f}" if m else "")
  for r in report["results"]:
    lines.append(f"| {r['method']} | {r['label_fraction']:g} | {r['operator']} | "
                 f"{fmt(r['top1'])} | {fmt(r.get('top5'))} | {fmt(r.get('auc'))} |")
  if report["agreement"]:
    lines += ["", "| operator | cosine (trained) | retrieval@1 (trained) | cosine (initial) | "
              "retrieval@1 (initial) |", "| --- | --- | --- | --- | --- |"]
    for op, a in report["agreement"].items():
      lines.append(f"| {op} | {a['trained']['cosine']:.3f} | {a['trained']['retrieval_at_1']:.3f} "
                   f"| {a['initial']['cosine']:.3f} | {a['initial']['retrieval_at_1']:.3f} |")
  return "\n".join(lines) + "\n"


def write_results(workdir: str, report: dict) -> None:
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown_table(report))


STAGE_FUNCTIONS = {"cache": run_cache, "student": run_student, "probe": run_probe,
                   "baseline": run_baseline, "eval": run_eval}


def run_stages(config, workdir: str, mesh=None) -> dict[str, Any]:
  """Runs `config.stages` in order, skipping those finished before (their done.json)."""
  ctx = Context(config=config, workdir=workdir, mesh=mesh or sharding.make_mesh())
  try:
    return _run_stages(ctx)
  finally:
    ctx.close()


def _run_stages(ctx: Context) -> dict[str, Any]:
  config, workdir = ctx.config, ctx.workdir
  summaries = {}
  for stage in config.stages:
    done_path = os.path.join(workdir, stage, "done.json")
    if os.path.exists(done_path):
      logging.info("stage %s: finished before, skipped (%s)", stage, done_path)
      with open(done_path) as f:
        summaries[stage] = json.load(f)
      continue
    logging.info("stage %s: starting", stage)
    start = time.perf_counter()
    summary = {"summary": STAGE_FUNCTIONS[stage](ctx), "seconds": time.perf_counter() - start}
    ctx.writer.write_scalars(0, {f"time/{stage}_seconds": summary["seconds"]})
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(done_path), exist_ok=True)
      with open(done_path + ".tmp", "w") as f:
        json.dump(summary, f, indent=2, default=str)
      os.replace(done_path + ".tmp", done_path)
    summaries[stage] = summary
  ctx.writer.close()
  return summaries
