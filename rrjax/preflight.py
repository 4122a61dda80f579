"""Checks that run before any download or compile, cheapest first, and the plan of a run.

`preflight(config, workdir, num_devices)` checks, in this order:
1. the config values (`rrjax.config.check_config`);
2. the data: the tfds dataset is prepared (array_record) under data.root or the tfds
   default, or the image folder / records exist with both splits, and data.wnids fits;
3. the teacher: a local checkpoint directory with a config, or a hub id whose config is
   in the Hugging Face cache, or (not offline) a hub that answers;
4. the workdir: writable, with room for the teacher cache (estimated).
A failure raises `PreflightError` with what is wrong, the config field and the fix (data
and teacher problems together);
`rrjax.main` prints it without a traceback. It returns a `Plan` (`describe()` is what
`--dry_run` prints). The cache's fingerprint is checked when the cache stage opens it,
which also happens before anything is trained.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import ml_collections

from rrjax import config as config_lib
from rrjax import hub, models
from rrjax.data import build_tfds, sources, workers

# Bytes per cached embedding entry (float16 by default) times a CLIP-sized dim, when the
# teacher's own dim is not known without loading it.
_FALLBACK_DIM = 1024
_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


class PreflightError(Exception):
  """Bad input found before any work: the message says what, which field, and the fix."""


@dataclasses.dataclass
class Plan:
  stages: tuple[str, ...]
  num_devices: int
  train_examples: int
  eval_examples: int
  num_classes: int
  steps: dict[str, int]
  cache_bytes: int
  cache_path: str
  num_workers: int  # View-cutting processes, resolved from num_workers_setting.
  num_workers_setting: int  # config.data.num_workers
  usable_cpus: int
  student_dtype: str  # The student's compute dtype, "auto" resolved for these devices.
  student_dtype_setting: str  # config.student.dtype

  def describe(self) -> str:
    cutters = (f"{self.num_workers} worker process{'es' if self.num_workers > 1 else ''}"
               if self.num_workers else "the main process")
    lines = [f"devices: {self.num_devices}",
             f"data: {self.train_examples} training and {self.eval_examples} evaluation "
             f"images, {self.num_classes} classes",
             f"input: views cut by {cutters} (data.num_workers={self.num_workers_setting}; "
             f"{self.usable_cpus} CPUs usable by this process)"]
    for stage in self.stages:
      work = {"cache": f"teacher embeddings, about {_size(self.cache_bytes)} at "
                       f"{self.cache_path}",
              "eval": "the evaluators of config.evals"}.get(stage, "")
      if stage in self.steps:
        work = f"{self.steps[stage]} training steps"
      if stage == "student":
        work += f" in {self.student_dtype} (student.dtype={self.student_dtype_setting})"
      lines.append(f"stage {stage}: {work}")
    return "\n".join(lines)


def _size(nbytes: int) -> str:
  return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def preflight(config, workdir: str, num_devices: int) -> Plan:
  try:
    config_lib.check_config(config, num_devices)
    models.parse_dtype(config.student.dtype)  # Names student.dtype and its choices.
  except ValueError as e:
    raise PreflightError(str(e)) from e
  # Data and teacher problems are reported together: a newcomer gets every command that
  # fetches what is missing at once.
  problems = []
  train_examples = eval_examples = num_classes = 0
  dim = None
  try:
    train_examples, num_classes = _check_data(config.data, config.data.train_split)
    eval_data = ml_collections.ConfigDict(config.data.to_dict())
    if config.eval.data_name:
      eval_data.name = config.eval.data_name
    eval_examples, _ = _check_data(eval_data, config.data.eval_split)
  except PreflightError as e:
    problems.append(str(e))
  try:
    dim = _check_teacher(config.teacher)
  except PreflightError as e:
    problems.append(str(e))
  if problems:
    raise PreflightError("\n".join(problems))
  views = config.cache.num_views
  cache_bytes = train_examples * views * (dim or _FALLBACK_DIM) * _DTYPE_BYTES.get(
      config.cache.dtype, 4) if "cache" in config.stages else 0
  cache_path = config.cache.path or os.path.join(workdir, "teacher_cache")
  _check_workdir(workdir, cache_bytes if not config.cache.path else 0)
  per_epoch = lambda batch: max(train_examples // batch, 0)
  steps = {}
  if "student" in config.stages:
    steps["student"] = config.num_epochs * per_epoch(config.batch_size)
  if "probe" in config.stages:
    steps["probe"] = config.probe.num_epochs * per_epoch(config.probe.batch_size)
  if "baseline" in config.stages:
    steps["baseline"] = config.baseline.num_epochs * per_epoch(config.baseline.batch_size)
  for stage, batch in (("student", config.batch_size), ("baseline", config.baseline.batch_size)):
    if stage in steps and not steps[stage]:
      raise PreflightError(f"the {stage} stage would train 0 steps: {train_examples} training "
                           f"images do not fill one batch of {batch}; lower the batch size.")
  return Plan(tuple(config.stages), num_devices, train_examples, eval_examples, num_classes,
              steps, cache_bytes, cache_path,
              workers.resolve_num_workers(config.data.num_workers), config.data.num_workers,
              workers.usable_cpus(), models.resolve_dtype(config.student.dtype),
              config.student.dtype)


def _check_data(data_cfg, split: str) -> tuple[int, int]:
  """(number of examples, number of classes) of `split`, from listings and metadata only
  (no image is decoded; tfds label scans are estimated)."""
  try:
    if data_cfg.source == "tfds":
      return _tfds_size(data_cfg, split)
    cheap = ml_collections.ConfigDict(data_cfg.to_dict())
    cheap.skip_corrupt = False  # Decoding every file to find bad ones is the run's job.
    source = sources.build_source(cheap, split)
    return len(source), source.num_classes
  except (FileNotFoundError, ValueError) as e:
    raise PreflightError(str(e)) from e


def _tfds_size(data_cfg, split: str) -> tuple[int, int]:
  import tensorflow_datasets as tfds  # Heavy: only for tfds data.
  if not data_cfg.name:
    raise ValueError("data.name must name a tfds dataset when data.source='tfds'.")
  data_dir = data_cfg.root or None
  builder = tfds.builder(data_cfg.name, data_dir=data_dir)
  try:
    data = tfds.data_source(data_cfg.name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types for data that is not there.
    raise FileNotFoundError(
        f"tfds dataset {data_cfg.name!r} split {split!r} is not prepared in the array_record "
        f"format under {builder.data_dir!r} (data.root={data_cfg.root!r}); prepare it with "
        f"`{build_tfds.build_command(data_cfg.name, data_dir)}` (ImageNet needs its archives "
        "placed in the manual dir first) or point data.root at its data_dir.") from e
  names = list(builder.info.features["label"].names)
  wnids = sources.class_list(data_cfg)
  if wnids is None:
    return len(data), len(names)
  missing = sorted(set(wnids) - set(names))
  if missing:
    raise ValueError(f"data.wnids={data_cfg.wnids!r} has classes {missing[:5]} that tfds "
                     f"{data_cfg.name!r} lacks; set data.wnids='' to use all its classes.")
  return len(data) * len(wnids) // len(names), len(wnids)  # Estimated: labels not scanned.


def _offline() -> bool:
  return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _check_teacher(teacher_cfg) -> int | None:
  """The teacher's embedding dim when its config can be read without downloading."""
  if teacher_cfg.kind == "python":
    from rrjax.teachers import plugin
    try:
      plugin.load_factory(teacher_cfg.factory)
    except ValueError as e:
      raise PreflightError(str(e)) from e
    return None
  from rrjax.models import clip
  try:
    name = hub.check_name(teacher_cfg.name, "teacher.name")
  except (ValueError, FileNotFoundError) as e:
    raise PreflightError(str(e)) from e
  if not hub.is_local(name) and not _in_hub_cache(name):
    if _offline():
      raise PreflightError(
          f"teacher.name={name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE=1: "
          f"download it where there is a network (hf download {name}), or set "
          "teacher.name to a local checkpoint directory.")
    _check_hub_reachable(name)
    return None  # Its config is small: the run downloads it first thing.
  try:
    return clip.open_checkpoint(name, "teacher.name").spec.embed_dim
  except (ValueError, FileNotFoundError) as e:
    raise PreflightError(str(e)) from e


