"""Hugging Face Flax CLIP as the teacher R (transformers 4.x FlaxCLIPModel).

Image embeddings live in CLIP's joint space (vision tower, then visual projection),
unnormalised, float32. Preprocessing constants (input size, mean, std) come from the
checkpoint. `dtype` "bfloat16"/"float16" casts the image-tower parameters and runs
the image tower in that precision (the paper ran CLIP in 16-bit floats); text
embeddings are always computed in float32.

Teacher config (`config.teacher`) fields used here: `name` (hub id or local
directory), `dtype` (default "float32"), `from_pt` (default False: load PyTorch
weights, e.g. a `model.safetensors` written by PyTorch).
"""

from __future__ import annotations

import hashlib
import json
import os

os.environ.setdefault("USE_TORCH", "0")
os.environ.setdefault("USE_TF", "0")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from transformers import AutoTokenizer, CLIPConfig, CLIPTokenizer, FlaxCLIPModel  # noqa: E402
from transformers.models.clip.tokenization_clip import bytes_to_unicode  # noqa: E402
from transformers.utils import cached_file  # noqa: E402
from transformers.utils.hub import extract_commit_hash  # noqa: E402

from rrjax import models, objectives  # noqa: E402
from rrjax.models import clip_vit  # noqa: E402

# Files whose bytes determine a local checkpoint's image embeddings (with the
# preprocessing constants, which enter the fingerprint by value).
_WEIGHT_SUFFIXES = (".msgpack", ".safetensors", ".bin", ".index.json")
_TEXT_PARAMS = ("text_model", "text_projection", "logit_scale")


def _sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def model_identity(name_or_path: str) -> dict:
  """A local directory is identified by its config and weight files' contents; a hub
  id by the id and, where the local hub cache records it, the commit."""
  if os.path.isdir(name_or_path):
    files = sorted(f for f in os.listdir(name_or_path)
                   if f == "config.json" or f.endswith(_WEIGHT_SUFFIXES))
    return {"files": {f: _sha256_file(os.path.join(name_or_path, f)) for f in files}}
  config_path = cached_file(name_or_path, "config.json")
  return {"hub_id": name_or_path, "commit": extract_commit_hash(config_path, None)}


class HFCLIPTeacher:
  """A frozen CLIP image encoder with the rrjax teacher interface (plus text)."""

  def __init__(self, name_or_path: str, *, dtype: str = "float32", from_pt: bool = False):
    self.name = clip_vit.check_name(name_or_path, "teacher.name")
    self.dtype = dtype
    compute = models.parse_dtype(dtype, "teacher.dtype")
    spec = clip_vit.read_spec(self.name)
    self.image_size, self.dim = spec.image_size, spec.dim
    self.mean, self.std = spec.mean, spec.std
    self.fingerprint = hashlib.sha256(json.dumps({
        "kind": "hf_clip", "model": model_identity(self.name), "image_size": self.image_size,
        "mean": self.mean, "std": self.std, "dtype": dtype,
    }, sort_keys=True).encode()).hexdigest()
    self._clip, clip_params = clip_vit.load_clip(self.name, from_pt=from_pt)
    self._text_params = {k: clip_params[k] for k in _TEXT_PARAMS}
    self.encoder = clip_vit.encoder_from_spec(spec, compute)
    self.params = jax.tree.map(lambda x: jnp.asarray(x, compute),
                               clip_vit.image_tower_params(clip_params))
    self._embed = jax.jit(self.apply)
    self._text_features = jax.jit(
        lambda params, ids, mask: self._clip.get_text_features(ids, mask, params=params))
    self._tokenizer = None

  def apply(self, params, images):
    """Pure and jittable: uint8 images [B,S,S,3] -> float32 embeddings [B, dim]."""
    return self.encoder.apply({"params": params}, objectives.to_unit_range(images))[0]

  def embed(self, images):
    if images.dtype != np.uint8 or images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f"{self.name}: embed takes uint8 images [B, {self.image_size}, "
                       f"{self.image_size}, 3], got {images.dtype} {images.shape}.")
    return self._embed(self.params, images)

  def embed_text(self, prompts: list[str]):
    """Text embeddings [N, dim] in CLIP's joint space (unnormalised, float32)."""
    if self._tokenizer is None:
      self._tokenizer = AutoTokenizer.from_pretrained(self.name)
    # Fixed-length padding keeps one compiled shape; causal attention makes the
    # end-of-text features independent of the padding after it.
    tokens = self._tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self._clip.config.text_config.max_position_embeddings,
                             return_tensors="np")
    return self._text_features(self._text_params, tokens["input_ids"], tokens["attention_mask"])


