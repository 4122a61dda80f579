"""Students and supervised baselines: `build_model(cfg, num_outputs)`, `init_variables`.

`cfg` is the `config.student` ConfigDict: `model` (a ResNet preset, or "clip": the
image tower of the CLIP checkpoint `teacher_name`, ViT or ModifiedResNet, with no extra
head), `init` ("random", "imagenet:<hub id or local dir>" for ResNets, "teacher" for
"clip": the checkpoint's own weights, the paper's setting) and `dtype` ("float32" |
"bfloat16" | "float16" | "auto": bfloat16 on GPUs and TPUs, float32 on CPUs; the compute
dtype: parameters, optimiser state, BatchNorm statistics and outputs stay float32).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from rrjax.models import pretrained, resnet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# "auto": bfloat16 where the matrix units are made for it (GPUs, TPUs), float32 on CPUs,
# where XLA emulates bfloat16 arithmetic and it costs time instead of saving it.
AUTO = "auto"
MODEL_NAMES = (*resnet.PRESETS, "clip")
CLIP_INITS = ("teacher", "random")
_IMAGENET = "imagenet:"


def resolve_dtype(name: str) -> str:
  """The compute dtype's name, "auto" resolved for the default backend."""
  if name != AUTO:
    return name
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def parse_dtype(name: str, field: str = "student.dtype"):
  """The jnp dtype of `name` ("float32", "bfloat16", "float16" or "auto")."""
  if name not in (*DTYPES, AUTO):
    raise ValueError(f"{field}={name!r}; choose one of {[*DTYPES, AUTO]}.")
  return DTYPES[resolve_dtype(name)]


def _check_resnet_init(init: str) -> None:
  if init == "random" or (init.startswith(_IMAGENET) and len(init) > len(_IMAGENET)):
    return
  raise ValueError(
      f"student.init={init!r} for a ResNet student; use 'random' or 'imagenet:<hub id or local "
      "dir>' (e.g. 'imagenet:microsoft/resnet-101'); init='teacher' needs student.model='clip'.")


def _clip_checkpoint(cfg):
  from rrjax.models import clip
  if cfg.get("init") not in CLIP_INITS:
    raise ValueError(f"student.init={cfg.get('init')!r} for student.model='clip'; use one of "
                     f"{list(CLIP_INITS)}.")
  return clip.open_checkpoint(cfg.get("teacher_name"), "student.teacher_name")


def build_model(cfg, num_outputs: int) -> nn.Module:
  """The student/baseline module: `apply(variables, images01, train=..., mutable=...)`
  -> `(outputs [B, num_outputs] float32, aux with "pre_logits")`."""
  if not isinstance(num_outputs, int) or num_outputs <= 0:
    raise ValueError(f"num_outputs={num_outputs!r} must be a positive int (teacher dim or "
                     "classes).")
  if cfg.model == "clip":
    from rrjax.models import clip
    checkpoint = _clip_checkpoint(cfg)
    if num_outputs != checkpoint.spec.embed_dim:
      raise ValueError(
          f"The clip student has no extra head: its output is the embedding dim "
          f"{checkpoint.spec.embed_dim} of {checkpoint.name!r}, not {num_outputs}. Use a ResNet "
          "student for other output sizes.")
    return clip.CLIPImageEncoder(checkpoint.spec, parse_dtype(cfg.dtype))
  if cfg.model in resnet.PRESETS:
    _check_resnet_init(cfg.init)
    return resnet.resnet(cfg.model, num_outputs, parse_dtype(cfg.dtype),
                         width=int(cfg.get("width", 64)))
  raise ValueError(f"student.model={cfg.model!r}; choose one of {list(MODEL_NAMES)}.")


def init_variables(cfg, module: nn.Module, rng, image_size: int) -> dict:
  """Initial variables of `module` (from `build_model(cfg, ...)`) as `cfg.init` says.

  ResNets: "random" or "imagenet:<name>" (backbone from the checkpoint, head random).
  """
  if cfg.model == "clip":
    from rrjax.models import clip
    checkpoint = _clip_checkpoint(cfg)
    if cfg.init == "teacher":
      return jax.tree.map(jnp.asarray, clip.image_variables(checkpoint.variables()))
  else:
    _check_resnet_init(cfg.init)
  # Read the checkpoint first: a wrong name or architecture fails before the compile.
  backbone = (pretrained.load_imagenet_resnet(cfg.init[len(_IMAGENET):], module)
              if cfg.init.startswith(_IMAGENET) else None)
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = jax.jit(functools.partial(module.init, train=False))(rng, images)
  return variables if backbone is None else pretrained.with_backbone(variables, backbone)
