"""Zero-shot class names, templates and prompt-ensembled classifiers (rrjax.zero_shot).

The packaged lists are checked against facts stated independently here (lengths, order,
well-known entries); `classifier` against a plain per-class numpy loop, with a fake text
tower and with a tiny random CLIP teacher saved in the open_clip layout (nothing is
downloaded).
"""

import importlib.resources

import numpy as np
import pytest

from rrjax import zero_shot
from rrjax.models import clip
from rrjax.teachers import clip as clip_teacher


def _data_rows(file_name):
  text = importlib.resources.files("rrjax.data").joinpath(file_name).read_text()
  lines = text.splitlines()
  assert lines[0].startswith("#") and "License" in text  # Provenance comes first.
  return [line.split("\t") for line in lines if not line.startswith("#")]


def test_imagenet_list_is_the_sorted_wnids_with_clip_names():
  rows = _data_rows("imagenet1k_class_names.txt")
  wnids = [wnid for wnid, _ in rows]
  assert len(rows) == 1000 and all(len(row) == 2 for row in rows)
  # The standard class index is the position of the wnid in sorted order.
  assert wnids == sorted(wnids) and len(set(wnids)) == 1000
  names = dict(rows)
  # Well-known class indices 0, 1, 162, 207, 999 and CLIP's own renamings.
  assert (wnids[0], wnids[1], wnids[162], wnids[207], wnids[999]) == (
      "n01440764", "n01443537", "n02088364", "n02099601", "n15075141")
  assert [names[w] for w in ("n01440764", "n01443537", "n02088364", "n02099601",
                             "n15075141")] == [
      "tench", "goldfish", "Beagle", "Golden Retriever", "toilet paper"]
  assert names["n04008634"] == names["n03773504"] == "missile"


@pytest.mark.parametrize("dataset, size, spot_checks", [
    ("cifar10", 10, {0: "airplane", 1: "automobile", 6: "frog", 9: "truck"}),
    ("cifar100", 100, {0: "apple", 1: "aquarium fish", 58: "pickup truck", 99: "worm"}),
    ("stl10", 10, {0: "airplane", 2: "car", 7: "monkey", 9: "truck"}),
])
def test_dataset_lists_in_label_order(dataset, size, spot_checks):
  rows = _data_rows(f"{dataset}_class_names.txt")
  assert len(rows) == size
  for index, name in spot_checks.items():
    assert rows[index][1] == name
  if dataset == "cifar100":
    # tfds's fine labels are alphabetical with underscores.
    labels = [label for label, _ in rows]
    assert labels == sorted(labels) and rows[1] == ["aquarium_fish", "aquarium fish"]
  # Feeding the raw label names through class_names gives CLIP's names in label order.
  labels, names = zip(*rows)
  assert zero_shot.class_names(labels, dataset) == list(names)


def test_class_names_for_wnids_datasets_and_folders():
  assert zero_shot.class_names(["n02088364", "n01440764"]) == ["Beagle", "tench"]
  with pytest.raises(ValueError, match=r"n09999999.*evals.zero_shot.class_names_file"):
    zero_shot.class_names(["n01440764", "n09999999"])
  # A tfds name with a version, and a subset of its labels in another order.
  assert zero_shot.class_names(["sweet_pepper", "apple"], "cifar100:3.0.2") == [
      "sweet pepper", "apple"]
  # STL-10's own list maps "car" to itself; folder names fall back to underscores.
  assert zero_shot.class_names(["car", "monkey"], "stl10") == ["car", "monkey"]
  assert zero_shot.class_names(["golden_retriever", "fire truck"], "cifar10") == [
      "golden retriever", "fire truck"]
  assert zero_shot.class_names(["n01440764", "tench_fish"]) == ["n01440764", "tench fish"]


def test_templates():
  clip80 = zero_shot.templates()
  assert len(clip80) == 80 == len(set(clip80)) and all(t.count("{}") == 1 for t in clip80)
  assert clip80[0] == "a bad photo of a {}." and clip80[-1] == "a tattoo of the {}."
  assert "itap of a {}." in clip80
  assert zero_shot.templates("single") == ["a photo of a {}."]
  with pytest.raises(ValueError, match=r"evals.zero_shot.templates='ensemble'.*clip80, single"):
    zero_shot.templates("ensemble")


