"""Supervised ImageNet initialisation of ResNets from Hugging Face `microsoft/resnet-*`.

The checkpoint (a hub id or a local directory, see `rrjax.hub`) is read directly, with
neither transformers nor torch: config.json as JSON, then the weights from
flax_model.msgpack, model.safetensors (PyTorch or Flax layout) or pytorch_model.bin
(unpickled by `rrjax.models.torch_pickle`, which refuses anything but tensors).
transformers 5 has no Flax models, and transformers 4's FlaxResNetModel.from_pretrained
mapped PyTorch basic-block convs ("layer.0") to the wrong Flax names, silently leaving
them randomly initialised (ResNet-18/34). Variables are renamed into
`rrjax.models.resnet.ResNet`'s layout; both follow torchvision (v1.5 bottlenecks, 7x7/2
stem + max-pool), so the conversion is a pure renaming. The architecture is checked
against the checkpoint's config before any weight is read, and the weights must cover
the whole backbone. The head (embedding head or new classifier) stays fresh.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax.core import unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

from rrjax import hub
from rrjax.models import resnet, torch_pickle, weight_files

_HEAD = "head"
_FLAX_WEIGHTS = "flax_model.msgpack"
_SAFE_WEIGHTS = "model.safetensors"
_TORCH_WEIGHTS = "pytorch_model.bin"
_WEIGHTS = (_FLAX_WEIGHTS, _SAFE_WEIGHTS, _TORCH_WEIGHTS)  # In order of preference.
# transformers' ResNetConfig defaults: config.json files written before a field existed
# (downsample_in_bottleneck is from 2023, after microsoft/resnet-* were uploaded) mean these.
_CONFIG_DEFAULTS = {
    "layer_type": "bottleneck",
    "depths": [3, 4, 6, 3],
    "embedding_size": 64,
    "hidden_sizes": [256, 512, 1024, 2048],
    "num_channels": 3,
    "hidden_act": "relu",
    "downsample_in_first_stage": False,
    "downsample_in_bottleneck": False,
}


def _rename(path: tuple[str, ...]) -> tuple[str, ...] | None:
  """Hugging Face ResNet variable path -> ResNet variable path (collection excluded);
  None for entries outside the backbone (the ImageNet classifier)."""
  kinds = {"convolution": "conv", "normalization": "bn"}
  match path:
    case ("resnet", *rest):  # ResNetForImageClassification checkpoints.
      return _rename(tuple(rest))
    case ("classifier", *_):
      return None
    case ("embedder", "embedder", kind, leaf):
      return (f"stem_{kinds[kind]}", leaf)
    case ("encoder", "stages", stage, "layers", block, "shortcut", kind, leaf):
      return (f"layer{int(stage) + 1}_{block}", f"proj_{kinds[kind]}", leaf)
    case ("encoder", "stages", stage, "layers", block, "layer", index, kind, leaf):
      # Bottleneck convs are "0".."2" in transformers' Flax ResNet, basic-block convs
      # "layer_0".."layer_1"; PyTorch names both "0", "1", ...
      number = int(index.removeprefix("layer_")) + 1
      return (f"layer{int(stage) + 1}_{block}", f"{kinds[kind]}{number}", leaf)
  raise ValueError(f"unexpected variable {'/'.join(path)} in a Hugging Face ResNet checkpoint.")


def convert_hf_variables(hf_variables) -> dict:
  """Hugging Face Flax ResNet variables {"params", "batch_stats"} (FlaxResNetModel's, or
  with the "resnet" prefix and classifier of ResNetForImageClassification) -> ResNet's
  backbone variables (float32 numpy)."""
  converted = {}
  for (collection, *path), value in flatten_dict(unfreeze(hf_variables)).items():
    new_path = _rename(tuple(path))
    if new_path is not None:
      converted[(collection, *new_path)] = np.asarray(value, np.float32)
  return unflatten_dict(converted)


def pytorch_to_flax_layout(state_dict: dict) -> dict:
  """A PyTorch ResNet state dict (dotted names, OIHW kernels, running_* statistics) ->
  the equivalent nested Flax {"params", "batch_stats"} tree, names kept."""
  flat = {}
  for key, value in state_dict.items():
    *path, leaf = key.split(".")
    if leaf == "num_batches_tracked":
      continue
    if leaf in ("running_mean", "running_var"):
      flat[("batch_stats", *path, leaf.removeprefix("running_"))] = value
    elif leaf == "weight" and value.ndim == 4:
      flat[("params", *path, "kernel")] = np.transpose(value, (2, 3, 1, 0))
    elif leaf == "weight" and path[-1] == "normalization":
      flat[("params", *path, "scale")] = value
    elif leaf == "weight":  # Linear layers: only the classifier, dropped later.
      flat[("params", *path, "kernel")] = np.transpose(value)
    else:
      flat[("params", *path, leaf)] = value
  return unflatten_dict(flat)


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


def check_architecture(config: dict, module: resnet.ResNet, name_or_path: str) -> None:
  """ValueError naming checkpoint and model when `config` (the checkpoint's config.json
  as a dict) differs from `module`."""
  model_type = config.get("model_type")
  if model_type != "resnet":
    raise ValueError(
        f"{name_or_path!r} is a {model_type or '?'!r} checkpoint, not a Hugging Face ResNet; "
        "use a microsoft/resnet-* hub id or a directory saved from one.")
  expected = _expected_config(module)
  found = {key: config.get(key, _CONFIG_DEFAULTS[key]) for key in expected}
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


def _load_config(name_or_path: str) -> dict:
  """config.json of a directory or hub repo as a dict; FileNotFoundError saying what to
  give instead when there is none (no such directory, not a repo, offline and not cached)."""
  advice = ("Give a local directory written by save_pretrained, or a hub id that is in the "
            "local Hugging Face cache or downloadable.")
  try:
    name = hub.check_name(name_or_path, "the ImageNet checkpoint")
  except FileNotFoundError:
    raise FileNotFoundError(f"ImageNet checkpoint {name_or_path!r}: no such directory. "
                            f"{advice}") from None
  try:
    path = hub.require_file(name, ("config.json",), "Hugging Face config")
  except FileNotFoundError as e:  # Its message names the checkpoint and the file.
    raise FileNotFoundError(f"{e} {advice}") from e
  except OSError as e:  # The hub's HTTP errors: unknown or gated repo, network.
    raise FileNotFoundError(
        f"cannot read a Hugging Face config for {name_or_path!r}: {e} {advice}") from e
  with open(path) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); is {name_or_path!r} a Hugging Face "
                       "checkpoint?") from e
  if not isinstance(config, dict):
    raise ValueError(f"{path} holds a {type(config).__name__}, not a Hugging Face config.")
  return config


def _read_safetensors(path: str) -> dict:
  tensors, metadata = weight_files.read_safetensors(path)
  layout = metadata.get("format", "pt")
  if layout == "flax":  # transformers' Flax save_pretrained(safe_serialization=True).
    return unflatten_dict({tuple(key.split(".")): value for key, value in tensors.items()})
  if layout == "pt":
    return pytorch_to_flax_layout(tensors)
  raise ValueError(f"{path} holds {layout!r} weights; rrjax reads PyTorch or Flax safetensors.")


def read_hf_checkpoint(name_or_path: str) -> dict:
  """The nested {"params", "batch_stats"} of a Hugging Face ResNet checkpoint, in Flax
  layout with transformers' names, from flax_model.msgpack, model.safetensors or
  pytorch_model.bin (the first the checkpoint has)."""
  path = hub.require_file(hub.check_name(name_or_path, "the ImageNet checkpoint"), _WEIGHTS,
                          "ResNet weights")
  if path.endswith(_FLAX_WEIGHTS):
    with open(path, "rb") as f:
      return serialization.msgpack_restore(f.read())
  if path.endswith(_SAFE_WEIGHTS):
    return _read_safetensors(path)
  return pytorch_to_flax_layout(torch_pickle.load_state_dict(path))


def _backbone_shapes(module: resnet.ResNet) -> dict:
  shapes = jax.eval_shape(lambda: module.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32), train=False))
  return {path: x for path, x in flatten_dict(unfreeze(shapes)).items() if path[1] != _HEAD}


def _check_fits(expected: dict, found: dict, what: str) -> None:
  """Same variable paths and shapes, or a ValueError listing the first differences."""
  missing, unexpected = set(expected) - set(found), set(found) - set(expected)
  if missing or unexpected:
    raise ValueError(
        f"{what} do not fit the model: missing {sorted(map('/'.join, missing))[:5]}, "
        f"unexpected {sorted(map('/'.join, unexpected))[:5]}.")
  for path, value in found.items():
    if value.shape != expected[path].shape:
      raise ValueError(f"{'/'.join(path)} has shape {value.shape} in the {what} but "
                       f"{expected[path].shape} in the model.")


def load_imagenet_resnet(name_or_path: str, module: resnet.ResNet) -> dict:
  """Backbone variables {"params", "batch_stats"} of `module` from a HF ResNet checkpoint.

  `name_or_path` is a hub id (e.g. "microsoft/resnet-101") or a local directory. The
  checkpoint's architecture must be `module`'s (ValueError naming both otherwise) and
  its weights must cover the whole backbone. The result has no "head" entries.
  """
  config = _load_config(name_or_path)
  check_architecture(config, module, name_or_path)
  backbone = convert_hf_variables(read_hf_checkpoint(name_or_path))
  _check_fits(_backbone_shapes(module), flatten_dict(backbone),
              f"weights of {name_or_path!r}")
  return backbone


def with_backbone(variables, backbone) -> dict:
  """`variables` (freshly initialised, with a head) with every backbone entry taken from
  `backbone` (as from `load_imagenet_resnet`); the head is kept."""
  flat = flatten_dict(unfreeze(variables))
  new = flatten_dict(unfreeze(backbone))
  _check_fits({path: x for path, x in flat.items() if path[1] != _HEAD}, new,
              "backbone variables")
  for path, value in new.items():
    flat[path] = jnp.asarray(value, flat[path].dtype)
  return unflatten_dict(flat)

