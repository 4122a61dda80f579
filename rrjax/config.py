"""The configuration surface every experiment config builds on, and its validation.

`configs/*.py` start from `base_config()` and change what their experiment needs. Fields
are locked, so a misspelt `--config.x=y` override is rejected by name by ml_collections.
`check_config` validates values cheaply, before any data is read or anything compiled.
"""

from __future__ import annotations

import difflib
import importlib.util
import os

import ml_collections

from rrjax import adversarial, losses, operators
from rrjax.data import workers

STAGES = ("cache", "student", "probe", "baseline", "eval")
PROBE_FEATURES = ("student", "teacher", "clean_teacher", "imagenet")
PROBE_SOLVERS = ("adam", "lbfgs")
STUDENT_BATCH_NORMS = ("global", "per_device")
# Evaluator type -> its options and their defaults (`rrjax.evaluators`; `repeats` 0 means
# eval.repeats). `config.evals` maps names to {"type": <type>, **options}.
EVALUATORS = {
    "classification": {"methods": (), "repeats": 0},
    "out_of_class": {"methods": (), "repeats": 0},
    "zero_shot": {"templates": "clip80", "class_names_file": "", "repeats": 0},
    "agreement": {},
    "restoration": {"restore": "nlm", "steps": 5000, "repeats": 0},
    # APGD-CE and -DLR per eps (linf budgets in [0, 1] pixels); methods () = every model
    # there is (probes, baseline, zero-shot student and teacher).
    "adversarial": {"eps": (1 / 255, 2 / 255, 4 / 255), "steps": 100, "losses": ("ce", "dlr"),
                    "num_images": 1000, "norm": "linf", "methods": (), "templates": "clip80",
                    "class_names_file": ""},
}
# What the adversarial evaluator's `methods` may name.
ADVERSARIAL_METHODS = ("probe", "baseline", "zero_shot", "zero_shot_teacher")
# Evaluator types that test the corruptions of `eval.operators` (default: config.operator).
TEST_OPERATOR_EVALUATORS = ("classification", "out_of_class", "zero_shot", "agreement",
                            "restoration")


