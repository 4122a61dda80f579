"""Zero-shot classifiers from CLIP's text tower, built the way CLIP's authors built them.

A zero-shot classifier is one unit vector per class in CLIP's joint space; an image is
classified by the cosine between its embedding and each row. Two things decide how good
it is (CLIP paper §3.1.4, "prompt engineering and ensembling"):

- The class names: "a photo of a n01440764." means nothing to a text encoder, so wnids
  are mapped to the human-readable names CLIP's authors used for ImageNet
  (`rrjax/data/imagenet1k_class_names.txt`), and the raw label names of CIFAR-10/100 and
  STL-10 to theirs (`rrjax/data/<dataset>_class_names.txt`). Any other name is used
  with its underscores read as spaces ("aquarium_fish" -> "aquarium fish").
- The prompts: `templates("clip80")` are CLIP's 80 ImageNet templates
  (`rrjax/data/clip_imagenet_templates.txt`); `classifier` embeds every template
  filled with a class name, L2-normalises each text embedding, averages them and
  L2-normalises the mean (an ensemble in embedding space, so it costs nothing at
  inference). `templates("single")` is the one-prompt "a photo of a {}." baseline.

A classifier costs len(class_names) x len(templates) text-tower passes (80,000 prompts
for ImageNet-1k with "clip80"): `stored_classifier` builds it once per (teacher
fingerprint, class names, templates) and keeps it in a directory (the eval stage's), so
every evaluator of a run and every rerun reuses it.

The packaged files start with `#` lines giving their provenance; the loader skips them.
Class-name files hold `label<TAB>name` lines in the data set's label order.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import os
import re
from typing import Callable, Sequence

import jax
import numpy as np

# tfds data sets whose raw label names have a CLIP class-name list in rrjax/data.
DATASETS = ("cifar10", "cifar100", "stl10")
TEMPLATE_KINDS = ("clip80", "single")
SINGLE_TEMPLATE = "a photo of a {}."
_WNID = re.compile(r"n\d{8}")


def _data_lines(file_name: str) -> list[str]:
  """The non-comment, non-empty lines of a packaged rrjax/data file."""
  text = importlib.resources.files("rrjax.data").joinpath(file_name).read_text()
  return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


@functools.cache
def _label_names(file_name: str) -> dict[str, str]:
  """label -> human-readable name, in file (label) order, from a `label<TAB>name` file."""
  return dict(line.split("\t") for line in _data_lines(file_name))


def packaged_class_names(dataset: str) -> dict[str, str]:
  """Raw label name -> CLIP's name, in label order, of "imagenet1k" (wnids) or one of
  DATASETS (the `rrjax/data/<dataset>_class_names.txt` lists)."""
  return _label_names(f"{dataset}_class_names.txt")


def class_names(names: Sequence[str], dataset: str = "") -> list[str]:
  """Human-readable names for a data set's class list `names` (in label order).

  All wnids: each mapped through the ImageNet-1k list (an unknown wnid is a ValueError
  naming it). Otherwise, when `dataset` is one of DATASETS (a tfds name, optionally with
  ":version" or "/config") and every name is one of its raw label names: CLIP's names for
  them. Otherwise: the names with underscores replaced by spaces.
  """
  names = list(names)
  if names and all(_WNID.fullmatch(name) for name in names):
    imagenet = _label_names("imagenet1k_class_names.txt")
    unknown = [name for name in names if name not in imagenet]
    if unknown:
      raise ValueError(f"wnids {unknown[:10]} ({len(unknown)} in all) are not ImageNet-1k "
                       "classes, so they have no zero-shot class name; set "
                       "evals.zero_shot.class_names_file to a file of names in label order.")
    return [imagenet[name] for name in names]
  base_name = re.split(r"[:/]", dataset, maxsplit=1)[0]
  if base_name in DATASETS:
    known = _label_names(f"{base_name}_class_names.txt")
    if all(name in known for name in names):
      return [known[name] for name in names]
  return [name.replace("_", " ") for name in names]


def templates(kind: str = "clip80") -> list[str]:
  """Prompt templates with "{}" where the class name goes: "clip80" (CLIP's 80 ImageNet
  templates) or "single" (["a photo of a {}."])."""
  if kind == "clip80":
    return _data_lines("clip_imagenet_templates.txt")
  if kind == "single":
    return [SINGLE_TEMPLATE]
  raise ValueError(f"evals.zero_shot.templates={kind!r}; allowed: "
                   f"{', '.join(TEMPLATE_KINDS)}.")


def _unit(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  # The same guard as rrjax.losses.l2_normalize: a zero vector stays zero, no NaN.
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def classifier(embed_text: Callable[[list[str]], np.ndarray], class_names: Sequence[str],
               templates: Sequence[str], batch_size: int = 256) -> np.ndarray:
  """Zero-shot weights float32 [num_classes, dim]: row c is the L2-normalised mean of the
  L2-normalised embeddings of every template filled with class_names[c].

  `embed_text(prompts) -> [len(prompts), dim]` is the teacher's text tower
  (`CLIPTeacher.embed_text`). It is called on batches of `batch_size` prompts (fewer
  only when there are fewer prompts in all); the last batch is padded with repeats of its
  last prompt, so a jitted text tower compiles for one batch shape only.
  """
  class_names, templates = list(class_names), list(templates)
  if not class_names or not templates:
    raise ValueError(f"zero-shot needs class names and templates; got {len(class_names)} "
                     f"names and {len(templates)} templates.")
  for template in templates:
    if "{}" not in template:
      raise ValueError(f"prompt template {template!r} needs a '{{}}' where the class name "
                       "goes.")
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be at least 1.")
  prompts = [template.format(name) for name in class_names for template in templates]
  prompt_class = np.repeat(np.arange(len(class_names)), len(templates))
  batch_size = min(batch_size, len(prompts))
  sums = None
  for start in range(0, len(prompts), batch_size):
    batch = prompts[start:start + batch_size]
    count = len(batch)
    batch += [batch[-1]] * (batch_size - count)
    unit = _unit(np.asarray(embed_text(batch), np.float32)[:count])
    if sums is None:
      sums = np.zeros((len(class_names), unit.shape[-1]), np.float32)
    np.add.at(sums, prompt_class[start:start + count], unit)
  # Normalising the sum is normalising the mean: the 1/len(templates) cancels.
  return _unit(sums)


def stored_classifier(directory: str, teacher_fingerprint: str,
                      embed_text: Callable[[list[str]], np.ndarray],
                      class_names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
  """`classifier(embed_text, class_names, templates)`, read from `directory` when it was
  built before for the same teacher (`teacher_fingerprint`), names and templates, else
  built and written there (by process 0; other processes build their own identical copy)."""
  key = hashlib.sha256(json.dumps(
      {"teacher": teacher_fingerprint, "class_names": list(class_names),
       "templates": list(templates)}).encode()).hexdigest()[:32]
  path = os.path.join(directory, f"text_classifier_{key}.npy")
  if os.path.isfile(path):
    return np.load(path)
  weights = classifier(embed_text, class_names, templates)
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    with open(path + ".tmp", "wb") as f:
      np.save(f, weights)
    os.replace(path + ".tmp", path)
  return weights
