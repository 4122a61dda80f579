"""Any CLIP rrjax loads, as what a zero-shot benchmark needs: an image embedder on [0, 1]
pixels (normalisation inside, so attack budgets are in pixel units), a text embedder, the
logit scale and the preprocessing that cuts the model's input from an image.

A `--model` is one of
- a CLIP checkpoint: a hub id or a local directory in the open_clip or transformers layout
  (`rrjax.models.clip.open_checkpoint`);
- an rrjax workdir (`config.json` and a finished `student` stage): its trained student with
  its teacher's text tower and logit scale, which is what `python -m rrjax.export WORKDIR
  --format open_clip` writes (the student restored by `rrjax.export.final_student`);
- an `rrjax.export --format rrjax` directory (`rrjax_model.json`), likewise with the text
  tower of the CLIP it names.
A student is cut from images as its teacher's checkpoint says (interpolation, resize mode)
at its own input size. `describe` is all the preflight reads: configs only, no weights.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rrjax import export, models, objectives
from rrjax.models import clip
from rrjax.stages import student as student_stage

KINDS = ("clip", "workdir", "rrjax_export")


@dataclasses.dataclass(frozen=True, eq=False)
class ModelRef:
  """A --model resolved from its configs: what it is and where its parts come from."""
  name: str            # As given on the command line.
  kind: str            # One of KINDS.
  text_checkpoint: clip.Checkpoint  # The CLIP whose text tower and logit scale are used.
  image_size: int

  @functools.cached_property
  def text_identity(self) -> str:
    """What identifies the text tower's weights (file hashes or hub commit), as JSON."""
    return json.dumps(self.text_checkpoint.identity(), sort_keys=True)

  @property
  def interpolation(self) -> str:
    return self.text_checkpoint.spec.preprocess.interpolation

  @property
  def resize_mode(self) -> str:
    return self.text_checkpoint.spec.preprocess.resize_mode


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """A loaded model. `image_fn(variables, images01 [B,S,S,3]) -> [B, D]` is pure and
  jittable (normalisation inside); `embed_text(prompts) -> [N, D]` numpy."""
  ref: ModelRef
  image_fn: Callable[[Any, jax.Array], jax.Array]
  image_variables: Any
  embed_text: Callable[[list[str]], np.ndarray]
  logit_scale: float


def _is_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(
      os.path.join(path, "student"))


def describe(name: str) -> ModelRef:
  """Resolves a --model from its configs; FileNotFoundError / ValueError saying what to
  give instead."""
  if not isinstance(name, str) or not name:
    raise ValueError("--model must be a hub id or a directory.")
  if os.path.isfile(os.path.join(name, export.RRJAX_CONFIG)):
    with open(os.path.join(name, export.RRJAX_CONFIG)) as f:
      meta = json.load(f)
    text = clip.open_checkpoint(meta["teacher_name"], f"--model={name} (its teacher_name)")
    size = (text.spec.vision.image_size if meta["model"] == "clip" else
            int(meta["image_size"]))
    return ModelRef(name, "rrjax_export", text, size)
  if os.path.isdir(name) and _is_workdir(name):
    config = export.read_config(name)
    if not os.path.isfile(os.path.join(name, "student", "done.json")):
      raise FileNotFoundError(f"--model={name}: the student stage of this workdir has not "
                              "finished (no student/done.json); finish the run first.")
    if config.teacher.kind != "clip":
      raise ValueError(f"--model={name}: its teacher ({config.teacher.kind}) has no CLIP text "
                       "tower, so the student has no zero-shot classifier.")
    text = clip.open_checkpoint(config.teacher.name, f"--model={name} (its teacher.name)")
    cfg = student_stage.model_config(config)
    size = (clip.open_checkpoint(cfg.teacher_name, f"--model={name} (its student)")
            .spec.vision.image_size
            if cfg.model == "clip" else int(config.data.image_size))
    return ModelRef(name, "workdir", text, size)
  checkpoint = clip.open_checkpoint(name, "--model")
  if checkpoint.spec.text is None:
    raise ValueError(f"--model={name} has no text tower; zero-shot needs a whole CLIP.")
  return ModelRef(name, "clip", checkpoint, checkpoint.spec.vision.image_size)


def _student(ref: ModelRef) -> tuple[Any, dict]:
  """(module, variables) of a workdir's or an rrjax export's student."""
  if ref.kind == "rrjax_export":
    return export.load(ref.name)
  config = export.read_config(ref.name)
  state, dim = export.final_student(config, ref.name)
  module = models.build_model(student_stage.model_config(config), dim)
  return module, {"params": state.params, **state.model_state}


def _text_embedder(checkpoint: clip.Checkpoint, variables: dict):
  tokenize = checkpoint.tokenizer()
  apply = jax.jit(clip.CLIPText(checkpoint.spec.text, checkpoint.spec.embed_dim).apply)
  params = {"params": clip.text_params(variables)}
  return lambda prompts: np.asarray(apply(params, jnp.asarray(tokenize(list(prompts)))))


@functools.cache
def embedder(module) -> Callable[[Any, jax.Array], jax.Array]:
  """`(variables, images01) -> [B, D]`: `module` in inference mode. One function per
  architecture (equal Flax modules are equal and hash alike), so models of one
  architecture (OpenAI's ViT-L/14 and FARE's) share every compiled program."""
  features = objectives.student_features(module)
  return lambda variables, images01: features(variables, images01, None)


def load(ref: ModelRef) -> Model:
  """Reads the weights of a resolved model."""
  variables = ref.text_checkpoint.variables()
  logit_scale = float(np.exp(variables["params"]["logit_scale"]))
  if ref.kind == "clip":
    module, image_variables = (clip.CLIPImageEncoder(ref.text_checkpoint.spec),
                               clip.image_variables(variables))
  else:
    module, image_variables = _student(ref)
  return Model(ref, embedder(module), jax.device_get(image_variables),
               _text_embedder(ref.text_checkpoint, variables), logit_scale)