def _reference_classifier(embed_text, names, templates):
  """CLIP's notebook, one class at a time, in float64."""
  rows = []
  for name in names:
    embeddings = np.asarray(embed_text([t.format(name) for t in templates]), np.float64)
    embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
    mean = embeddings.mean(axis=0)
    rows.append(mean / np.linalg.norm(mean))
  return np.stack(rows)


class FakeTextTower:
  """A fixed random embedding per prompt string, recording the batch sizes it sees."""

  def __init__(self, dim=6):
    self.dim, self.batch_sizes = dim, []

  def __call__(self, prompts):
    self.batch_sizes.append(len(prompts))
    return np.stack([np.random.default_rng(list(p.encode())).normal(size=self.dim) * 3
                     for p in prompts]).astype(np.float32)


def test_classifier_is_the_normalised_mean_of_normalised_prompts():
  names, templates = ["cat", "dog", "fire truck"], zero_shot.templates()[:7]
  tower = FakeTextTower()
  weights = zero_shot.classifier(tower, names, templates, batch_size=4)
  # 21 prompts in batches of 4, the last padded: one shape for a jitted text tower.
  assert tower.batch_sizes == [4] * 6
  assert weights.shape == (3, 6) and weights.dtype == np.float32
  np.testing.assert_allclose(weights, _reference_classifier(tower, names, templates),
                             atol=1e-6)
  # Fewer prompts than a batch: one call with exactly those.
  tower.batch_sizes = []
  zero_shot.classifier(tower, names, ["a photo of a {}."], batch_size=256)
  assert tower.batch_sizes == [3]


def test_stored_classifier_is_built_once_per_teacher_names_and_templates(tmp_path):
  names, templates = ["cat", "dog"], zero_shot.templates()[:3]
  tower = FakeTextTower()
  store = lambda fingerprint, names, templates: zero_shot.stored_classifier(
      str(tmp_path), fingerprint, tower, names, templates)
  first = store("teacher-a", names, templates)
  np.testing.assert_array_equal(first, zero_shot.classifier(FakeTextTower(), names, templates))
  calls = len(tower.batch_sizes)
  np.testing.assert_array_equal(store("teacher-a", names, templates), first)
  assert len(tower.batch_sizes) == calls == 1  # The second came from the file.
  # Another teacher, class list or template set is another classifier, built anew.
  store("teacher-b", names, templates)
  store("teacher-a", names[::-1], templates)
  store("teacher-a", names, templates[:2])
  assert len(tower.batch_sizes) == 4 and len(list(tmp_path.iterdir())) == 4


def test_classifier_rejects_bad_templates():
  with pytest.raises(ValueError, match="needs a '{}'"):
    zero_shot.classifier(FakeTextTower(), ["cat"], ["a photo of a cat."])
  with pytest.raises(ValueError, match="0 templates"):
    zero_shot.classifier(FakeTextTower(), ["cat"], [])


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
  path = clip.create_tiny_clip(str(tmp_path_factory.mktemp("tiny_vit_oc")), vision="vit",
                               layout="open_clip")
  return clip_teacher.CLIPTeacher(path)


def test_classifier_with_a_real_clip_text_tower(tiny_teacher):
  names = zero_shot.class_names(["n01440764", "n02088364", "n15075141"])
  templates = zero_shot.templates()[:5]
  # Batches of 5 prompts, the reference's shape too: the text tower compiles once.
  weights = zero_shot.classifier(tiny_teacher.embed_text, names, templates, batch_size=5)
  assert weights.shape == (3, tiny_teacher.dim)
  np.testing.assert_allclose(np.linalg.norm(weights, axis=-1), 1, atol=1e-6)
  reference = _reference_classifier(tiny_teacher.embed_text, names, templates)
  np.testing.assert_allclose(weights, reference, atol=2e-5)
  # The ensemble is not just one template's embedding.
  first = np.stack([np.asarray(tiny_teacher.embed_text([t.format(name) for t in templates]))[0]
                    for name in names])
  assert np.abs(weights - first / np.linalg.norm(first, axis=-1, keepdims=True)).max() > 1e-2
