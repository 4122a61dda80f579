"""The operator grid tool writes a real, correctly laid out PNG."""

import math

import numpy as np
import pytest
from PIL import Image

from rrjax import imagenet_c, operators
from rrjax.tools import show_operators

SIZE = 32


def tiles(path):
  """The grid's image tiles in reading order (label strips cut off)."""
  grid = np.asarray(Image.open(path).convert("RGB"))
  strip = show_operators.label_height(SIZE)
  rows, columns = grid.shape[0] // (SIZE + strip), grid.shape[1] // SIZE
  return [grid[r * (SIZE + strip) + strip:(r + 1) * (SIZE + strip), c * SIZE:(c + 1) * SIZE]
          for r in range(rows) for c in range(columns)]


def test_writes_the_paper_grid_for_an_image(tmp_path):
  pixels = np.random.default_rng(0).integers(20, 256, (SIZE, SIZE, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(tmp_path / "input.png")
  out = tmp_path / "plots" / "grid.png"
  show_operators.main(["--image", str(tmp_path / "input.png"), "--out", str(out),
                       "--size", str(SIZE)])
  with Image.open(out) as grid:
    assert grid.format == "PNG"
    assert grid.size == (3 * SIZE, 3 * (SIZE + show_operators.label_height(SIZE)))
  clean, *corrupted = tiles(out)
  np.testing.assert_array_equal(clean, pixels)  # Already SIZE x SIZE: no resampling.
  # Tiles follow PAPER_SETTINGS: masks zero exactly floor(H*W*p) pixels (inputs are >= 20).
  for tile, spec in zip(corrupted, operators.PAPER_SETTINGS):
    zeroed = (tile == 0).all(-1).sum()
    if spec["kind"] == "mask":
      assert zeroed == math.floor(SIZE * SIZE * spec["p"])
    else:
      assert zeroed < SIZE * SIZE // 10 and not np.array_equal(tile, pixels)


def test_generated_image_and_bad_arguments(tmp_path):
  out = tmp_path / "grid.png"
  show_operators.main(["--out", str(out), "--size", str(SIZE), "--columns", "9"])
  with Image.open(out) as grid:
    assert grid.size == (9 * SIZE, SIZE + show_operators.label_height(SIZE))
  with pytest.raises(FileNotFoundError, match="missing.jpg"):
    show_operators.main(["--image", str(tmp_path / "missing.jpg"), "--out", str(out)])
  with pytest.raises(ValueError, match="--size must be at least 1"):
    show_operators.main(["--out", str(out), "--size", "0"])


def test_imagenet_c_grid_has_a_row_per_corruption_and_a_column_per_severity(tmp_path):
  # All 19 rows take ~30 s of XLA compilation on CPU, too long for a unit test: the full
  # grid's layout is checked from its rows, the pixels on five corruptions that compile
  # fast (random, pointwise, resampling, blurring).
  rows = show_operators.imagenet_c_rows()
  assert [row[0] for row in rows] == [(f"{name}: clean", None) for name in imagenet_c.NAMES]
  for name, (_, *levels) in zip(imagenet_c.NAMES, rows):
    assert [label for label, _ in levels] == [f"severity {s}" for s in range(1, 6)]
    assert [spec for _, spec in levels] == [
        {"kind": "imagenet_c", "corruption": name, "severity": s} for s in range(1, 6)]
  names = ["gaussian_noise", "contrast", "brightness", "pixelate", "gaussian_blur"]
  out = tmp_path / "imagenet_c.png"
  show_operators.main(["--imagenet_c", "--corruptions", ",".join(names), "--out", str(out),
                       "--size", str(SIZE)])
  with Image.open(out) as grid:
    assert grid.format == "PNG"
    assert grid.size == (6 * SIZE, len(names) * (SIZE + show_operators.label_height(SIZE)))
  found = tiles(out)
  clean = show_operators.synthetic_image(SIZE)
  for row, name in enumerate(names):
    first, *severities = found[6 * row:6 * (row + 1)]
    np.testing.assert_array_equal(first, clean)
    change = [np.abs(tile.astype(int) - clean).mean() for tile in severities]
    # Columns in severity order: on this image each corruption moves it further per level.
    assert 0 < change[0] < change[1] < change[2] < change[3] < change[4], (name, change)
  with pytest.raises(ValueError, match="must be one of"):
    show_operators.main(["--imagenet_c", "--corruptions", "fogg", "--out", str(out)])
  with pytest.raises(ValueError, match="--columns does not apply"):
    show_operators.main(["--imagenet_c", "--columns", "3", "--out", str(out)])
