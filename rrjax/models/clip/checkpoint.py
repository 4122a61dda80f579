"""CLIP checkpoints from a hub id or a local directory, in the layouts people publish.

- open_clip: `open_clip_config.json` + `open_clip_model.safetensors` (or
  `open_clip_pytorch_model.bin`), e.g. `timm/resnet101_clip.openai` (the paper's RN101),
  `laion/CLIP-ViT-B-32-laion2B-s34B-b79K`. Preferred when a repo has both layouts (timm's
  repos also hold a timm `config.json` that is not a CLIP config).
- transformers: `config.json` (model_type "clip") + `model.safetensors` (sharded or not),
  `pytorch_model.bin` or `flax_model.msgpack`, e.g. `openai/clip-vit-base-patch32`.

`open_checkpoint` reads only the configs (cheap: the architecture, preprocessing and
identity are known before any weight is downloaded); `Checkpoint.variables()` reads the
weights, without torch, into rrjax's variables (`rrjax.models.clip.modules`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import save_file

from rrjax import hub
from rrjax.models import torch_pickle, weight_files
from rrjax.models.clip import convert, spec as spec_lib, tokenizer as tokenizer_lib

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_CONFIG = "config.json"
HF_PROCESSOR = "preprocessor_config.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "flax_model.msgpack")


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A CLIP checkpoint whose configs have been read (weights not yet)."""
  name: str
  layout: str                  # "open_clip" | "hf"
  spec: spec_lib.CLIPSpec
  config_paths: tuple[str, ...]

  @functools.cached_property
  def weights_path(self) -> str:
    candidates = OPEN_CLIP_WEIGHTS if self.layout == "open_clip" else HF_WEIGHTS
    return hub.require_file(self.name, candidates, f"{self.layout} CLIP weights")

  def identity(self) -> dict:
    """What identifies these weights (file hashes locally, hub commit otherwise)."""
    return hub.identity(self.name, [*self.config_paths, self.weights_path])

  def variables(self) -> dict:
    """{"params": ..., ["batch_stats": ...]} of the whole model, float32 numpy."""
    path = self.weights_path
    where = f"{self.name!r} ({path})"
    if path.endswith(".msgpack"):  # transformers' Flax CLIP: rrjax's names already.
      with open(path, "rb") as f:
        params = serialization.msgpack_restore(f.read())
      return {"params": _check_flax_params(params, self.spec, where)}
    table = (convert.open_clip_table(self.spec) if self.layout == "open_clip"
             else convert.hf_table(self.spec))
    return convert.from_state_dict(self._state_dict(path), table, where)

  def _state_dict(self, path: str) -> dict[str, np.ndarray]:
    if path.endswith(".bin"):
      return torch_pickle.load_state_dict(path)
    if path.endswith(".index.json"):  # Sharded safetensors.
      shards = sorted(set(_read_json(path)["weight_map"].values()))
      state = {}
      for shard in shards:
        state.update(weight_files.read_safetensors(
            hub.require_file(self.name, (shard,), "weight shard"))[0])
      return state
    return weight_files.read_safetensors(path)[0]

  def tokenizer(self) -> tokenizer_lib.CLIPTokenizer:
    """The checkpoint's own tokenizer files if it has them, else CLIP's standard BPE."""
    length = self.spec.text.context_length
    if self.layout == "hf":
      files = [hub.find_file(self.name, f) for f in ("tokenizer.json", "vocab.json",
                                                     "merges.txt")]
      found = [f for f in files if f]
      if found:
        return tokenizer_lib.from_checkpoint_dir(os.path.dirname(found[0]), length)
    return tokenizer_lib.standard(length)


def _check_flax_params(params: dict, spec: spec_lib.CLIPSpec, where: str) -> dict:
  expected = {e.path[1:] for e in convert.hf_table(spec)}
  found = flatten_dict(params)
  missing = sorted("/".join(p) for p in expected - found.keys())
  if missing:
    raise ValueError(f"{where}: the Flax weights do not fit the architecture of its config: "
                     f"{len(missing)} missing, e.g. {missing[:3]}.")
  return unflatten_dict({p: np.asarray(found[p], np.float32) for p in expected})


def open_checkpoint(name_or_path: str, field: str = "teacher.name") -> Checkpoint:
  """Reads a checkpoint's configs: open_clip layout first, then transformers'."""
  name = hub.check_name(name_or_path, field)
  if path := hub.find_file(name, OPEN_CLIP_CONFIG):
    spec = spec_lib.from_open_clip_config(_read_json(path), f"{field}={name!r}")
    return Checkpoint(name=name, layout="open_clip", spec=spec, config_paths=(path,))
  if path := hub.find_file(name, HF_CONFIG):
    processor = hub.find_file(name, HF_PROCESSOR)
    spec = spec_lib.from_hf_config(_read_json(path), processor and _read_json(processor),
                                   f"{field}={name!r}")
    return Checkpoint(name=name, layout="hf", spec=spec,
                      config_paths=(path,) + ((processor,) if processor else ()))
  raise FileNotFoundError(
      f"{field}={name!r} is not a CLIP checkpoint: it has neither {OPEN_CLIP_CONFIG} (open_clip "
      f"layout) nor {HF_CONFIG} (transformers layout). Give a hub id such as "
      "'timm/resnet101_clip.openai' or 'openai/clip-vit-base-patch32', or a directory saved "
      "in one of those layouts.")


def save(out_dir: str, spec: spec_lib.CLIPSpec, variables: dict, layout: str) -> list[str]:
  """Writes `variables` as a checkpoint in `layout` ("open_clip" | "hf"): config(s) and
  PyTorch-named float32 safetensors that open_clip / transformers load. Returns the
  paths written. Tokenizer files are the caller's (see `rrjax.export`)."""
  os.makedirs(out_dir, exist_ok=True)
  if layout == "open_clip":
    configs = {OPEN_CLIP_CONFIG: spec_lib.to_open_clip_config(spec)}
    table, weights = convert.open_clip_table(spec), OPEN_CLIP_WEIGHTS[0]
  elif layout == "hf":
    config, processor = spec_lib.to_hf_config(spec)
    configs = {HF_CONFIG: config, HF_PROCESSOR: processor}
    table, weights = convert.hf_table(spec), HF_WEIGHTS[0]
  else:
    raise ValueError(f"layout={layout!r}; choose 'open_clip' or 'hf'.")
  written = []
  for filename, content in configs.items():
    written.append(os.path.join(out_dir, filename))
    with open(written[-1], "w") as f:
      json.dump(content, f, indent=2)
  written.append(os.path.join(out_dir, weights))
  save_file(convert.to_state_dict(variables, table), written[-1], metadata={"format": "pt"})
  return written
