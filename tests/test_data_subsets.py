import numpy as np
import pytest

from rrjax.data import subsets


class _Source:
  def __init__(self, labels):
    self.labels, self.num_classes, self.class_names = np.asarray(labels), 3, ["a", "b", "c"]

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"image": np.full((2, 2, 3), i, np.uint8), "label": int(self.labels[i]), "id": i}


def test_class_balanced_fraction_per_class_and_deterministic():
  labels = np.repeat([0, 1, 2], [100, 40, 7])
  indices = subsets.class_balanced_indices(labels, 0.1, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[indices]), [10, 4, 1])
  assert len(np.unique(indices)) == len(indices)
  np.testing.assert_array_equal(indices, subsets.class_balanced_indices(labels, 0.1, seed=0))
  assert not np.array_equal(indices, subsets.class_balanced_indices(labels, 0.1, seed=1))
  tiny = subsets.class_balanced_indices(labels, 0.001, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[tiny]), [1, 1, 1])  # one per class at least
  np.testing.assert_array_equal(subsets.class_balanced_indices(labels, 1.0, 0), np.arange(147))
  with pytest.raises(ValueError, match="label_fraction"):
    subsets.class_balanced_indices(labels, 0.0, 0)


def test_subset_keeps_example_ids_and_labels():
  source = _Source(np.repeat([0, 1, 2], 4))
  subset = subsets.Subset(source, np.array([1, 5, 10]))
  assert len(subset) == 3 and subset.num_classes == 3
  assert [subset[i]["id"] for i in range(3)] == [1, 5, 10]
  np.testing.assert_array_equal(subset.labels, [0, 1, 2])
