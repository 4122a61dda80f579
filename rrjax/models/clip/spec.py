"""What a CLIP checkpoint is: architecture and preprocessing, read from either layout.

Two on-disk layouts describe the same models:
- transformers (`config.json`, model_type "clip"; `preprocessor_config.json`): ViTs only;
- open_clip (`open_clip_config.json` with `model_cfg` and `preprocess_cfg`): ViTs and
  OpenAI's ModifiedResNets (RN50, RN101, RN50x4, ...).

`CLIPSpec` is rrjax's one description of both; it converts back to either config so a
trained student can be written in the layout its users load. Options of open_clip that
rrjax's towers do not implement are refused by name rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ACTIVATIONS = ("quick_gelu", "gelu")
# PIL resampling codes in transformers' processor configs.
_RESAMPLE_NAMES = {0: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclasses.dataclass(frozen=True)
class VisionSpec:
  kind: str                      # "vit" | "resnet"
  image_size: int
  width: int                     # ViT hidden size | ResNet stem width (64 for RN50/RN101)
  layers: Any                    # ViT: number of blocks | ResNet: blocks per stage (tuple)
  heads: int                     # ViT attention heads | attention-pool heads
  patch_size: int = 0            # ViT only
  mlp_dim: int = 0               # ViT only
  act: str = "quick_gelu"        # ViT only (ResNets use ReLU)

  @property
  def feature_width(self) -> int:
    """Width of the features the image projection reads (ViT hidden, ResNet 32*width)."""
    return self.width if self.kind == "vit" else 32 * self.width


@dataclasses.dataclass(frozen=True)
class TextSpec:
  context_length: int = 77
  vocab_size: int = 49408
  width: int = 512
  heads: int = 8
  layers: int = 12
  mlp_dim: int = 2048
  act: str = "quick_gelu"
  # Where the text feature is read: None = the highest token id (open_clip's argmax,
  # CLIP's end-of-text token), else the first position of this token id.
  eos_token_id: int | None = None


@dataclasses.dataclass(frozen=True)
class Preprocess:
  mean: tuple[float, float, float] = OPENAI_MEAN
  std: tuple[float, float, float] = OPENAI_STD
  interpolation: str = "bicubic"
  resize_mode: str = "shortest"


@dataclasses.dataclass(frozen=True)
class CLIPSpec:
  embed_dim: int
  vision: VisionSpec
  text: TextSpec | None
  preprocess: Preprocess = Preprocess()

  def describe(self) -> str:
    v = self.vision
    if v.kind == "vit":
      return f"ViT (width {v.width}, {v.layers} layers, patch {v.patch_size}, {v.image_size} px)"
    return f"ModifiedResNet (layers {list(v.layers)}, width {v.width}, {v.image_size} px)"


def _check_act(act: str, where: str) -> str:
  if act not in ACTIVATIONS:
    raise ValueError(f"{where}: activation {act!r} is not supported; rrjax's CLIP towers "
                     f"implement {list(ACTIVATIONS)}.")
  return act


# ---------------------------------------------------------------- transformers layout

_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=32,
                           hidden_act="quick_gelu")
_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8,
                         max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=49407)


def from_hf_config(config: dict, processor: dict | None, where: str) -> CLIPSpec:
  """A transformers CLIP `config.json` (and `preprocessor_config.json`) -> CLIPSpec.
  save_pretrained omits values equal to the defaults, so they are filled in here."""
  if config.get("model_type") != "clip":
    raise ValueError(f"{where}: config.json has model_type {config.get('model_type')!r}, not "
                     "'clip'; rrjax reads transformers CLIP and open_clip checkpoints.")
  v = {**_HF_VISION_DEFAULTS, **(config.get("vision_config") or {})}
  t = {**_HF_TEXT_DEFAULTS, **(config.get("text_config") or {})}
  if v.get("num_channels", 3) != 3:
    raise ValueError(f"{where}: vision num_channels={v['num_channels']}; rrjax takes RGB images.")
  eos = t["eos_token_id"]
  vision = VisionSpec(kind="vit", image_size=int(v["image_size"]), width=int(v["hidden_size"]),
                      layers=int(v["num_hidden_layers"]), heads=int(v["num_attention_heads"]),
                      patch_size=int(v["patch_size"]), mlp_dim=int(v["intermediate_size"]),
                      act=_check_act(v["hidden_act"], where))
  text = TextSpec(context_length=int(t["max_position_embeddings"]),
                  vocab_size=int(t["vocab_size"]), width=int(t["hidden_size"]),
                  heads=int(t["num_attention_heads"]), layers=int(t["num_hidden_layers"]),
                  mlp_dim=int(t["intermediate_size"]), act=_check_act(t["hidden_act"], where),
                  # transformers' legacy configs (eos_token_id 2) read the argmax token;
                  # so does an end-of-text token that is the highest id (CLIP's vocabulary).
                  eos_token_id=None if eos in (2, int(t["vocab_size"]) - 1) else int(eos))
  return CLIPSpec(embed_dim=int(config.get("projection_dim", 512)), vision=vision, text=text,
                  preprocess=_hf_preprocess(processor or {}, vision.image_size, where))


def _hf_preprocess(processor: dict, image_size: int, where: str) -> Preprocess:
  mean, std = processor.get("image_mean", OPENAI_MEAN), processor.get("image_std", OPENAI_STD)
  if not processor.get("do_normalize", True):
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
  crop = processor.get("crop_size")
  crop = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (
      (crop, crop) if crop is not None else None)
  if processor.get("do_center_crop", True) and crop is not None and crop != (image_size,
                                                                             image_size):
    raise ValueError(f"{where}: preprocessor crop_size {crop} differs from the model's "
                     f"image_size {image_size}; fix the processor config so both agree.")
  return Preprocess(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                    interpolation=_RESAMPLE_NAMES.get(processor.get("resample", 3), "bicubic"))


def to_hf_config(spec: CLIPSpec) -> tuple[dict, dict]:
  """(config.json, preprocessor_config.json) of a transformers CLIPModel checkpoint."""
  v, t = spec.vision, spec.text
  if v.kind != "vit" or t is None:
    raise ValueError(f"transformers has no CLIP with a {spec.describe()} image tower (or no text "
                     "tower); export this model in the open_clip format instead.")
  config = {
      "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": spec.embed_dim,
      "logit_scale_init_value": 2.6592,
      "vision_config": {"model_type": "clip_vision_model", "hidden_size": v.width,
                        "intermediate_size": v.mlp_dim, "num_hidden_layers": v.layers,
                        "num_attention_heads": v.heads, "image_size": v.image_size,
                        "patch_size": v.patch_size, "hidden_act": v.act,
                        "projection_dim": spec.embed_dim},
      "text_config": {"model_type": "clip_text_model", "vocab_size": t.vocab_size,
                      "hidden_size": t.width, "intermediate_size": t.mlp_dim,
                      "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
                      "max_position_embeddings": t.context_length, "hidden_act": t.act,
                      "projection_dim": spec.embed_dim,
                      # 2 is transformers' marker for "read the argmax token".
                      "eos_token_id": 2 if t.eos_token_id is None else t.eos_token_id,
                      "bos_token_id": 49406, "pad_token_id": 1},
  }
  resample = {name: code for code, name in _RESAMPLE_NAMES.items()}
  p = spec.preprocess
  processor = {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
               "size": {"shortest_edge": v.image_size}, "do_center_crop": True,
               "crop_size": {"height": v.image_size, "width": v.image_size},
               "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
               "image_mean": list(p.mean), "image_std": list(p.std),
               "resample": resample.get(p.interpolation, 3), "do_convert_rgb": True}
  return config, processor


# -------------------------------------------------------------------- open_clip layout

# open_clip options whose non-default values change the network; rrjax implements the
# defaults (every OpenAI, LAION, DataComp, DFN and MetaCLIP ViT/ResNet CLIP uses them).
_VISION_UNSUPPORTED = dict(ls_init_value=None, attentional_pool=False, no_ln_pre=False,
                           pos_embed_type="learnable", final_ln_after_pool=False, pool_type="tok",
                           timm_model_name=None, qk_norm=False, scaled_cosine_attn=False,
                           scale_heads=False, scale_attn_inner=False, scale_attn=False,
                           scale_fc=False, act_kwargs=None, norm_kwargs=None)
_TEXT_UNSUPPORTED = dict(ls_init_value=None, embed_cls=False, no_causal_mask=False,
                         final_ln_after_pool=False, pool_type="argmax", proj_bias=False,
                         proj_type="linear", hf_model_name=None, qk_norm=False,
                         scaled_cosine_attn=False, scale_heads=False, scale_attn_inner=False,
                         scale_attn=False, scale_fc=False, act_kwargs=None, norm_kwargs=None)


def _refuse_unsupported(cfg: dict, supported: dict, where: str) -> None:
  for key, default in supported.items():
    if cfg.get(key, default) != default:
      raise ValueError(f"{where}: {key}={cfg[key]!r} is not supported by rrjax's CLIP towers "
                       f"(they implement {key}={default!r}).")


def from_open_clip_config(config: dict, where: str) -> CLIPSpec:
  """An open_clip `open_clip_config.json` ({"model_cfg", "preprocess_cfg"}) -> CLIPSpec."""
  model = config.get("model_cfg", config)
  if "embed_dim" not in model or "vision_cfg" not in model:
    raise ValueError(f"{where}: open_clip config without model_cfg.embed_dim/vision_cfg.")
  if model.get("custom_text") and model.get("text_cfg", {}).get("hf_model_name"):
    raise ValueError(f"{where}: text towers from transformers (hf_model_name) are not supported.")
  if model.get("init_logit_bias") is not None:
    raise ValueError(f"{where}: SigLIP-style models (init_logit_bias) are not supported yet.")
  act = "quick_gelu" if model.get("quick_gelu", False) else "gelu"
  v = model["vision_cfg"]
  _refuse_unsupported(v, _VISION_UNSUPPORTED, where + " vision_cfg")
  image_size = v.get("image_size", 224)
  if isinstance(image_size, (list, tuple)):
    if image_size[0] != image_size[1]:
      raise ValueError(f"{where}: non-square image_size {image_size} is not supported.")
    image_size = image_size[0]
  width = int(v.get("width", 768))
  head_width = int(v.get("head_width", 64))
  layers = v.get("layers", 12)
  if isinstance(layers, (list, tuple)):
    vision = VisionSpec(kind="resnet", image_size=int(image_size), width=width,
                        layers=tuple(int(n) for n in layers), heads=width * 32 // head_width)
  else:
    vision = VisionSpec(kind="vit", image_size=int(image_size), width=width, layers=int(layers),
                        heads=width // head_width, patch_size=int(v.get("patch_size", 16)),
                        mlp_dim=int(width * v.get("mlp_ratio", 4.0)), act=act)
  t = model.get("text_cfg", {})
  _refuse_unsupported(t, _TEXT_UNSUPPORTED, where + " text_cfg")
  text_width = int(t.get("width", 512))
  text = TextSpec(context_length=int(t.get("context_length", 77)),
                  vocab_size=int(t.get("vocab_size", 49408)), width=text_width,
                  heads=int(t.get("heads", 8)), layers=int(t.get("layers", 12)),
                  mlp_dim=int(text_width * t.get("mlp_ratio", 4.0)), act=act)
  p = config.get("preprocess_cfg", {})
  preprocess = Preprocess(mean=tuple(float(m) for m in p.get("mean", OPENAI_MEAN)),
                          std=tuple(float(s) for s in p.get("std", OPENAI_STD)),
                          interpolation=p.get("interpolation", "bicubic"),
                          resize_mode=p.get("resize_mode", "shortest"))
  return CLIPSpec(embed_dim=int(model["embed_dim"]), vision=vision, text=text,
                  preprocess=preprocess)


def to_open_clip_config(spec: CLIPSpec) -> dict:
  """The open_clip_config.json of a checkpoint with this architecture."""
  v, t = spec.vision, spec.text
  if t is None:
    raise ValueError("open_clip checkpoints need a text tower.")
  if v.kind == "vit":
    if v.act != t.act:
      raise ValueError("open_clip uses one activation for both towers; this model mixes "
                       f"{v.act} and {t.act}.")
    vision = {"image_size": v.image_size, "layers": v.layers, "width": v.width,
              "head_width": v.width // v.heads, "mlp_ratio": v.mlp_dim / v.width,
              "patch_size": v.patch_size}
  else:
    vision = {"image_size": v.image_size, "layers": list(v.layers), "width": v.width,
              "head_width": v.width * 32 // v.heads, "patch_size": None}
  if t.eos_token_id is not None:
    raise ValueError("open_clip reads the text feature at the highest token id; this model "
                     f"reads it at token {t.eos_token_id}. Export it in the hf format instead.")
  text = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
          "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_dim / t.width}
  p = spec.preprocess
  return {"model_cfg": {"embed_dim": spec.embed_dim, "quick_gelu": t.act == "quick_gelu",
                        "vision_cfg": vision, "text_cfg": text},
          "preprocess_cfg": {"mean": list(p.mean), "std": list(p.std),
                             "interpolation": p.interpolation, "resize_mode": p.resize_mode}}
