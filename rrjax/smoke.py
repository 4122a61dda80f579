"""Small stand-ins for the real thing: a generated image folder and a tiny random CLIP
(a ModifiedResNet with a text tower, saved in the open_clip layout like the paper's RN101),
so every config's `smoke` variant runs the whole method on a laptop CPU in about a
minute, offline. Assets are created once (atomically) and reused.

Location: $RRJAX_SMOKE_DIR, default ~/.cache/rrjax/smoke.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import ml_collections

IMAGE_SIZE = 32
NUM_CLASSES = 4


def _ensure(path: str, create) -> str:
  """Creates `path` with `create(tmp_path)` unless it exists; safe under concurrency."""
  if not os.path.isdir(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".tmp-")
    create(tmp)
    try:
      os.rename(tmp, path)
    except OSError:  # Another process finished first: keep its copy.
      shutil.rmtree(tmp, ignore_errors=True)
  return path


def assets(root: str | None = None) -> dict[str, str]:
  """{"data": image folder root (train/val), "teacher": tiny CLIP directory}."""
  root = root or os.environ.get("RRJAX_SMOKE_DIR",
                                os.path.join(os.path.expanduser("~"), ".cache", "rrjax", "smoke"))
  from rrjax.data import synthetic
  from rrjax.models import clip
  data = _ensure(os.path.join(root, "images"), lambda p: synthetic.make_image_folder(
      p, num_classes=NUM_CLASSES, per_class=24, splits=("train", "val"), size=40, seed=0))
  teacher = _ensure(os.path.join(root, "tiny_clip_rn"),
                    lambda p: clip.create_tiny_clip(p, image_size=IMAGE_SIZE, seed=0))
  return {"data": data, "teacher": teacher}


def shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Makes `config` a one-minute CPU run on generated data with a tiny random teacher,
  keeping its operator, loss, stages and experiment-specific choices."""
  paths = assets()
  c = config
  c.data.source, c.data.name, c.data.root, c.data.wnids = "folder", "smoke", paths["data"], ""
  c.data.train_split, c.data.eval_split = "train", "val"
  c.data.image_size, c.data.resize_size, c.data.crop_scale = IMAGE_SIZE, 36, (0.35, 1.0)
  c.data.num_workers = 2
  c.teacher.kind, c.teacher.name, c.teacher.factory, c.teacher.dtype = (
      "clip", paths["teacher"], "", "float32")
  c.cache.num_views, c.cache.batch_size = 2, 16
  c.student.teacher_name = ""  # The tiny teacher's tower, when the student is "clip".
  for model_cfg in (c.student, c.baseline):
    if model_cfg.model != "clip":
      model_cfg.model, model_cfg.width, model_cfg.init = "resnet18", 8, "random"
  c.batch_size, c.num_epochs = 16, 8
  c.optimizer.learning_rate = 3e-3
  c.probe.batch_size, c.probe.num_epochs, c.probe.learning_rate = 16, 10, 1e-2
  c.baseline.batch_size, c.baseline.num_epochs = 16, 2
  c.eval.repeats, c.eval.batch_size = 2, 16
  c.checkpoint_every_steps, c.log_every_steps = 5, 5
  return c