def base_config() -> ml_collections.ConfigDict:
  """SPEC §5 defaults, the paper's setting: OpenAI's CLIP RN101 as the teacher and as the
  student's initialisation (no projection head), 90% mask, the paper's optimiser."""
  c = ml_collections.ConfigDict()
  c.experiment = ""                 # SPEC experiment id(s) this run belongs to, e.g. "E1"
  c.seed = 0
  c.stages = ("cache", "student", "probe", "eval")

  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds"            # "tfds" | "folder" | "records"
  c.data.name = "imagenet2012"      # tfds name; also names folder/record data sets
  c.data.root = ""                  # image folder / record dir / tfds data_dir
  c.data.wnids = "auto"             # "auto": ImageNet-100 for tfds imagenet2012, else the
                                    # data's own classes; "imagenet100" | "imagenet100b" | ""
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 224
  c.data.resize_size = 256
  c.data.crop_scale = (0.08, 1.0)
  c.data.crop_ratio = (3 / 4, 4 / 3)
  c.data.view_mode = "crop"         # "crop" (ImageNet-style) | "resize" (CIFAR/STL)
  c.data.decode = "full"            # "draft": training views of large JPEGs decoded at
                                    # 1/2-1/8 scale (libjpeg DCT); other pixels, other cache
  c.data.skip_corrupt = False
  c.data.num_workers = -1           # processes cutting views; -1: one per CPU this process
                                    # may use, less one (at least 1); 0: in the main process

  c.teacher = ml_collections.ConfigDict()
  c.teacher.kind = "clip"           # "clip" (open_clip or transformers layout) | "python"
  c.teacher.name = "timm/resnet101_clip.openai"  # hub id or local directory
  c.teacher.factory = ""            # "package.module:function" when kind == "python"
  c.teacher.mode = "cached"         # "cached" | "online"
  c.teacher.dtype = "float32"

  c.cache = ml_collections.ConfigDict()
  c.cache.path = ""                 # default: WORKDIR/teacher_cache
  c.cache.num_views = 25            # training views per image (one per epoch by default)
  c.cache.dtype = "float16"
  c.cache.batch_size = 256
  c.cache.ram_budget_gb = 8.0       # training lookups from RAM when the cache fits (0: off)

  c.student = ml_collections.ConfigDict()
  c.student.model = "clip"          # "clip" (the teacher's architecture) | resnet18..152
  c.student.init = "teacher"        # "teacher" | "random" | "imagenet:<hub id or dir>" (ResNets)
  c.student.dtype = "auto"          # compute: "auto" (bfloat16 on GPU/TPU, float32 on CPU),
                                    # "float32", "bfloat16", "float16"; parameters stay float32
  c.student.width = 64              # ResNet stem/stage-1 width (64 = torchvision)
  c.student.teacher_name = ""       # model "clip": the checkpoint to copy ("" = teacher.name)
  c.student.restore_from = ""       # workdir of another run whose student to use (E4)
  c.student.batch_norm = "global"   # BatchNorm statistics of the whole batch (the paper's
                                    # numbers on any device count) | "per_device": of each
                                    # device's share, as its DataParallel (4 GPUs: 64 images)

  c.operator = ml_collections.ConfigDict({"kind": "mask", "p": 0.9})

  c.loss = ml_collections.ConfigDict()
  c.loss.kind = "student_teacher"
  c.loss.temperature = 0.1

  c.batch_size = 256                # global, over all devices and hosts
  c.shard_params = False            # split large parameters/optimiser state over devices
  c.num_epochs = 25
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 3e-4
  c.optimizer.weight_decay = 1e-4   # decoupled (AdamW)
  c.optimizer.warmup_steps = 0
  c.optimizer.grad_clip_norm = 0.0  # 0 disables clipping
  c.optimizer.loss_scale = 0.0      # float16 only: initial dynamic loss scale (0: off)

  c.probe = ml_collections.ConfigDict()
  c.probe.features = "student"      # "student" | "teacher" | "clean_teacher" | "imagenet"
  c.probe.imagenet_init = "resnet101:imagenet:microsoft/resnet-101"  # features="imagenet"
  c.probe.label_fraction = 1.0
  c.probe.extra_label_fractions = ()  # more probes on the same frozen features (E1, E2)
  c.probe.batch_size = 128
  c.probe.num_epochs = 10
  c.probe.learning_rate = 1e-3
  c.probe.solver = "adam"           # "adam" (the paper's) | "lbfgs" (converged, CLIP's protocol)

  c.baseline = ml_collections.ConfigDict()
  c.baseline.model = "resnet101"
  c.baseline.init = "imagenet:microsoft/resnet-101"
  c.baseline.dtype = "float32"
  c.baseline.width = 64
  c.baseline.batch_size = 64
  c.baseline.num_epochs = 25
  c.baseline.learning_rate = 1e-3

  # What every evaluator shares; `evals` chooses the evaluators (`rrjax.evaluators`).
  c.eval = ml_collections.ConfigDict()
  c.eval.repeats = 10               # independent corruption draws
  c.eval.levels = ()                # severities of config.operator to test; () = trained one
  c.eval.operators = ()             # explicit operator specs to test (overrides levels)
  c.eval.data_name = ""             # evaluate on another data set (e.g. ImageNet-100C)
  c.eval.batch_size = 256
  c.evals = evals("classification", "zero_shot", "agreement")

  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.log_every_steps = 50            # metrics are averaged over each window of this many steps
  c.profile_steps = ()              # (start, stop): jax.profiler trace of those training steps
  return c


def evaluator_options(name: str, spec) -> dict:
  """`config.evals[name]` validated and completed with its type's defaults."""
  spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
  kind = spec.pop("type", None)
  if kind not in EVALUATORS:
    raise ValueError(f"evals.{name}.type={kind!r}; allowed: {', '.join(EVALUATORS)}.")
  unknown = sorted(set(spec) - set(EVALUATORS[kind]))
  if unknown:
    raise ValueError(f"evals.{name} has unknown option(s) {unknown}; a {kind!r} evaluator "
                     f"takes {sorted(EVALUATORS[kind]) or 'none'}.")
  return {"type": kind, **EVALUATORS[kind], **spec}


