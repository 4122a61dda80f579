"""The CLIP ViT image tower as an rrjax student, and Hugging Face CLIP checkpoint I/O.

The student is the teacher's own architecture (the authors' setting, SPEC §5): the
vision transformer of transformers' FlaxCLIPModel followed by its visual projection,
with no extra head. Its parameter tree is exactly the `vision_model` and
`visual_projection` sub-trees of FlaxCLIPModel, so the teacher's weights load by
sub-tree (`load_teacher_init`) and a trained student writes back into a Hugging Face
CLIP checkpoint next to the original text tower (`export_hf_clip`). The HF CLIP
teacher (`rrjax.teachers.hf_clip`) runs this same module, so "student initialised
from the teacher" is the teacher's function by construction.

Student config (`config.student`) fields used here:
  model = "clip_vit"
  teacher_name: hub id or local directory of the CLIP checkpoint whose architecture
    (and, with init "teacher", weights) the student takes; normally the same value
    as `config.teacher.name`.
  init: "teacher" (the checkpoint's image-tower weights, `load_teacher_init`) or
    "random"; `init_variables` (reached through `rrjax.models.init_variables`) does it.
  from_pt: optional, default False: the checkpoint's weights are PyTorch files.
  dtype: compute dtype "float32" | "bfloat16" | "float16"; parameters stay float32.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import types

os.environ.setdefault("USE_TORCH", "0")
os.environ.setdefault("USE_TF", "0")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax.traverse_util import flatten_dict, unflatten_dict  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import CLIPConfig, CLIPImageProcessor, FlaxCLIPModel  # noqa: E402
from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax  # noqa: E402
from transformers.models.clip.configuration_clip import CLIPVisionConfig  # noqa: E402
from transformers.models.clip.modeling_flax_clip import FlaxCLIPVisionTransformer  # noqa: E402
from transformers.utils import (  # noqa: E402
    FLAX_WEIGHTS_INDEX_NAME, FLAX_WEIGHTS_NAME, SAFE_WEIGHTS_NAME, cached_file)
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402

from rrjax import models  # noqa: E402

STUDENT_INITS = ("random", "teacher")
PROCESSOR_FILE = "preprocessor_config.json"
# Tokenizer and image-processor files, copied verbatim into exported checkpoints.
COPIED_FILES = (PROCESSOR_FILE, "tokenizer_config.json", "special_tokens_map.json",
                "vocab.json", "merges.txt", "tokenizer.json", "added_tokens.json")


def check_name(name_or_path, field: str) -> str:
  """Hub ids pass through; anything written as a path must exist."""
  if not isinstance(name_or_path, str) or not name_or_path:
    raise ValueError(f"{field} must be a Hugging Face hub id or a local directory, got "
                     f"{name_or_path!r}.")
  looks_local = name_or_path.startswith(("/", "./", "../", "~")) or os.path.exists(name_or_path)
  if looks_local and not os.path.isdir(os.path.expanduser(name_or_path)):
    raise FileNotFoundError(f"{field}={name_or_path!r}: no such directory; give a saved "
                            "CLIP checkpoint directory or a hub id.")
  return os.path.expanduser(name_or_path) if looks_local else name_or_path


@dataclasses.dataclass(frozen=True)
class CLIPCheckpointSpec:
  """What a CLIP checkpoint says about its image tower and its preprocessing."""
  name: str
  config: CLIPConfig
  image_size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]

  @property
  def dim(self) -> int:
    return self.config.projection_dim


def _crop_size(processor: dict):
  crop = processor.get("crop_size")
  if isinstance(crop, dict):
    return crop.get("height"), crop.get("width")
  return (crop, crop) if crop is not None else None


def read_spec(name_or_path: str) -> CLIPCheckpointSpec:
  """Reads architecture and preprocessing constants (no weights) from a checkpoint.

  Mean and std come from the checkpoint's CLIPImageProcessor config; without one,
  CLIP's standard constants are used. The input size is the vision config's
  image_size (the position embeddings fix it); a processor crop size that disagrees
  is refused rather than silently ignored.
  """
  config = CLIPConfig.from_pretrained(name_or_path)
  image_size = int(config.vision_config.image_size)
  mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
  processor_path = cached_file(name_or_path, PROCESSOR_FILE,
                               _raise_exceptions_for_missing_entries=False)
  if processor_path is not None:
    with open(processor_path) as f:
      processor = json.load(f)
    if processor.get("do_normalize", True):
      mean = processor.get("image_mean", mean)
      std = processor.get("image_std", std)
    else:
      mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    crop = _crop_size(processor)
    if processor.get("do_center_crop", True) and crop is not None and crop != (image_size,
                                                                               image_size):
      raise ValueError(
          f"{processor_path}: crop_size {crop} differs from the model's image_size "
          f"{image_size}; fix the processor config so both agree.")
  return CLIPCheckpointSpec(name=name_or_path, config=config, image_size=image_size,
                            mean=tuple(float(m) for m in mean),
                            std=tuple(float(s) for s in std))


def clip_processor(image_size: int, mean=OPENAI_CLIP_MEAN,
                   std=OPENAI_CLIP_STD) -> CLIPImageProcessor:
  """A CLIPImageProcessor whose centre crop is exactly the model's input size."""
  return CLIPImageProcessor(size={"shortest_edge": image_size},
                            crop_size={"height": image_size, "width": image_size},
                            image_mean=list(mean), image_std=list(std))


