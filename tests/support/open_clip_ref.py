"""open_clip as an independent PyTorch reference, imported without torchvision.

open_clip imports torchvision for its image transforms and FrozenBatchNorm2d only. PyPI's
torchvision wheels are CUDA-linked and do not import beside the CPU build of torch these
machines use, so open_clip is installed with --no-deps (README) and imported here with a
stand-in torchvision whose members fail if anything calls them. The model code under
test (ViT, ModifiedResNet, text transformer, tokenizer) never touches them.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types


class _AnyConstant(type):
  """Class attributes (e.g. InterpolationMode.BICUBIC used as defaults) are their names."""

  def __getattr__(cls, attribute):
    if attribute.startswith("__"):
      raise AttributeError(attribute)
    return attribute


class _Unavailable(metaclass=_AnyConstant):
  """Any torchvision class or function: fails when used, not when imported."""

  def __init__(self, *args, **kwargs):
    raise RuntimeError("torchvision is a stand-in in rrjax's tests; this open_clip code path "
                       "needs the real torchvision.")


def _stand_in(name: str) -> types.ModuleType:
  module = types.ModuleType(name)
  # importlib.util.find_spec raises for a module whose __spec__ is None.
  module.__spec__ = importlib.machinery.ModuleSpec(name, None)
  module.__getattr__ = lambda attribute: (_ for _ in ()).throw(AttributeError(attribute)) \
      if attribute.startswith("__") else _Unavailable
  return module


def import_open_clip():
  """The open_clip module (with a stand-in torchvision when the real one is absent).

  The stand-in is visible only while open_clip is imported: transformers (imported first,
  so its checks see no torchvision) and later imports never see it."""
  try:
    import torchvision  # noqa: F401
  except (ImportError, RuntimeError):
    import transformers  # noqa: F401  (decides once, now, that torchvision is absent)
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.ops", "torchvision.ops.misc")
    for name in names:
      sys.modules[name] = _stand_in(name)
      parent, _, child = name.rpartition(".")
      if parent:
        setattr(sys.modules[parent], child, sys.modules[name])
    try:
      import open_clip
    finally:
      for name in names:
        sys.modules.pop(name, None)
  import open_clip
  return open_clip
