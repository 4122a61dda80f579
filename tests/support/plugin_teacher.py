"""The README's minimal plug-in teacher: `image_size`, `dim`, `fingerprint` and a numpy
`embed`, nothing else (no `params`/`apply`), for end-to-end runs of every teacher path.
`--config.teacher.kind=python --config.teacher.factory=support.plugin_teacher:make`
(with tests/ on the path)."""

import numpy as np


class ColourStatistics:
  """Per-channel means and standard deviations over 4 image quadrants: 24 features."""
  image_size, dim, fingerprint = 32, 24, "colour-statistics-v1"

  def embed(self, images):
    images = np.asarray(images, np.float32) / 255.0
    half = self.image_size // 2
    quadrants = [images[:, y:y + half, x:x + half] for y in (0, half) for x in (0, half)]
    return np.concatenate([np.concatenate([q.mean(axis=(1, 2)), q.std(axis=(1, 2))], axis=1)
                           for q in quadrants], axis=1)


def make(cfg):
  del cfg
  return ColourStatistics()