def parameter_shapes(model: FlaxCLIPModel):
  """The model's parameter tree as ShapeDtypeStructs (traced, nothing computed)."""
  size = model.config.vision_config.image_size
  return jax.eval_shape(
      functools.partial(model.init_weights, input_shape=((1, 1), (1, size, size, 3))),
      jax.random.PRNGKey(0))


def load_clip(name_or_path: str, *, from_pt: bool = False):
  """(FlaxCLIPModel, float32 params) without a throw-away random initialisation.

  PyTorch weights (model.safetensors) are read when `from_pt` is set or when the
  checkpoint has no Flax weights (many hub CLIPs ship PyTorch weights only)."""
  has_flax_weights = any(
      cached_file(name_or_path, f, _raise_exceptions_for_missing_entries=False) is not None
      for f in (FLAX_WEIGHTS_NAME, FLAX_WEIGHTS_INDEX_NAME))
  if has_flax_weights and not from_pt:
    model, params = FlaxCLIPModel.from_pretrained(name_or_path, _do_init=False)
  else:
    model = FlaxCLIPModel(CLIPConfig.from_pretrained(name_or_path), _do_init=False)
    params = _load_pytorch_safetensors(name_or_path, model)
  return model, jax.tree.map(lambda x: np.asarray(x, np.float32), params)


def _load_pytorch_safetensors(name_or_path: str, model: FlaxCLIPModel) -> dict:
  """PyTorch-format CLIP weights (model.safetensors) converted by transformers' own
  converter. transformers refuses PyTorch weights together with _do_init=False (it
  reads the random parameters only for their shapes), so the converter gets the
  shapes alone: no eager random initialisation, which takes seconds even for a tiny
  model."""
  path = cached_file(name_or_path, SAFE_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False)
  if path is None:
    raise FileNotFoundError(
        f"{name_or_path!r} has no {SAFE_WEIGHTS_NAME} (nor Flax weights unless from_pt); "
        "PyTorch weights are read in single-file safetensors format only (torch is not a "
        "dependency).")
  with safe_open(path, framework="numpy") as f:
    tensors = {key: f.get_tensor(key) for key in f.keys()}
  shapes = parameter_shapes(model)
  shape_source = types.SimpleNamespace(base_model_prefix=model.base_model_prefix, params=shapes)
  converted = flatten_dict(convert_pytorch_state_dict_to_flax(tensors, shape_source))
  expected = flatten_dict(shapes)
  missing = sorted(".".join(k) for k in expected.keys() - converted.keys())
  if missing:
    raise ValueError(f"{path}: not a CLIP checkpoint of this architecture; missing {missing[:5]}.")
  # Keys outside the Flax model (e.g. PyTorch's position_ids buffers) are dropped.
  return unflatten_dict({k: converted[k] for k in expected})


def image_tower_params(clip_params) -> dict:
  """The sub-trees of FlaxCLIPModel parameters that CLIPImageEncoder uses."""
  return {"vision_model": clip_params["vision_model"],
          "visual_projection": clip_params["visual_projection"]}


