"""What several benchmarks share: offline CLIP towers of the real teachers' size, and timing.

The towers are rrjax's own (`rrjax.models.clip`) with random weights drawn from a
`CLIPSpec`, so the real teachers' cost is measured without a download: the paper's CLIP
RN101 ("rn101") and CLIP ViT-B/32 ("vit_b32"). No text tower: the benchmarks only embed
images.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rrjax import models, objectives
from rrjax.models import clip
from rrjax.teachers import build_teacher, validate_teacher


def seconds_per_call(fn, *args, repeats: int = 5) -> float:
  """Median wall time of `fn(*args)` after one excluded warm-up (compile) call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _vit_b32(image_size: int) -> clip.VisionSpec:
  return clip.VisionSpec(kind="vit", image_size=image_size, width=768, layers=12, heads=12,
                         patch_size=32, mlp_dim=3072)


def _rn101(image_size: int) -> clip.VisionSpec:
  return clip.VisionSpec(kind="resnet", image_size=image_size, width=64, layers=(3, 4, 23, 3),
                         heads=32)


# Image towers of the published checkpoints (224 px at full size), embedding dim 512.
TOWERS = {"rn101": _rn101, "vit_b32": _vit_b32}


def clip_spec(name: str, image_size: int = 224) -> clip.CLIPSpec:
  """The CLIPSpec of tower `name` at `image_size` (the image tower only). Other sizes
  than 224 keep the architecture and only change the token grid, for small CPU runs."""
  if name not in TOWERS:
    raise ValueError(f"CLIP tower {name!r}; choose one of {sorted(TOWERS)}.")
  if image_size % 32:
    raise ValueError(f"image_size={image_size}: CLIP towers need a multiple of 32.")
  return clip.CLIPSpec(embed_dim=512, vision=TOWERS[name](image_size), text=None)


def calibrate_batch_stats(encoder: clip.CLIPImageEncoder, variables: dict,
                          images01: jax.Array) -> dict:
  """`variables` with every BatchNorm's running statistics set to that layer's batch
  statistics on `images01`, in one train-mode pass.

  Random running statistics do not match the random kernels: in inference mode (the
  frozen teacher) activations grow block after block, and a random RN101's embeddings
  reach ~1e18, which overflows float16 (teacher dtype, cache) and the L2 norm of the
  loss. A real checkpoint's statistics describe its own activations; these do too, so
  the teacher and a student initialised from it agree as they would with real weights.
  The running average is new = m * old + (1 - m) * batch, so the batch statistics
  follow from one update without changing the momentum m.
  """
  if "batch_stats" not in variables:
    return variables
  _, updated = jax.jit(functools.partial(encoder.apply, train=True, mutable=["batch_stats"]))(
      variables, images01)
  momentum = 0.9  # rrjax.models.clip.modules._batch_norm (torch's 0.1).
  stats = jax.tree.map(lambda new, old: np.asarray((new - momentum * old) / (1 - momentum)),
                       updated["batch_stats"], variables["batch_stats"])
  return {**variables, "batch_stats": stats}


class RandomCLIPTower:
  """A CLIP image tower with random weights behind the rrjax teacher interface
  (`image_size`, `dim`, `fingerprint`, `embed`, and `params` + `apply` for the online
  teacher and the jitted cache forward), computing in `dtype` like `CLIPTeacher`.

  `variables` (float32 numpy, BatchNorm statistics included) are what a "clip" student
  initialised from this teacher starts from (`student.init = "teacher"`). `spec` gives
  another architecture than `TOWERS[name]` (e.g. ViT-L/14, or a tiny test tower).
  """

  def __init__(self, name: str, dtype: str = "float32", image_size: int = 224, seed: int = 0,
               spec: clip.CLIPSpec | None = None):
    self.spec = spec or clip_spec(name, image_size)
    self.image_size, self.dim = image_size, self.spec.embed_dim
    self.fingerprint = f"random-{name}-{image_size}px-seed{seed}-{dtype}"
    # Drawn in numpy: no init to compile.
    variables = clip.image_variables(clip.random_variables(self.spec, seed))
    calibration = np.random.default_rng(seed).random((4, image_size, image_size, 3), np.float32)
    self.variables = calibrate_batch_stats(clip.CLIPImageEncoder(self.spec), variables,
                                           calibration)
    compute = models.parse_dtype(dtype, "--dtype")
    self.encoder = clip.CLIPImageEncoder(self.spec, compute)
    self.params = jax.tree.map(lambda x: jnp.asarray(x, compute), self.variables)
    self._embed = jax.jit(self.apply)

  def apply(self, params, images):
    """uint8 [B,S,S,3] -> float32 [B, 512], as `CLIPTeacher.apply`."""
    return self.encoder.apply(params, objectives.to_unit_range(images))[0]

  def embed(self, images):
    return self._embed(self.params, jnp.asarray(images))


def make_teacher(name: str, dtype: str, workdir: str, image_size: int = 224):
  """A teacher by benchmark name: "rn101" / "vit_b32" (random full-size towers, no
  download), "tiny" (the test-sized random CLIP, saved to `workdir` and read back like a
  real checkpoint), or a CLIP checkpoint (hub id or directory) through `build_teacher`."""
  if name in TOWERS:
    return validate_teacher(RandomCLIPTower(name, dtype, image_size), f"random {name}",
                            online=True)
  if name == "tiny":
    name = clip.create_tiny_clip(os.path.join(workdir, "tiny_clip"), image_size=32)
  return build_teacher(ml_collections.ConfigDict(
      {"kind": "clip", "name": name, "dtype": dtype, "mode": "online"}))
