"""Supervised ImageNet initialisation of ResNets from Hugging Face `microsoft/resnet-*`.

transformers' FlaxResNetModel reads the checkpoint (flax_model.msgpack, or a
model.safetensors written by PyTorch, converted without torch), then its variables are
renamed into `rrjax.models.resnet.ResNet`'s layout. Both follow torchvision
(v1.5 bottlenecks, 7x7/2 stem + max-pool), so the conversion is a pure renaming; the
architecture is checked against the checkpoint's config before any weight is read.
Only the backbone is imported: the head (embedding head or new classifier) stays fresh.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

from rrjax.models import resnet

os.environ.setdefault("USE_TORCH", "0")
os.environ.setdefault("USE_TF", "0")

_HEAD = "head"


def _rename(path: tuple[str, ...]) -> tuple[str, ...]:
  """FlaxResNetModel variable path -> ResNet variable path (collection excluded)."""
  kinds = {"convolution": "conv", "normalization": "bn"}
  match path:
    case ("embedder", "embedder", kind, leaf):
      return (f"stem_{kinds[kind]}", leaf)
    case ("encoder", "stages", stage, "layers", block, "shortcut", kind, leaf):
      return (f"layer{int(stage) + 1}_{block}", f"proj_{kinds[kind]}", leaf)
    case ("encoder", "stages", stage, "layers", block, "layer", index, kind, leaf):
      # Bottleneck convs are named "0".."2" in transformers, basic-block convs "layer_0".."layer_1".
      number = int(index.removeprefix("layer_")) + 1
      return (f"layer{int(stage) + 1}_{block}", f"{kinds[kind]}{number}", leaf)
  raise ValueError(f"unexpected variable {'/'.join(path)} in a Hugging Face ResNet checkpoint.")


def convert_hf_variables(hf_variables) -> dict:
  """FlaxResNetModel's {"params", "batch_stats"} -> ResNet's backbone variables (float32)."""
  return {
      collection: unflatten_dict({
          _rename(path): np.asarray(value, np.float32)
          for path, value in flatten_dict(unfreeze(tree)).items()})
      for collection, tree in hf_variables.items()}


def _expected_config(module: resnet.ResNet) -> dict:
  expansion = resnet.BLOCKS[module.block].expansion
  return {
      "layer_type": module.block,
      "depths": list(module.stage_sizes),
      "embedding_size": module.width,
      "hidden_sizes": [module.width * 2**i * expansion for i in range(len(module.stage_sizes))],
      "num_channels": 3,
      "hidden_act": "relu",
      # rrjax ResNets are v1.5 with a stride-1 first stage, as torchvision.
      "downsample_in_first_stage": False,
      "downsample_in_bottleneck": False,
  }


def check_architecture(config, module: resnet.ResNet, name_or_path: str) -> None:
  """ValueError naming checkpoint and model when `config` (a ResNetConfig) differs from `module`."""
  if getattr(config, "model_type", None) != "resnet":
    raise ValueError(
        f"{name_or_path!r} is a {getattr(config, 'model_type', '?')!r} checkpoint, not a Hugging "
        "Face ResNet; use a microsoft/resnet-* hub id or a directory saved from one.")
  expected = _expected_config(module)
  found = {key: getattr(config, key, None) for key in expected}
  found["depths"] = list(found["depths"] or [])
  found["hidden_sizes"] = list(found["hidden_sizes"] or [])
  differences = [f"{key}: checkpoint {found[key]} vs model {expected[key]}"
                 for key in expected if found[key] != expected[key]]
  if differences:
    checkpoint = resnet.ResNet(stage_sizes=tuple(found["depths"]), block=str(found["layer_type"]),
                               num_outputs=1, width=found["embedding_size"])
    raise ValueError(
        f"ImageNet checkpoint {name_or_path!r} is {resnet.describe(checkpoint)} but the model is "
        f"{resnet.describe(module)} ({'; '.join(differences)}); set student.model to the "
        "checkpoint's architecture or pick a checkpoint of the model's.")


def _load_config(name_or_path: str):
  from transformers import AutoConfig
  try:
    return AutoConfig.from_pretrained(name_or_path)
  except OSError as e:
    raise FileNotFoundError(
        f"cannot read a Hugging Face config for {name_or_path!r}: {e}. Give a local directory "
        "written by save_pretrained, or a hub id that is in the local Hugging Face cache or "
        "downloadable.") from e


def _load_hf_model(name_or_path: str, config):
  """FlaxResNetModel with the checkpoint's weights.

  from_pretrained itself reads flax_model.msgpack and model.safetensors (PyTorch-format
  safetensors are converted without torch). Only a pytorch_model.bin needs `from_pt`,
  and with it torch.
  """
  from transformers import FlaxResNetModel
  # A small input shape keeps the throw-away random initialisation cheap; shapes of the
  # parameters do not depend on it.
  kwargs = dict(config=config, input_shape=(1, 32, 32, 3))
  try:
    return FlaxResNetModel.from_pretrained(name_or_path, **kwargs)
  except OSError as e:
    if "from_pt=True" not in str(e):
      raise FileNotFoundError(f"cannot load ResNet weights from {name_or_path!r}: {e}") from e
  try:
    return FlaxResNetModel.from_pretrained(name_or_path, from_pt=True, **kwargs)
  except ImportError as e:
    raise FileNotFoundError(
        f"{name_or_path!r} has only PyTorch pickle weights (pytorch_model.bin), and reading "
        "those needs torch, which rrjax does not install. Use a checkpoint that has "
        "model.safetensors or flax_model.msgpack (re-save it with save_pretrained where torch "
        "is available).") from e


def load_imagenet_resnet(name_or_path: str, module: resnet.ResNet) -> dict:
  """Backbone variables {"params", "batch_stats"} of `module` from a HF ResNet checkpoint.

  `name_or_path` is a hub id (e.g. "microsoft/resnet-101") or a local directory. The
  checkpoint's architecture must be `module`'s (ValueError naming both otherwise).
  The result has no "head" entries.
  """
  config = _load_config(name_or_path)
  check_architecture(config, module, name_or_path)
  return convert_hf_variables(_load_hf_model(name_or_path, config).params)


def with_backbone(variables, backbone) -> dict:
  """`variables` (freshly initialised, with a head) with every backbone entry taken from
  `backbone` (as from `load_imagenet_resnet`); the head is kept."""
  flat = flatten_dict(unfreeze(variables))
  new = flatten_dict(unfreeze(backbone))
  expected = {path for path in flat if path[1] != _HEAD}
  missing, unexpected = expected - set(new), set(new) - expected
  if missing or unexpected:
    raise ValueError(
        f"backbone variables do not fit the model: missing {sorted(map('/'.join, missing))[:5]}, "
        f"unexpected {sorted(map('/'.join, unexpected))[:5]}.")
  for path, value in new.items():
    if value.shape != flat[path].shape:
      raise ValueError(f"{'/'.join(path)} has shape {value.shape} in the backbone but "
                       f"{flat[path].shape} in the model.")
    flat[path] = jnp.asarray(value, flat[path].dtype)
  return unflatten_dict(flat)


def init_from_imagenet(variables, name_or_path: str, module: resnet.ResNet) -> dict:
  """`variables` with the backbone replaced by the ImageNet checkpoint `name_or_path`."""
  return with_backbone(variables, load_imagenet_resnet(name_or_path, module))
