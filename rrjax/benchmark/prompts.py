"""Zero-shot prompts of the robust-CLIP benchmark: class names and templates per dataset.

The strings are the ones CLIP_benchmark (LAION-AI/CLIP_benchmark) classifies with, which
are CLIP's published ones (openai/CLIP data/prompts.md and its ImageNet notebook), keyed
by tfds dataset name and listed in the order of tfds's label indices:

- `prompts/templates.json`: each dataset's templates (CLIP_benchmark's
  en_zeroshot_classification_templates.json, its `{c}` written `{}`);
- `prompts/classnames.json`: the class names CLIP_benchmark takes from its
  en_classnames.json (pets, flowers, EuroSAT, Caltech-101, PCam, SVHN, MNIST) or from the
  data set's own label names (Food-101, SUN397, RESISC45, Cars, DTD: tfds's names, written
  as CLIP published them);
- `prompts/imagenet_subsets.json`: the 200 ImageNet classes of ImageNet-R and -A;
- CIFAR-10/100, STL-10 and the ImageNet sets reuse `rrjax/data`'s CLIP names and its 80
  ImageNet templates (`rrjax.zero_shot`), the same strings.

Each JSON file's "provenance" field names its sources (repository, path, commit).

tfds labels ImageNet-R and ImageNet-A with ImageNet-1k indices; their zero-shot classifier
has only their 200 classes (as in CLIP_benchmark and the papers that report them):
`load` gives those 200 names and `class_subset` the ImageNet-1k index of each, so a tfds
label l is class `class_subset(dataset).index(l)`.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from typing import Sequence

from rrjax import zero_shot

# The tfds datasets with packaged prompts, in FARE's table order, then the ImageNet sets.
DATASETS = ("cifar10", "cifar100", "stl10", "food101", "oxford_iiit_pet", "oxford_flowers102",
            "dtd", "eurosat", "caltech101", "sun397", "cars196", "patch_camelyon",
            "svhn_cropped", "mnist", "resisc45", "imagenet2012", "imagenet_v2", "imagenet_r",
            "imagenet_a", "imagenet_sketch")
IMAGENET_DATASETS = ("imagenet2012", "imagenet_v2", "imagenet_r", "imagenet_a",
                     "imagenet_sketch")
# Datasets whose class names are rrjax/data's CLIP names (`zero_shot.packaged_class_names`).
_RRJAX_CLASS_NAMES = ("cifar10", "cifar100", "stl10")


@functools.cache
def _packaged(file_name: str) -> dict:
  text = importlib.resources.files("rrjax.benchmark").joinpath("prompts", file_name).read_text()
  return json.loads(text)


def _base_name(dataset: str) -> str:
  """The tfds builder name of "name", "name:version" or "name/config"."""
  name = re.split(r"[:/]", dataset, maxsplit=1)[0]
  if name not in DATASETS:
    raise ValueError(f"dataset {dataset!r} has no packaged zero-shot prompts; use one of "
                     f"{', '.join(DATASETS)}, or an image folder (`load_folder`).")
  return name


def class_subset(dataset: str) -> list[int] | None:
  """The ImageNet-1k indices (ascending) of the 200 classes of "imagenet_r" and
  "imagenet_a", whose tfds labels are ImageNet-1k indices; None for any other dataset."""
  name = _base_name(dataset)
  subsets = _packaged("imagenet_subsets.json")["wnids"]
  if name not in subsets:
    return None
  index = {wnid: i for i, wnid in enumerate(zero_shot.packaged_class_names("imagenet1k"))}
  return sorted(index[wnid] for wnid in subsets[name])


def load(dataset: str) -> tuple[list[str], list[str]]:
  """(class names, templates) of a tfds dataset of DATASETS (also "name:version" or
  "name/config"): the names in label order (for ImageNet-R/A, in `class_subset` order),
  each template with one "{}" where a class name goes."""
  name = _base_name(dataset)
  if name in IMAGENET_DATASETS:
    names = list(zero_shot.packaged_class_names("imagenet1k").values())
    subset = class_subset(name)
    if subset is not None:
      names = [names[i] for i in subset]
    return names, zero_shot.templates("clip80")
  templates = list(_packaged("templates.json")["templates"][name])
  if name in _RRJAX_CLASS_NAMES:
    return list(zero_shot.packaged_class_names(name).values()), templates
  return list(_packaged("classnames.json")["classnames"][name]), templates


def load_folder(folder_names: Sequence[str]) -> tuple[list[str], list[str]]:
  """(class names, templates) of an image folder from its class folders' names in label
  order (`ImageFolderSource.class_names`): wnids become ImageNet's CLIP names, other
  names are read with "_" as spaces; CLIP's 80 ImageNet templates."""
  return zero_shot.class_names(folder_names), zero_shot.templates("clip80")
