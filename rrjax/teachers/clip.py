"""A CLIP image tower as the teacher R, with its text tower for zero-shot.

Any checkpoint `rrjax.models.clip.open_checkpoint` reads: OpenAI's ResNets (the paper's
RN101: `timm/resnet101_clip.openai`) and ViTs, OpenCLIP/LAION, DFN, MetaCLIP, in the
open_clip or the transformers layout. Image embeddings live in CLIP's joint space,
unnormalised, float32; preprocessing constants come from the checkpoint. `dtype`
"bfloat16"/"float16" runs the image tower in that precision (the paper ran CLIP in
16-bit floats); text embeddings are always float32. BatchNorm (ResNets) is in
inference mode: the teacher is frozen.

Teacher config (`config.teacher`) fields used here: `name` (hub id or local directory)
and `dtype` (default "float32").
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

from rrjax import models, objectives
from rrjax.models import clip


class CLIPTeacher:
  """A frozen CLIP image encoder with the rrjax teacher interface (plus text)."""

  def __init__(self, name_or_path: str, *, dtype: str = "float32"):
    compute = models.parse_dtype(dtype, "teacher.dtype")
    self.checkpoint = clip.open_checkpoint(name_or_path, "teacher.name")
    self.name, spec = self.checkpoint.name, self.checkpoint.spec
    self.image_size, self.dim = spec.vision.image_size, spec.embed_dim
    self.fingerprint = hashlib.sha256(json.dumps({
        "kind": "clip", "model": self.checkpoint.identity(), "image_size": self.image_size,
        "mean": spec.preprocess.mean, "std": spec.preprocess.std, "dtype": dtype,
    }, sort_keys=True).encode()).hexdigest()
    variables = self.checkpoint.variables()
    self.encoder = clip.CLIPImageEncoder(spec, compute)
    self.params = jax.tree.map(lambda x: jnp.asarray(x, compute), clip.image_variables(variables))
    self._text_params = clip.text_params(variables) if spec.text else None
    self._embed = jax.jit(self.apply)
    self._embed_tokens = (jax.jit(clip.CLIPText(spec.text, spec.embed_dim).apply)
                          if spec.text else None)

  def apply(self, params, images):
    """Pure and jittable: uint8 images [B,S,S,3] -> float32 embeddings [B, dim].
    `params` are the image tower's variables (BatchNorm statistics included)."""
    return self.encoder.apply(params, objectives.to_unit_range(images))[0]

  def embed(self, images):
    if images.dtype != np.uint8 or images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f"{self.name}: embed takes uint8 images [B, {self.image_size}, "
                       f"{self.image_size}, 3], got {images.dtype} {images.shape}.")
    return self._embed(self.params, images)

  def embed_text(self, prompts: list[str]):
    """Text embeddings [N, dim] in CLIP's joint space (unnormalised, float32)."""
    if self._text_params is None:
      raise ValueError(f"{self.name} has no text tower; zero-shot needs one "
                       "(remove the zero_shot evaluator from config.evals).")
    ids = self.checkpoint.tokenizer()(list(prompts))
    return self._embed_tokens({"params": self._text_params}, jnp.asarray(ids))


def class_prompts(class_names, template: str = "a photo of a {}.") -> list[str]:
  """Zero-shot prompts, one per class name (SPEC E13)."""
  if "{}" not in template:
    raise ValueError(f"prompt template {template!r} needs a '{{}}' where the class name goes.")
  return [template.format(name) for name in class_names]


def build(cfg) -> CLIPTeacher:
  return CLIPTeacher(cfg.get("name"), dtype=cfg.get("dtype", "float32"))
