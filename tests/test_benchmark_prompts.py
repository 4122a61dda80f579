"""The benchmark's zero-shot prompts (rrjax.benchmark.prompts): complete, well formed, and
in the label order of tfds's builders (their label names, read offline from the installed
tensorflow_datasets package; CIFAR's and STL-10's come only with the data)."""

from __future__ import annotations

import functools
import importlib.resources
import json
import re

import pytest
import tensorflow_datasets as tfds

from rrjax.benchmark import prompts

# The class counts of the data sets (CLIP_benchmark's Caltech-101 list, like tfds's labels,
# has the background class: 102).
CLASS_COUNTS = {
    "cifar10": 10, "cifar100": 100, "stl10": 10, "food101": 101, "oxford_iiit_pet": 37,
    "oxford_flowers102": 102, "dtd": 47, "eurosat": 10, "caltech101": 102, "sun397": 397,
    "cars196": 196, "patch_camelyon": 2, "svhn_cropped": 10, "mnist": 10, "resisc45": 45,
    "imagenet2012": 1000, "imagenet_v2": 1000, "imagenet_r": 200, "imagenet_a": 200,
    "imagenet_sketch": 1000,
}


@functools.cache
def tfds_label_names(dataset: str) -> list[str]:
  """tfds's label names, from the builder's metadata (no data needed)."""
  return tfds.builder_cls(dataset)().info.features["label"].names


def words(name: str) -> str:
  """A name reduced to its lower-case words: tfds's and CLIP's spellings of a class agree
  on it ("american_bulldog", "American Bulldog")."""
  return " ".join(re.findall(r"[a-z0-9]+", name.lower()))


def test_every_dataset_has_a_name_for_every_class_and_templates_with_one_slot():
  assert set(prompts.DATASETS) == set(CLASS_COUNTS)
  for dataset in prompts.DATASETS:
    names, templates = prompts.load(dataset)
    assert len(names) == CLASS_COUNTS[dataset], dataset
    assert all(isinstance(n, str) and n.strip() == n and n for n in names), dataset
    assert templates, dataset
    for template in templates:
      # Exactly one "{}" and no other brace, so str.format fills it with the name.
      assert template.count("{}") == 1 and template.count("{") == template.count("}") == 1
      assert template.format("X").replace("X", "{}") == template


@pytest.mark.parametrize("dataset", ["food101", "oxford_iiit_pet", "dtd", "sun397", "cars196",
                                     "resisc45", "mnist"])
def test_class_names_follow_the_tfds_label_order(dataset):
  """The names are tfds's, written as CLIP published them (SUN397's without the "/a/"
  folder prefix)."""
  expected = [re.sub(r"^/[a-z]/", "", n) for n in tfds_label_names(dataset)]
  assert [words(n) for n in prompts.load(dataset)[0]] == [words(n) for n in expected]


def test_renamed_classes_sit_at_their_tfds_labels():
  """Where CLIP renamed classes, the names still line up with tfds's labels: every
  name matches tfds's but the renamed ones, which are the ones listed here."""
  renamed = {
      "oxford_flowers102": {"pink-yellow dahlia?": "pink and yellow dahlia",
                            "ball moss": "air plant"},
      "eurosat": {"AnnualCrop": "annual crop land", "HerbaceousVegetation":
                  "brushland or shrubland", "Highway": "highway or road", "Industrial":
                  "industrial buildings or commercial buildings", "Pasture": "pasture land",
                  "PermanentCrop": "permanent crop land", "Residential":
                  "residential buildings or homes or apartments", "SeaLake": "lake or sea",
                  "Forest": "forest", "River": "river"},
      "caltech101": {"airplanes": "airplane", "background_google": "background",
                     "car_side": "side of a car", "cougar_body": "body of a cougar cat",
                     "cougar_face": "face of a cougar cat",
                     "crocodile_head": "head of a  crocodile", "faces": "off-center face",
                     "faces_easy": "centered face", "flamingo_head": "head of a flamingo",
                     "leopards": "leopard", "motorbikes": "motorbike",
                     "snoopy": "snoopy (cartoon beagle)", "yin_yang": "yin and yang symbol"},
  }
  for dataset, renames in renamed.items():
    expected = [renames.get(n, n) for n in tfds_label_names(dataset)]
    assert [words(n) for n in prompts.load(dataset)[0]] == [words(n) for n in expected], dataset


