"""PyTorch state dicts (transformers or open_clip names) <-> rrjax's CLIP variables.

Both directions come from one table per naming scheme: each entry pairs a PyTorch key
with an rrjax variable path and says how the array is laid out (Linear weights are
[out, in] in PyTorch and [in, out] in Flax; convolutions OIHW vs HWIO; open_clip packs
q, k, v into one `in_proj_weight`). Loading checks that the file covers every variable
of the architecture; writing produces every key the other library expects.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flax.core import unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

from rrjax.models.clip.spec import CLIPSpec

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
  key: str          # PyTorch name
  path: Path        # rrjax variable path, collection first ("params", ...)
  layout: str       # "copy" | "linear" | "conv" | "qkv:<i>" (i-th third of a packed q/k/v)


def _linear(key: str, path: Path, bias: bool = True):
  yield Entry(f"{key}.weight", ("params", *path, "kernel"), "linear")
  if bias:
    yield Entry(f"{key}.bias", ("params", *path, "bias"), "copy")


def _layer_norm(key: str, path: Path):
  yield Entry(f"{key}.weight", ("params", *path, "scale"), "copy")
  yield Entry(f"{key}.bias", ("params", *path, "bias"), "copy")


def _batch_norm(key: str, path: Path):
  yield from _layer_norm(key, path)
  yield Entry(f"{key}.running_mean", ("batch_stats", *path, "mean"), "copy")
  yield Entry(f"{key}.running_var", ("batch_stats", *path, "var"), "copy")


# ------------------------------------------------------------------ transformers names

def _hf_encoder(prefix: str, path: Path, layers: int):
  for i in range(layers):
    key, p = f"{prefix}.encoder.layers.{i}", (*path, "encoder", "layers", str(i))
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
      yield from _linear(f"{key}.self_attn.{name}", (*p, "self_attn", name))
    yield from _layer_norm(f"{key}.layer_norm1", (*p, "layer_norm1"))
    yield from _linear(f"{key}.mlp.fc1", (*p, "mlp", "fc1"))
    yield from _linear(f"{key}.mlp.fc2", (*p, "mlp", "fc2"))
    yield from _layer_norm(f"{key}.layer_norm2", (*p, "layer_norm2"))


def hf_table(spec: CLIPSpec) -> list[Entry]:
  """transformers' CLIPModel names (ViT image tower and text tower)."""
  v, t = spec.vision, spec.text
  if v.kind != "vit":
    raise ValueError(f"transformers has no CLIP with a {spec.describe()} image tower.")
  vm, emb = ("vision_model",), ("vision_model", "embeddings")
  entries = [
      Entry("vision_model.embeddings.class_embedding", ("params", *emb, "class_embedding"),
            "copy"),
      Entry("vision_model.embeddings.patch_embedding.weight",
            ("params", *emb, "patch_embedding", "kernel"), "conv"),
      Entry("vision_model.embeddings.position_embedding.weight",
            ("params", *emb, "position_embedding", "embedding"), "copy"),
      *_layer_norm("vision_model.pre_layrnorm", (*vm, "pre_layrnorm")),
      *_hf_encoder("vision_model", vm, v.layers),
      *_layer_norm("vision_model.post_layernorm", (*vm, "post_layernorm")),
      *_linear("visual_projection", ("visual_projection",), bias=False),
  ]
  if t is not None:
    tm = ("text_model",)
    entries += [
        Entry("text_model.embeddings.token_embedding.weight",
              ("params", *tm, "embeddings", "token_embedding", "embedding"), "copy"),
        Entry("text_model.embeddings.position_embedding.weight",
              ("params", *tm, "embeddings", "position_embedding", "embedding"), "copy"),
        *_hf_encoder("text_model", tm, t.layers),
        *_layer_norm("text_model.final_layer_norm", (*tm, "final_layer_norm")),
        *_linear("text_projection", ("text_projection",), bias=False),
        Entry("logit_scale", ("params", "logit_scale"), "copy"),
    ]
  return entries


# --------------------------------------------------------------------- open_clip names

def _open_clip_transformer(prefix: str, path: Path, layers: int):
  for i in range(layers):
    key, p = f"{prefix}.resblocks.{i}", (*path, "encoder", "layers", str(i), )
    for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
      yield Entry(f"{key}.attn.in_proj_weight", ("params", *p, "self_attn", name, "kernel"),
                  f"qkv:{part}")
      yield Entry(f"{key}.attn.in_proj_bias", ("params", *p, "self_attn", name, "bias"),
                  f"qkv:{part}")
    yield from _linear(f"{key}.attn.out_proj", (*p, "self_attn", "out_proj"))
    yield from _layer_norm(f"{key}.ln_1", (*p, "layer_norm1"))
    yield from _linear(f"{key}.mlp.c_fc", (*p, "mlp", "fc1"))
    yield from _linear(f"{key}.mlp.c_proj", (*p, "mlp", "fc2"))
    yield from _layer_norm(f"{key}.ln_2", (*p, "layer_norm2"))


