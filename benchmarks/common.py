"""What several benchmarks share: offline teachers of the real teacher's size, and timing."""

from __future__ import annotations

import dataclasses
import os
import time

os.environ.setdefault("USE_TORCH", "0")
os.environ.setdefault("USE_TF", "0")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from transformers import CLIPConfig  # noqa: E402
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402

from rrjax import models  # noqa: E402
from rrjax.models import clip_vit  # noqa: E402
from rrjax.teachers import build_teacher  # noqa: E402
from rrjax.teachers.hf_clip import create_tiny_clip  # noqa: E402

# Dense bf16 peak FLOP/s by jax `device_kind`, for model FLOPs utilisation.
PEAK_FLOPS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12,
              "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12,
              "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12}


def seconds_per_call(fn, *args, repeats: int = 5) -> float:
  """Median wall time of `fn(*args)` after one excluded warm-up (compile) call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


@dataclasses.dataclass
class RandomCLIPViTB32:
  """CLIP ViT-B/32's image tower (224px, patch 32, width 768, 12 layers, dim 512) with
  random weights, behind the teacher interface: the real teacher's cost, offline."""
  dtype: str = "float32"

  def __post_init__(self):
    config = CLIPConfig(
        vision_config=dict(image_size=224, patch_size=32, hidden_size=768,
                           intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12), projection_dim=512)
    spec = clip_vit.CLIPCheckpointSpec(name="random-vit-b32", config=config, image_size=224,
                                       mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    self.image_size, self.dim, self.fingerprint = 224, 512, f"random-vit-b32-{self.dtype}"
    compute = models.parse_dtype(self.dtype, "--dtype")
    self.encoder = clip_vit.encoder_from_spec(spec, compute)
    shapes = jax.eval_shape(self.encoder.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 224, 224, 3)))["params"]
    rng = np.random.default_rng(0)  # Random numpy weights: no init to compile.
    self.params = jax.tree.map(
        lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), compute), shapes)
    self._embed = jax.jit(self.apply)

  def apply(self, params, images):
    return self.encoder.apply({"params": params}, images.astype(jnp.float32) / 255.0)[0]

  def embed(self, images):
    return self._embed(self.params, jnp.asarray(images))


def make_teacher(name: str, dtype: str, workdir: str):
  if name == "vit_b32":
    return RandomCLIPViTB32(dtype)
  if name == "tiny":
    name = create_tiny_clip(os.path.join(workdir, "tiny_clip"), image_size=32)
  return build_teacher(ml_collections.ConfigDict(
      {"kind": "hf_clip", "name": name, "dtype": dtype, "from_pt": False, "mode": "online"}))