def test_digit_datasets_name_the_digit_of_each_label():
  assert prompts.load("svhn_cropped")[0] == [
      "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
  assert tfds_label_names("svhn_cropped") == [str(d) for d in range(10)]
  # PCam's label 1 is a patch with metastatic tissue.
  assert prompts.load("patch_camelyon")[0][1] == "lymph node containing metastatic tumor tissue"


def test_imagenet_sets_share_imagenet_names_and_the_80_templates():
  imagenet_names, imagenet_templates = prompts.load("imagenet2012")
  assert len(imagenet_templates) == 80
  assert imagenet_names[:3] == ["tench", "goldfish", "great white shark"]
  for dataset in ("imagenet_v2", "imagenet_sketch"):
    assert prompts.load(dataset) == (imagenet_names, imagenet_templates)
    assert prompts.class_subset(dataset) is None
    # tfds labels them with ImageNet-1k's class indices (the sorted wnids).
    assert tfds_label_names(dataset) == tfds_label_names("imagenet2012")
  # Versions and configs are the same data set's.
  assert prompts.load("imagenet_v2/matched-frequency:3.0.0") == prompts.load("imagenet_v2")


@pytest.mark.parametrize("dataset,first,last", [
    ("imagenet_r", ("n01443537", "goldfish"), ("n12267677", "acorn")),
    ("imagenet_a", ("n01498041", "stingray"), ("n12267677", "acorn")),
])
def test_imagenet_r_and_a_classify_among_their_200_classes(dataset, first, last):
  """tfds labels ImageNet-R/A with ImageNet-1k indices; `class_subset` gives those of
  their 200 classes, ascending, and `load` the names of exactly those."""
  subset = prompts.class_subset(dataset)
  assert len(subset) == len(set(subset)) == 200 and subset == sorted(subset)
  wnids = tfds_label_names(dataset)
  assert len(wnids) == 1000
  imagenet_names = prompts.load("imagenet2012")[0]
  names = prompts.load(dataset)[0]
  assert names == [imagenet_names[i] for i in subset]
  assert (wnids[subset[0]], names[0]) == first
  assert (wnids[subset[-1]], names[-1]) == last


def test_the_subsets_differ_and_other_datasets_have_none():
  assert prompts.class_subset("imagenet_r") != prompts.class_subset("imagenet_a")
  assert prompts.class_subset("cifar10") is None


def test_unknown_datasets_are_refused_with_the_alternatives():
  with pytest.raises(ValueError, match="cifar10.*load_folder"):
    prompts.load("cifar11")
  with pytest.raises(ValueError, match="no packaged zero-shot prompts"):
    prompts.class_subset("imagenet_c")


def test_image_folders_get_readable_names_and_the_80_imagenet_templates():
  names, templates = prompts.load_folder(["golden_retriever", "tabby_cat"])
  assert names == ["golden retriever", "tabby cat"]
  assert templates == prompts.load("imagenet2012")[1]
  assert prompts.load_folder(["n01443537", "n01440764"])[0] == ["goldfish", "tench"]


def test_data_files_name_their_sources():
  for file_name in ("classnames.json", "templates.json", "imagenet_subsets.json"):
    text = importlib.resources.files("rrjax.benchmark").joinpath("prompts", file_name).read_text()
    provenance = json.loads(text)["provenance"]
    sources = json.dumps(provenance)
    assert "LAION-AI/CLIP_benchmark" in sources and re.search(r'"commit": "[0-9a-f]{40}"',
                                                              sources), file_name