def _open_clip_resnet(layers: tuple[int, ...]):
  v = ("visual",)
  for i in (1, 2, 3):
    yield Entry(f"visual.conv{i}.weight", ("params", *v, f"conv{i}", "kernel"), "conv")
    yield from _batch_norm(f"visual.bn{i}", (*v, f"bn{i}"))
  for stage, blocks in enumerate(layers, start=1):
    for block in range(blocks):
      key, p = f"visual.layer{stage}.{block}", (*v, f"layer{stage}_{block}")
      for i in (1, 2, 3):
        yield Entry(f"{key}.conv{i}.weight", ("params", *p, f"conv{i}", "kernel"), "conv")
        yield from _batch_norm(f"{key}.bn{i}", (*p, f"bn{i}"))
      # Blocks that change shape have a shortcut: AvgPool ("-1"), conv ("0"), BN ("1").
      if block == 0:
        yield Entry(f"{key}.downsample.0.weight", ("params", *p, "downsample_conv", "kernel"),
                    "conv")
        yield from _batch_norm(f"{key}.downsample.1", (*p, "downsample_bn"))
  pool = (*v, "attnpool")
  yield Entry("visual.attnpool.positional_embedding",
              ("params", *pool, "positional_embedding"), "copy")
  for name in ("q_proj", "k_proj", "v_proj", "c_proj"):
    yield from _linear(f"visual.attnpool.{name}", (*pool, name))


def open_clip_table(spec: CLIPSpec) -> list[Entry]:
  """open_clip's CLIP names (ViT or ModifiedResNet image tower, text tower)."""
  v, t = spec.vision, spec.text
  if v.kind == "vit":
    vm, emb = ("vision_model",), ("vision_model", "embeddings")
    entries = [
        Entry("visual.class_embedding", ("params", *emb, "class_embedding"), "copy"),
        Entry("visual.conv1.weight", ("params", *emb, "patch_embedding", "kernel"), "conv"),
        Entry("visual.positional_embedding", ("params", *emb, "position_embedding", "embedding"),
              "copy"),
        *_layer_norm("visual.ln_pre", (*vm, "pre_layrnorm")),
        *_open_clip_transformer("visual.transformer", vm, v.layers),
        *_layer_norm("visual.ln_post", (*vm, "post_layernorm")),
        # open_clip's projections are [in, out] parameters used as x @ proj.
        Entry("visual.proj", ("params", "visual_projection", "kernel"), "copy"),
    ]
  else:
    entries = list(_open_clip_resnet(tuple(v.layers)))
  if t is not None:
    tm = ("text_model",)
    entries += [
        Entry("token_embedding.weight",
              ("params", *tm, "embeddings", "token_embedding", "embedding"), "copy"),
        Entry("positional_embedding",
              ("params", *tm, "embeddings", "position_embedding", "embedding"), "copy"),
        *_open_clip_transformer("transformer", tm, t.layers),
        *_layer_norm("ln_final", (*tm, "final_layer_norm")),
        Entry("text_projection", ("params", "text_projection", "kernel"), "copy"),
        Entry("logit_scale", ("params", "logit_scale"), "copy"),
    ]
  return entries


# --------------------------------------------------------------------------- convert

def _to_rrjax(value: np.ndarray, layout: str) -> np.ndarray:
  if layout == "linear":
    return value.T
  if layout == "conv":
    return value.transpose(2, 3, 1, 0)
  if layout.startswith("qkv:"):
    part = int(layout[4:])
    third = value.shape[0] // 3
    value = value[part * third:(part + 1) * third]
    return value.T if value.ndim == 2 else value
  return value


def from_state_dict(state_dict: dict, table: list[Entry], where: str) -> dict:
  """PyTorch arrays by name -> rrjax variables {"params": ..., ["batch_stats": ...]}
  (float32 numpy). Every entry of `table` must be present with a consistent shape."""
  missing = sorted({e.key for e in table} - state_dict.keys())
  if missing:
    raise ValueError(f"{where}: the weights do not fit the architecture of its config: "
                     f"{len(missing)} missing, e.g. {missing[:3]}.")
  flat = {e.path: np.asarray(_to_rrjax(np.asarray(state_dict[e.key]), e.layout), np.float32)
          for e in table}
  return unflatten_dict(flat)


def _to_torch(values: list[np.ndarray], layout: str) -> np.ndarray:
  if layout.startswith("qkv:"):
    return np.concatenate([v.T if v.ndim == 2 else v for v in values], axis=0)
  (value,) = values
  if layout == "linear":
    return value.T
  if layout == "conv":
    return value.transpose(3, 2, 0, 1)
  return value


def to_state_dict(variables: dict, table: list[Entry]) -> dict[str, np.ndarray]:
  """rrjax variables -> PyTorch arrays by name (float32, contiguous), every key of
  `table`; BatchNorm gets the `num_batches_tracked` counters PyTorch expects."""
  flat = {path: np.asarray(value, np.float32)
          for path, value in flatten_dict(unfreeze(variables)).items()}
  grouped: dict[str, list[Entry]] = {}
  for entry in table:
    grouped.setdefault(entry.key, []).append(entry)
  missing = sorted("/".join(e.path) for e in table if e.path not in flat)
  if missing:
    raise ValueError(f"the variables do not have this architecture: missing {missing[:3]}.")
  # np.require keeps 0-d arrays 0-d (logit_scale); ascontiguousarray would make them [1].
  state = {key: np.require(_to_torch([flat[e.path] for e in entries], entries[0].layout),
                           requirements="C")
           for key, entries in grouped.items()}
  for key in list(state):
    if key.endswith(".running_var"):
      state[key.removesuffix("running_var") + "num_batches_tracked"] = np.zeros((), np.int64)
  return state