class CLIPImageEncoder(nn.Module):
  """CLIP's vision transformer plus visual projection on [0,1] images.

  Returns (embedding in CLIP's joint space [B, projection_dim], {"pre_logits":
  post-layernorm CLS features [B, hidden]}), both float32, unnormalised.
  """
  vision_config: CLIPVisionConfig
  projection_dim: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images01, train: bool = False):
    size = self.vision_config.image_size
    if images01.ndim != 4 or images01.shape[1:] != (size, size, 3):
      raise ValueError(f"The CLIP ViT expects images [B, {size}, {size}, 3] (its position "
                       f"embeddings fix the size), got {images01.shape}; set the crop size "
                       f"to {size}.")
    pixels = (images01.astype(jnp.float32) - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    # A "dropout" rng is needed only if the config has attention_dropout > 0 (CLIP: 0).
    tower = FlaxCLIPVisionTransformer(self.vision_config, dtype=self.dtype, name="vision_model")
    pooled = tower(pixel_values=pixels.astype(self.dtype), deterministic=not train)[1]
    projection = nn.Dense(self.projection_dim, use_bias=False, dtype=self.dtype,
                          kernel_init=nn.initializers.normal(0.02), name="visual_projection")
    return projection(pooled).astype(jnp.float32), {"pre_logits": pooled.astype(jnp.float32)}


def encoder_from_spec(spec: CLIPCheckpointSpec, dtype=jnp.float32) -> CLIPImageEncoder:
  return CLIPImageEncoder(vision_config=spec.config.vision_config,
                          projection_dim=spec.dim, mean=spec.mean, std=spec.std, dtype=dtype)


def build(cfg, num_outputs: int) -> CLIPImageEncoder:
  """The `clip_vit` student for `config.student` (see the module docstring)."""
  name = check_name(cfg.get("teacher_name"), "student.teacher_name")
  if cfg.get("init", "random") not in STUDENT_INITS:
    raise ValueError(f"student.init={cfg.get('init')!r} is not supported for clip_vit; use one "
                     f"of {STUDENT_INITS}.")
  dtype = models.parse_dtype(cfg.get("dtype", "float32"), "student.dtype")
  spec = read_spec(name)
  if num_outputs != spec.dim:
    raise ValueError(
        f"The clip_vit student has no extra head: num_outputs={num_outputs} must equal the "
        f"projection dim {spec.dim} of {name!r}. Use a ResNet student for other output sizes.")
  return encoder_from_spec(spec, dtype)


def load_teacher_init(name_or_path: str, *, from_pt: bool = False) -> dict:
  """Student variables {"params": ...} (float32) copied from a CLIP checkpoint."""
  _, params = load_clip(check_name(name_or_path, "student.teacher_name"), from_pt=from_pt)
  return {"params": image_tower_params(params)}


def init_variables(cfg, module: CLIPImageEncoder, rng, image_size: int) -> dict:
  """Initial variables of a `build(cfg, ...)` module as `cfg.init` says."""
  if cfg.get("init", "random") == "teacher":
    return load_teacher_init(cfg.get("teacher_name"), from_pt=bool(cfg.get("from_pt", False)))
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return jax.jit(functools.partial(module.init, train=False))(rng, images)


def _shapes(tree) -> dict:
  return {jax.tree_util.keystr(path): np.shape(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_same_structure(student, original, where: str) -> None:
  student, original = _shapes(student), _shapes(original)
  if student != original:
    differing = sorted(k for k in student.keys() | original.keys()
                       if student.get(k) != original.get(k))
    raise ValueError(f"{where}: the student's parameters do not have the shapes of the "
                     f"checkpoint's image tower (first differences: {differing[:3]}); export "
                     "with the checkpoint the student was built from.")


def export_hf_clip(variables, teacher_name_or_path: str, out_dir: str, *,
                   from_pt: bool = False) -> str:
  """Writes a Hugging Face CLIP checkpoint: the student's image tower + original text tower.

  `out_dir` then loads with `FlaxCLIPModel.from_pretrained(out_dir)`. Tokenizer and
  image-processor files are copied from the teacher; a teacher without a processor
  config gets one written with the constants the student normalises with. Returns
  `out_dir`.
  """
  name = check_name(teacher_name_or_path, "teacher_name_or_path")
  spec = read_spec(name)
  model, params = load_clip(name, from_pt=from_pt)
  student = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32),
                         dict(variables["params"]))
  _check_same_structure(student, image_tower_params(params), f"export to {out_dir}")
  params = {**params, **student}
  model.save_pretrained(out_dir, params=params)
  for filename in COPIED_FILES:
    path = cached_file(name, filename, _raise_exceptions_for_missing_entries=False)
    if path is not None:
      shutil.copyfile(path, os.path.join(out_dir, filename))
  if not os.path.exists(os.path.join(out_dir, PROCESSOR_FILE)):
    clip_processor(spec.image_size, spec.mean, spec.std).save_pretrained(out_dir)
  return out_dir