def class_prompts(class_names, template: str = "a photo of a {}.") -> list[str]:
  """Zero-shot prompts, one per class name (SPEC E13)."""
  if "{}" not in template:
    raise ValueError(f"prompt template {template!r} needs a '{{}}' where the class name goes.")
  return [template.format(name) for name in class_names]


def build(cfg) -> HFCLIPTeacher:
  return HFCLIPTeacher(cfg.get("name"), dtype=cfg.get("dtype", "float32"),
                       from_pt=bool(cfg.get("from_pt", False)))


def _write_byte_level_tokenizer(path: str, max_length: int) -> CLIPTokenizer:
  """A CLIP BPE tokenizer with no merges: every byte is a token, with and without the
  end-of-word marker, so any English text tokenizes. End-of-text gets the highest id,
  as in CLIP, where text features are read at the end-of-text position."""
  chars = list(bytes_to_unicode().values())
  vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
  vocab_file, merges_file = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
  with open(vocab_file, "w") as f:
    json.dump({token: i for i, token in enumerate(vocab)}, f)
  with open(merges_file, "w") as f:
    f.write("#version: 0.2\n")
  tokenizer = CLIPTokenizer(vocab_file, merges_file, model_max_length=max_length)
  tokenizer.save_pretrained(path)
  return tokenizer


def create_tiny_clip(path: str, *, image_size: int = 32, seed: int = 0) -> str:
  """Saves a tiny random FlaxCLIPModel with tokenizer and image processor to `path`.

  Offline and fast (well under a second, no compile): for tests and smoke configs.
  Patch size 8, two layers per tower, hidden size 32, projection dim 16.
  """
  if image_size % 8:
    raise ValueError(f"image_size={image_size} must be a multiple of the patch size 8.")
  os.makedirs(path, exist_ok=True)
  max_length = 64
  tokenizer = _write_byte_level_tokenizer(path, max_length)
  eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
  tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
  config = CLIPConfig(
      text_config=dict(tower, vocab_size=len(tokenizer), max_position_embeddings=max_length,
                       bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
                       eos_token_id=eos, pad_token_id=eos),
      vision_config=dict(tower, image_size=image_size, patch_size=8),
      projection_dim=16)
  model = FlaxCLIPModel(config, _do_init=False)
  model.save_pretrained(path, params=_random_params(model, seed))
  clip_vit.clip_processor(image_size).save_pretrained(path)
  return path


def _random_params(model: FlaxCLIPModel, seed: int) -> dict:
  """Random parameters drawn in numpy from the model's parameter shapes: much faster
  than transformers' own initialisation (no compile), and every tensor is non-trivial
  (random layer-norm scales and biases too), so conversions are fully exercised.

  Kernels and embeddings are drawn with variance 4/fan-in, so the image embedding
  depends strongly on the image: with CLIP's own small init, every image of a random
  tower embeds to nearly the same direction (cosine ~0.995), a degenerate teacher.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if name == "['logit_scale']":
      return np.full(leaf.shape, model.config.logit_scale_init_value, np.float32)
    if name.endswith("['kernel']") or "embedding" in name:
      fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
      return (2.0 / np.sqrt(fan_in) * rng.standard_normal(leaf.shape)).astype(np.float32)
    offset = 1.0 if name.endswith("['scale']") else 0.0
    return (offset + 0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, clip_vit.parameter_shapes(model))