def evals(*types: str) -> ml_collections.ConfigDict:
  """`config.evals` with one evaluator of each type, named after it, at its defaults."""
  return ml_collections.ConfigDict({t: evaluator_options(t, {"type": t}) for t in types})


def eval_types(config) -> set[str]:
  return {spec.type for spec in config.evals.values()}


def _parse_value(text: str):
  """"0.9" -> 0.9, "0.5-0.95" -> (0.5, 0.95), "true" -> True, "21" -> 21, else the text."""
  lowered = text.lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  for parse in (int, float):
    try:
      return parse(text)
    except ValueError:
      pass
  low, sep, high = text.partition("-")
  if sep:
    try:
      return (float(low), float(high))
    except ValueError:
      pass
  return text


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """The `get_config(arg)` argument: "p=0.9,smoke" -> {p: 0.9, smoke: True, ...}.

  A bare name sets a boolean; `a-b` is a range (a, b). Unknown names are rejected so a
  typo in a command line is not silently ignored.
  """
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    name, sep, text = item.partition("=")
    if name not in defaults:
      raise ValueError(f"config argument {name!r} is not one of {sorted(defaults)}.")
    # Any type: a level may become a range ("p=0.5-0.95").
    values[name] = _parse_value(text) if sep else True
  return ml_collections.ConfigDict(values)


# Arguments every experiment family accepts (`configs/<family>.py:name=value,...`).
COMMON_ARGS = {
    "levels": "",         # test severities, "/"-separated (E3, E9): levels=0.96/0.99
    "fractions": "",      # extra probe label fractions (E1 10%, E2): fractions=0.1/0.01
    "baseline": False,    # also train and test the supervised baseline (E1)
    "baseline_init": "",  # its initial weights, e.g. imagenet:/ckpt/in100_resnet101 (E10)
    "smoke": False,       # one-minute CPU run on generated data with a tiny teacher
}


def _slash_floats(text: str) -> tuple[float, ...]:
  return tuple(float(v) for v in str(text).split("/"))


def apply_common_args(c: ml_collections.ConfigDict, args) -> ml_collections.ConfigDict:
  """Applies the `COMMON_ARGS` part of a parsed `get_config` argument to `c`."""
  if args.levels:
    c.eval.levels = _slash_floats(args.levels)
  if args.fractions:
    c.probe.extra_label_fractions = _slash_floats(args.fractions)
  if args.baseline or args.baseline_init:
    c.stages = tuple(s for s in STAGES if s in c.stages or s == "baseline")
  if args.baseline_init:
    c.baseline.init = args.baseline_init
  if args.smoke:
    from rrjax import smoke  # Creates small assets on first use.
    smoke.shrink(c)
  return c


def load_config(path_and_arg: str) -> ml_collections.ConfigDict:
  """`load_config("configs/mask.py:p=0.5")`: what `--config=` gives, for tools and tests."""
  path, _, arg = path_and_arg.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist.")
  name = "rrjax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()  # as config_flags
  config.lock()
  return config


def get_field(config: ml_collections.ConfigDict, dotted: str):
  """`get_field(c, "probe.batch_size")` is `c.probe.batch_size`."""
  for part in dotted.split("."):
    config = config[part]
  return config


def _dotted_fields(config, prefix: str = "") -> list[str]:
  fields = []
  for name, value in config.items():
    fields.append(prefix + name)
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      fields += _dotted_fields(value, f"{prefix}{name}.")
  return fields


