"""Plug-in teachers: any encoder, named by `teacher.factory = "package.module:function"`.

The factory is called with the teacher config and returns an object with
`image_size: int`, `dim: int`, `fingerprint: str` and `embed(images) -> [B, dim]`,
where `images` is uint8 RGB `[B, image_size, image_size, 3]` and the plug-in does its
own normalisation. For `teacher.mode = "online"` it also needs `params` and a pure,
jittable `apply(params, images) -> [B, dim]`. Built-in teachers pass the same
`validate_teacher` check, so caches and trainers never special-case a teacher.
"""

from __future__ import annotations

import importlib
import numbers

INTERFACE = ("image_size: int, dim: int, fingerprint: str, "
             "embed(images uint8 [B, image_size, image_size, 3]) -> [B, dim]")
ONLINE_INTERFACE = "params and a pure apply(params, images) -> [B, dim]"


def _is_positive_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def validate_teacher(teacher, where: str, *, online: bool = False):
  """Returns `teacher` if it has the teacher interface, else a ValueError saying what
  is missing. `where` names the source (a factory, a teacher kind) in the message."""
  problems = []
  if not _is_positive_int(getattr(teacher, "image_size", None)):
    problems.append("image_size (a positive int)")
  if not _is_positive_int(getattr(teacher, "dim", None)):
    problems.append("dim (a positive int)")
  fingerprint = getattr(teacher, "fingerprint", None)
  if not isinstance(fingerprint, str) or not fingerprint:
    problems.append("fingerprint (a non-empty str)")
  if not callable(getattr(teacher, "embed", None)):
    problems.append("embed(images) (a method)")
  if online and (not hasattr(teacher, "params") or not callable(getattr(teacher, "apply", None))):
    problems.append(f"for teacher.mode='online': {ONLINE_INTERFACE}")
  if problems:
    raise ValueError(f"{where} returned a {type(teacher).__name__} that lacks the teacher "
                     f"interface: missing or invalid {', '.join(problems)}. A teacher needs "
                     f"{INTERFACE}.")
  return teacher


def load_factory(spec):
  """Imports `package.module:function` and returns the callable."""
  where = f"teacher.factory={spec!r}"
  module_name, sep, attribute = spec.partition(":") if isinstance(spec, str) else ("", "", "")
  if not sep or not module_name or not attribute:
    raise ValueError(f"{where} must look like 'package.module:function'.")
  try:
    module = importlib.import_module(module_name)
  except Exception as e:  # Import errors of any kind inside the plug-in module.
    raise ValueError(f"{where}: cannot import module {module_name!r} "
                     f"({type(e).__name__}: {e}); check the name and that it is on "
                     "PYTHONPATH.") from e
  factory = module
  for part in attribute.split("."):
    if not hasattr(factory, part):
      raise ValueError(f"{where}: module {module_name!r} has no attribute {attribute!r}.")
    factory = getattr(factory, part)
  if not callable(factory):
    raise ValueError(f"{where}: {attribute!r} is a {type(factory).__name__}, not a callable "
                     "that builds a teacher.")
  return factory


def build(cfg):
  """The teacher returned by `cfg.factory(cfg)`, checked for the teacher interface."""
  spec = cfg.get("factory")
  teacher = load_factory(spec)(cfg)
  return validate_teacher(teacher, f"teacher.factory={spec!r}",
                          online=cfg.get("mode", "cached") == "online")
