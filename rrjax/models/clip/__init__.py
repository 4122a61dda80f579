"""rrjax's own CLIP: Flax towers, checkpoints in both published layouts, tokenizer.

  ckpt = clip.open_checkpoint("timm/resnet101_clip.openai")   # configs only
  variables = ckpt.variables()                                # weights, no torch
  encoder = clip.CLIPImageEncoder(ckpt.spec)
  embeddings, _ = encoder.apply(clip.image_variables(variables), images01)

Submodules: `spec` (architecture + preprocessing from either config), `modules` (the
Flax towers), `convert` (PyTorch names <-> rrjax variables), `checkpoint` (reading and
writing), `tokenizer` (CLIP's BPE through `tokenizers`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from rrjax.models.clip.checkpoint import Checkpoint, open_checkpoint, save
from rrjax.models.clip.modules import CLIPImageEncoder, CLIPText
from rrjax.models.clip.spec import CLIPSpec, Preprocess, TextSpec, VisionSpec

# Top-level parameter sub-trees of each tower.
IMAGE_TOWER = ("vision_model", "visual_projection", "visual")
TEXT_TOWER = ("text_model", "text_projection")


def _subtree(variables: dict, names: tuple[str, ...]) -> dict:
  return {collection: {k: v for k, v in tree.items() if k in names}
          for collection, tree in variables.items()
          if any(k in names for k in tree)}


def image_variables(variables: dict) -> dict:
  """The variables `CLIPImageEncoder` uses, from a whole model's."""
  return _subtree(variables, IMAGE_TOWER)


def text_params(variables: dict) -> dict:
  """The parameters `CLIPText` uses, from a whole model's."""
  return _subtree(variables, TEXT_TOWER)["params"]


def with_image_tower(variables: dict, image: dict) -> dict:
  """A whole model's variables with the image tower replaced (e.g. by a trained
  student); the shapes must agree."""
  flat, new = flatten_dict(variables), flatten_dict(image)
  old = flatten_dict(image_variables(variables))
  differing = sorted("/".join(p) for p in old.keys() | new.keys()
                     if p not in old or p not in new or np.shape(old[p]) != np.shape(new[p]))
  if differing:
    raise ValueError("the image tower does not have the checkpoint's architecture (first "
                     f"differences: {differing[:3]}); use the checkpoint the student was built "
                     "from.")
  flat.update({p: np.asarray(jax.device_get(v), np.float32) for p, v in new.items()})
  return unflatten_dict(flat)


def variable_shapes(spec: CLIPSpec) -> dict:
  """The whole model's variables as ShapeDtypeStructs (traced, nothing compiled)."""
  size = spec.vision.image_size
  image = jax.eval_shape(lambda: CLIPImageEncoder(spec).init(
      jax.random.key(0), jnp.zeros((1, size, size, 3))))
  shapes = {k: dict(v) for k, v in image.items()}
  if spec.text is not None:
    text = jax.eval_shape(lambda: CLIPText(spec.text, spec.embed_dim).init(
        jax.random.key(0), jnp.zeros((1, spec.text.context_length), jnp.int32)))
    shapes["params"].update(text["params"])
    shapes["params"]["logit_scale"] = jax.ShapeDtypeStruct((), jnp.float32)
  return shapes


def random_variables(spec: CLIPSpec, seed: int = 0) -> dict:
  """Random float32 variables drawn in numpy (no compile, well under a second for tiny
  models). Kernels and embeddings have variance 4/fan-in so the image embedding depends
  strongly on the image (with CLIP's small init every image of a random tower embeds to
  nearly one direction); norms and statistics are away from 1/0 so a dropped or swapped
  entry changes the outputs."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1]
    if name == "logit_scale":
      return np.full(leaf.shape, np.log(1 / 0.07), np.float32)
    if name in ("kernel", "embedding", "class_embedding", "positional_embedding"):
      fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
      return (2.0 / np.sqrt(fan_in) * rng.standard_normal(leaf.shape)).astype(np.float32)
    if name == "var":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    offset = 1.0 if name == "scale" else 0.0
    return (offset + 0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)

  flat = {path: draw(path, leaf) for path, leaf in flatten_dict(variable_shapes(spec)).items()}
  if spec.vision.kind == "resnet":
    # Post-ReLU features are positive, so random kernels add a large image-independent
    # component and every image embeds to nearly one direction (cosine ~0.97). Kernels
    # with zero mean over their inputs respond to contrasts only (the stem's first conv
    # keeps colour), and a small positional embedding lets the content through the
    # attention pool: cosine between images ~0.5.
    stem = ("params", "visual", "conv1", "kernel")
    for path, value in flat.items():
      if path[-1] == "kernel" and value.ndim == 4 and path != stem:
        flat[path] = value - value.mean(axis=(0, 1, 2), keepdims=True)
      elif path[-1] == "positional_embedding":
        flat[path] = 0.1 * value
  return unflatten_dict(flat)


def tiny_spec(vision: str = "resnet", image_size: int = 32) -> CLIPSpec:
  """A tiny CLIP (both towers, CLIP's real vocabulary) for tests and smoke runs."""
  if image_size % 32:
    raise ValueError(f"image_size={image_size} must be a multiple of 32.")
  if vision == "resnet":
    tower = VisionSpec(kind="resnet", image_size=image_size, width=8, layers=(1, 1, 1, 1),
                       heads=4)
  elif vision == "vit":
    tower = VisionSpec(kind="vit", image_size=image_size, width=32, layers=2, heads=4,
                       patch_size=8, mlp_dim=64)
  else:
    raise ValueError(f"vision={vision!r}; choose 'resnet' or 'vit'.")
  return CLIPSpec(embed_dim=16, vision=tower,
                  text=TextSpec(context_length=32, width=32, heads=4, layers=2, mlp_dim=64))


def create_tiny_clip(path: str, *, vision: str = "resnet", layout: str = "open_clip",
                     image_size: int = 32, seed: int = 0) -> str:
  """Saves a tiny random CLIP in a real on-disk layout ("open_clip" or "hf") to `path`.
  Offline and fast; the open_clip layout carries no tokenizer files (CLIP's standard BPE
  is used, as for OpenAI's published ResNets)."""
  spec = tiny_spec(vision, image_size)
  save(path, spec, random_variables(spec, seed), layout)
  if layout == "hf":
    from rrjax.models.clip import tokenizer
    tokenizer.write_hf_files(path, spec.text.context_length)
  return os.fspath(path)


__all__ = ["CLIPImageEncoder", "CLIPSpec", "CLIPText", "Checkpoint", "Preprocess", "TextSpec",
           "VisionSpec", "create_tiny_clip", "image_variables", "open_checkpoint",
           "random_variables", "save", "text_params", "tiny_spec", "variable_shapes",
           "with_image_tower"]
