"""Teachers R: `build_teacher(config.teacher)` -> an object with `image_size`, `dim`,
`fingerprint` and `embed(images_uint8) -> [B, dim]` (see `plugin.validate_teacher`).

Kinds: "clip" (`clip.CLIPTeacher`, any CLIP image tower in the open_clip or transformers
layout, ViT or ModifiedResNet) and "python" (a plug-in built by `teacher.factory`, see
`plugin`).
"""

from __future__ import annotations

from rrjax.teachers import plugin
from rrjax.teachers.plugin import validate_teacher

TEACHER_MODES = ("cached", "online")


def _build_clip(cfg):
  from rrjax.teachers import clip
  return validate_teacher(clip.build(cfg), "teacher.kind='clip'",
                          online=cfg.get("mode", "cached") == "online")


TEACHER_KINDS = {"clip": _build_clip, "python": plugin.build}


def build_teacher(cfg):
  kind = cfg.get("kind")
  if kind not in TEACHER_KINDS:
    raise ValueError(f"teacher.kind={kind!r} is not one of {sorted(TEACHER_KINDS)}.")
  mode = cfg.get("mode", "cached")
  if mode not in TEACHER_MODES:
    raise ValueError(f"teacher.mode={mode!r} is not one of {list(TEACHER_MODES)}.")
  return TEACHER_KINDS[kind](cfg)


__all__ = ["build_teacher", "validate_teacher", "TEACHER_KINDS"]