def _in_hub_cache(name: str) -> bool:
  from huggingface_hub import try_to_load_from_cache
  from rrjax.models.clip import checkpoint
  return any(isinstance(try_to_load_from_cache(name, f), str)
             for f in (checkpoint.OPEN_CLIP_CONFIG, checkpoint.HF_CONFIG))


def _check_hub_reachable(name: str) -> None:
  from huggingface_hub import HfApi
  try:
    HfApi().model_info(name, timeout=10)
  except Exception as e:  # Network errors, unknown repo, gated repo: all end the same way.
    raise PreflightError(
        f"teacher.name={name!r} is not in the local Hugging Face cache and the hub cannot "
        f"provide it ({type(e).__name__}: {str(e).splitlines()[0][:200]}); check the name "
        f"and the network, download it elsewhere (hf download {name}), or set "
        "teacher.name to a local checkpoint directory.") from e


def _check_workdir(workdir: str, cache_bytes: int) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    # A file of its own (removed on close): the processes of a multi-host job check the
    # same workdir at once, and one's removal of a shared name failed the other's check.
    with tempfile.NamedTemporaryFile("w", dir=workdir, prefix=".rrjax_write_test.") as f:
      f.write("ok")
  except OSError as e:
    raise PreflightError(f"--workdir={workdir!r} is not writable ({e}); choose another "
                         "directory.") from e
  free = shutil.disk_usage(workdir).free
  if cache_bytes > free:
    raise PreflightError(
        f"the teacher cache needs about {cache_bytes / 1e9:.1f} GB but {workdir!r} has "
        f"{free / 1e9:.1f} GB free; free some space, set cache.path to a larger disk (or "
        "gs:// / s3://), or lower cache.num_views.")