def unknown_field(config: ml_collections.ConfigDict, dotted: str) -> str | None:
  """None if `--config.<dotted>` names a field of `config`; else what is wrong, with the
  nearest fields or the valid ones at that level."""
  node, parts = config, dotted.split(".")
  for depth, part in enumerate(parts):
    if "[" in part:  # An element of a sequence: ml_collections checks the index itself.
      return None
    if not isinstance(node, (ml_collections.ConfigDict, dict)):
      return (f"{'.'.join(parts[:depth])} is a value ({node!r}), not a group of fields; "
              f"set it whole with --config.{'.'.join(parts[:depth])}=...")
    negated_bool = (depth == len(parts) - 1 and part.startswith("no")  # --config.nox
                    and isinstance(node.get(part[2:]), bool))
    if part not in node and not negated_bool:
      parent = ".".join(parts[:depth])
      near = difflib.get_close_matches(dotted, _dotted_fields(config), n=3, cutoff=0.75)
      if near:
        return f"no such config field; did you mean {', '.join(near)}?"
      return (f"no such config field; the fields of {parent or 'the config'} are "
              f"{', '.join(sorted(node))}.")
    node = node.get(part)
  return None


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ValueError naming the field for impossible values; reads no data."""
  unknown = [s for s in config.stages if s not in STAGES]
  if unknown:
    raise ValueError(f"stages={tuple(config.stages)} has unknown stage(s) {unknown}; "
                     f"allowed: {', '.join(STAGES)}.")
  operators.build(config.operator)  # Raises ValueError naming the bad operator field.
  _check_attacks(config)
  losses.check_loss_config(config.loss.kind, config.loss.temperature)
  for field in ("batch_size", "probe.batch_size", "baseline.batch_size", "eval.batch_size",
                "cache.batch_size"):
    value = get_field(config, field)
    if value <= 0 or value % num_devices:
      raise ValueError(f"{field}={value} must be a positive multiple of the number of "
                       f"devices ({num_devices}); set --config.{field} to a multiple of "
                       f"{num_devices}.")
  for field in ("num_epochs", "probe.num_epochs", "baseline.num_epochs", "eval.repeats",
                "cache.num_views"):
    value = get_field(config, field)
    if value < 1:
      raise ValueError(f"{field}={value} must be at least 1.")
  workers.resolve_num_workers(config.data.num_workers)  # Raises naming data.num_workers.
  profile = tuple(config.profile_steps)
  if profile and not (len(profile) == 2 and 0 <= profile[0] < profile[1]):
    raise ValueError(f"profile_steps={profile} must be () or (start, stop) with "
                     "0 <= start < stop; it traces steps start+1..stop of each training stage.")
  if config.cache.ram_budget_gb < 0:
    raise ValueError(f"cache.ram_budget_gb={config.cache.ram_budget_gb} must be >= 0 "
                     "(0 keeps every lookup on the cache's storage).")
  for fraction in (config.probe.label_fraction, *config.probe.extra_label_fractions):
    if not 0 < fraction <= 1:
      raise ValueError(f"probe.label_fraction={fraction} must be in (0, 1].")
  if config.probe.features not in PROBE_FEATURES:
    raise ValueError(f"probe.features={config.probe.features!r}; allowed: "
                     f"{', '.join(PROBE_FEATURES)}.")
  if config.student.batch_norm not in STUDENT_BATCH_NORMS:
    raise ValueError(f"student.batch_norm={config.student.batch_norm!r}; allowed: "
                     f"{', '.join(STUDENT_BATCH_NORMS)}.")
  if config.probe.solver not in PROBE_SOLVERS:
    raise ValueError(f"probe.solver={config.probe.solver!r}; allowed: "
                     f"{', '.join(PROBE_SOLVERS)}.")
  _check_evals(config)
  if config.teacher.mode not in ("cached", "online"):
    raise ValueError(f"teacher.mode={config.teacher.mode!r}; allowed: 'cached', 'online'.")
  if config.data.source in ("folder", "records") and not os.path.isdir(config.data.root):
    raise ValueError(f"data.root={config.data.root!r} is not a directory; point "
                     "--config.data.root at the data set (data.source="
                     f"{config.data.source!r}).")


def _check_attacks(config) -> None:
  """Attacks (operator kind "pgd") maximise the student's training loss, so only the
  student stage can run them: refuse them wherever no student is being trained."""
  for i, spec in enumerate(config.eval.operators):
    if operators.adversarial_fields(spec):
      raise ValueError(
          f"eval.operators[{i}] ({operators.describe(spec)}) is an attack on a training "
          "loss, but test operators run without one; measure robustness with an evaluator "
          "of type 'adversarial' (APGD against each classifier) and keep natural operators "
          "in eval.operators.")
  attacks = operators.adversarial_fields(config.operator)
  if not attacks:
    return
  fitted = [s for s in ("probe", "baseline") if s in config.stages]
  if fitted:
    raise ValueError(
        f"{attacks[0]} is an attack on the student's loss (kind 'pgd'), but stages {fitted} "
        "fit on config.operator with no student to attack. Train the student here (stages "
        "cache, student, eval) and fit probes in a second run with student.restore_from="
        "WORKDIR and a natural operator (configs/adversarial.py:student=WORKDIR).")
  testing = sorted(eval_types(config) & set(TEST_OPERATOR_EVALUATORS))
  if "eval" in config.stages and testing and not config.eval.operators:
    raise ValueError(
        f"evaluators {testing} test eval.operators, empty here, so config.operator, but "
        f"{attacks[0]} (kind 'pgd') is an attack that needs a training loss; set "
        "eval.operators to natural operators, e.g. ({'kind': 'identity'},), and measure "
        "robustness with an evaluator of type 'adversarial'.")


def _check_adversarial_evaluator(name: str, options: dict) -> None:
  eps = options["eps"]
  if (not isinstance(eps, (tuple, list)) or not eps
      or not all(isinstance(e, (int, float)) and not isinstance(e, bool) and e > 0
                 for e in eps)):
    raise ValueError(f"evals.{name}.eps={eps!r} must be a non-empty tuple of budgets > 0 "
                     "(linf: in [0, 1] pixel units, e.g. (2/255, 4/255)).")
  if options["norm"] not in adversarial.NORMS:
    raise ValueError(f"evals.{name}.norm={options['norm']!r}; allowed: "
                     f"{', '.join(adversarial.NORMS)}.")
  attacks = tuple(options["losses"])
  if not attacks or not set(attacks) <= set(adversarial.APGD_LOSSES):
    raise ValueError(f"evals.{name}.losses={attacks}; allowed: a non-empty subset of "
                     f"{adversarial.APGD_LOSSES}.")
  for field in ("steps", "num_images"):
    if not isinstance(options[field], int) or options[field] < 1:
      raise ValueError(f"evals.{name}.{field}={options[field]!r} must be an integer >= 1.")
  unknown = sorted(set(options["methods"]) - set(ADVERSARIAL_METHODS))
  if unknown:
    raise ValueError(f"evals.{name}.methods has {unknown}; allowed: "
                     f"{', '.join(ADVERSARIAL_METHODS)}.")


def _check_evals(config) -> None:
  for name, spec in config.evals.items():
    options = evaluator_options(name, spec)
    if options["type"] == "adversarial":
      _check_adversarial_evaluator(name, options)
    if options["type"] in ("zero_shot", "adversarial"):
      if options["templates"] not in ("clip80", "single"):
        raise ValueError(f"evals.{name}.templates={options['templates']!r}; allowed: "
                         "clip80, single.")
      if options["class_names_file"] and not os.path.isfile(options["class_names_file"]):
        raise ValueError(f"evals.{name}.class_names_file={options['class_names_file']!r} "
                         "does not exist.")
    if options["type"] == "restoration":
      from rrjax import baselines  # Raises ValueError for an unknown or unfit restoration.
      baselines.restoration(options["restore"], config.operator.to_dict())
    if options["type"] in ("classification", "out_of_class", "restoration"):
      methods = options.get("methods", ("probe",)) or tuple(
          m for m in ("probe", "baseline") if m in config.stages)
      if not set(methods) <= {"probe", "baseline"}:
        raise ValueError(f"evals.{name}.methods={tuple(methods)}; allowed: probe, baseline.")
    if (options["type"] == "agreement" and "eval" in config.stages
        and "student" not in config.stages and not config.student.restore_from):
      raise ValueError(f"evals.{name} (agreement) needs a student: add 'student' to "
                       "config.stages or set student.restore_from, or remove the evaluator.")
