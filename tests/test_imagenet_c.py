"""ImageNet-C operators (rrjax/imagenet_c.py) against imagecorruptions 1.1.2.

The reference runs through tests/support/imagecorruptions_ref.py, without its final
uint8 truncation. Each corruption compiles once, all 5 severities together, on a batch
that holds the test images corrupted with the reference's own numpy draws (where its
draws can be replayed: the outputs must then agree to float32 rounding) and with jax's
draws (their statistics must agree with the reference's). Images are 57 x 70: odd and
not multiples of 8 or 16, so JPEG's padding, pixelate's boxes and the zoom crops meet
their edge cases; generated here (smooth gradients, a sharp-edged block, fine texture).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from rrjax import evaluate, imagenet_c, operators, sharding
from support import imagecorruptions_ref

H, W = 57, 70
SEVERITIES = imagenet_c.SEVERITIES
# Cheap keys for the bulk draws: threefry's hash costs ~1 s of XLA compile per program on
# CPU; the operator's own key layout is checked with default keys below.
RNG = jax.random.key(0, impl="unsafe_rbg")
JAX_DRAWS = 10  # Images corrupted with jax's draws per severity.
REFERENCE_SEEDS = range(8)  # Reference draws per severity for statistics.

# Float32 against the reference's float64, in [0, 1] units (1e-5 = 0.0026 / 255).
ATOL = 1e-5
DETERMINISTIC = ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate",
                 "jpeg_compression", "gaussian_blur", "saturate")
# Random corruptions whose numpy draws can be replayed into the jax code.
REPLAYABLE = ("gaussian_noise", "speckle_noise", "motion_blur", "snow", "fog",
              "elastic_transform", "glass_blur", "spatter")
# Not monotone in severity in the reference itself (mean |x' - x| on these images):
# glass_blur's severity 3 iterates 3 times with a smaller shift than 4; zoom_blur's
# step sizes; snow's, frost's, fog's and saturate's parameters are not ordered.
NOT_MONOTONE = ("glass_blur", "zoom_blur", "snow", "frost", "fog", "saturate")


def clean_images() -> np.ndarray:
  """Two uint8 [H, W, 3] images: gradients, a saturated block with sharp edges, texture."""
  yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
  images = []
  for seed in (0, 1):
    rng = np.random.default_rng(seed)
    image = np.stack([0.5 + 0.4 * np.sin(3 * xx + seed + 1), 0.3 + 0.5 * yy,
                      0.6 - 0.3 * xx * yy], -1)
    image[H // 4:H // 2, W // 3:2 * W // 3] = (0.9, 0.2, 0.1)
    image += 0.06 * rng.standard_normal((H, W, 3))
    images.append(np.clip(np.round(image * 255), 0, 255).astype(np.uint8))
  return np.stack(images)


def reference_draws(name: str, severity: int, seed: int):
  """The reference's numpy draws for `name`, in the layout of imagenet_c's draw functions.

  Seeds numpy's global generator as imagecorruptions_ref.corrupt does and draws in the
  reference's order (numpy's normal(loc, scale) and uniform(low, high) are affine in its
  standard draws, which is what the jax code takes)."""
  np.random.seed(seed)
  if name in ("gaussian_noise", "speckle_noise"):
    return np.random.standard_normal((H, W, 3))
  if name == "motion_blur":
    return {"angle": np.random.uniform(-45, 45)}
  if name == "snow":
    normal = np.random.standard_normal((H, W))
    return {"normal": normal, "angle": np.random.uniform(-135, -45)}
  if name == "spatter":
    return {"normal": np.random.standard_normal((H, W))}
  if name == "elastic_transform":
    return {"dx": np.random.random_sample((H, W)), "dy": np.random.random_sample((H, W))}
  if name == "fog":
    # plasma_fractal draws squares, then the two diamond fills, per halving of the step.
    size = imagenet_c.filters.map_size(H, W)
    uniforms = np.zeros((size, size))
    step = size
    while step >= 2:
      half, k = step // 2, size // step
      uniforms[half::step, half::step] = np.random.random_sample((k, k))
      uniforms[0::step, half::step] = np.random.random_sample((k, k))
      uniforms[half::step, 0::step] = np.random.random_sample((k, k))
      step = half
    return {"uniforms": uniforms}
  assert name == "glass_blur"
  _, delta, iterations = imagenet_c._CORRUPTIONS[name].params[severity - 1]
  shifts = np.zeros((iterations, H, W, 2), np.int32)
  for i in range(iterations):
    for y in range(H - delta, delta, -1):
      for x in range(W - delta, delta, -1):
        shifts[i, y, x] = np.random.randint(-delta, delta, size=(2,))
  return {"shifts": shifts}


def _as_jax(tree):
  return jax.tree.map(lambda a: jnp.asarray(
      a, jnp.int32 if np.asarray(a).dtype.kind == "i" else jnp.float32), tree)


@functools.cache
def ours(name: str) -> dict[str, np.ndarray]:
  """Every severity of `name`, one compile: {"replayed": [5, 2, H, W, 3] (clean images
  with the reference's seed-0 draws; deterministic corruptions: just the clean images),
  "drawn": [5, JAX_DRAWS, H, W, 3] (image 0 with jax's draws; frost: a black image, with
  photograph i % 5 for draw i)}."""
  spec = imagenet_c._CORRUPTIONS[name]
  clean = jnp.asarray(clean_images() / 255.0, jnp.float32)
  replay = name in REPLAYABLE
  # Both clean images take the seed-0 draws, as reference(name, s, i) does.
  replayed = [_as_jax(jax.tree.map(lambda a: np.stack([a, a]), reference_draws(name, s, 0)))
              if replay else None for s in SEVERITIES]

  def run(clean, replayed, rng):
    drawn_input = jnp.zeros_like(clean[:1]) if name == "frost" else clean[:1]
    drawn_images = jnp.repeat(drawn_input, JAX_DRAWS, axis=0)
    out = {"replayed": [], "drawn": []}
    for s, replay_draws in zip(SEVERITIES, replayed):
      param = spec.params[s - 1]
      images, draws = clean, replay_draws
      if spec.draw is not None:
        jax_draws = jax.vmap(lambda k, x: spec.draw(k, x.shape, param))(
            jax.random.split(rng, JAX_DRAWS), drawn_images)
        if name == "frost":
          # Each photograph's statistics twice (the uniform choice, stratified).
          jax_draws["photo"] = jnp.arange(JAX_DRAWS) % 5
        images = drawn_images if replay_draws is None else jnp.concatenate(
            [clean, drawn_images])
        draws = jax_draws if replay_draws is None else jax.tree.map(
            lambda a, b: jnp.concatenate([a, b]), replay_draws, jax_draws)
      corrupted = jax.vmap(lambda x, d: imagenet_c._apply(name, s, x, d),
                           (0, None if draws is None else 0))(images, draws)
      if spec.draw is None:
        out["replayed"].append(corrupted)
      elif replay_draws is None:
        out["drawn"].append(corrupted)
      else:
        out["replayed"].append(corrupted[:2])
        out["drawn"].append(corrupted[2:])
    return {k: jnp.stack(v) for k, v in out.items() if v}

  return {k: np.asarray(v) for k, v in jax.jit(run)(clean, replayed, RNG).items()}


@functools.cache
def reference(name: str, severity: int, image_index: int = 0, seed: int = 0):
  image = clean_images()[image_index] if image_index >= 0 else np.zeros((H, W, 3), np.uint8)
  return imagecorruptions_ref.corrupt(name, image, severity, seed=seed)


def reference_seeds(name: str) -> range:
  # 3 for glass_blur: its reference loops in Python (~0.1 s a call) and its distortion
  # varies little between draws.
  return range(3) if name == "glass_blur" else REFERENCE_SEEDS


def mean_abs_change(corrupted, clean) -> float:
  return float(np.mean(np.abs(corrupted - clean / 255.0)))


# --------------------------------------------------------------------------- all kinds


@pytest.mark.parametrize("name", imagenet_c.NAMES)
def test_range_shape_and_severity_order(name):
  out = ours(name)
  clean = clean_images()
  for images in out.values():
    assert images.shape[0] == 5 and images.shape[2:] == (H, W, 3)
    assert images.dtype == np.float32
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
  if name == "frost":
    images, clean = out["drawn"], np.zeros_like(clean[0])  # Its draws are on black.
  elif "replayed" in out:
    images = out["replayed"]  # Both clean images.
  else:
    images, clean = out["drawn"], clean[0]
  change = [mean_abs_change(images[i], clean) for i in range(5)]
  assert change[4] > change[0] > 0
  if name not in NOT_MONOTONE:
    assert all(np.diff(change) >= -1e-6), change


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_match_reference(name):
  out = ours(name)["replayed"]
  for s in SEVERITIES:
    for i in (0, 1):
      diff = np.abs(out[s - 1, i] - reference(name, s, i))
      if name == "pixelate":
        # PIL rounds to uint8 after each pass of its box filter; this does not round.
        assert diff.max() <= 1 / 255 + ATOL and diff.mean() < 0.6 / 255, (s, i)
      else:
        # jpeg_compression included: libjpeg's integer pipeline, bit for bit.
        assert diff.max() <= ATOL, (s, i, diff.max() * 255)


@pytest.mark.parametrize("name", REPLAYABLE)
def test_replayed_draws_match_reference(name):
  out = ours(name)["replayed"]
  for s in SEVERITIES:
    for i in (0, 1):
      diff = np.abs(out[s - 1, i] - reference(name, s, i, seed=0))
      assert diff.max() <= ATOL, (s, i, diff.max() * 255)


@pytest.mark.parametrize("name", [n for n in imagenet_c.NAMES
                                  if imagenet_c._CORRUPTIONS[n].draw is not None])
def test_drawn_distortion_matches_reference(name):
  """Mean |x' - x| with jax's draws against the reference's over its own draws: equal
  within 4 standard errors of the difference (or 5%, whichever is larger)."""
  drawn = ours(name)["drawn"]
  image = -1 if name == "frost" else 0
  clean = np.zeros((H, W, 3)) if name == "frost" else clean_images()[0]
  for s in SEVERITIES:
    mine = np.array([mean_abs_change(x, clean) for x in drawn[s - 1]])
    theirs = np.array([mean_abs_change(reference(name, s, image, seed), clean)
                       for seed in reference_seeds(name)])
    error = np.sqrt(mine.var(ddof=1) / len(mine) + theirs.var(ddof=1) / len(theirs))
    assert abs(mine.mean() - theirs.mean()) <= max(4 * error, 0.05 * theirs.mean()), s


# --------------------------------------------------------------------------- noise laws


def residuals(name: str, severity: int):
  """(ours, reference): corrupted minus clean, over all draws of image 0."""
  clean = clean_images()[0] / 255.0
  mine = ours(name)["drawn"][severity - 1] - clean
  theirs = np.stack([reference(name, severity, 0, seed) for seed in REFERENCE_SEEDS]) - clean
  return mine, theirs


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "speckle_noise"])
def test_noise_residuals(name):
  for s in SEVERITIES:
    mine, theirs = residuals(name, s)
    assert mine.std() == pytest.approx(theirs.std(), rel=0.03), s
    assert abs(mine.mean() - theirs.mean()) < 0.05 * theirs.std(), s


def test_impulse_noise_fractions():
  clean = clean_images()[0] / 255.0
  inside = (clean > 0) & (clean < 1)
  for s, amount in zip(SEVERITIES, imagenet_c._CORRUPTIONS["impulse_noise"].params):
    mine = ours("impulse_noise")["drawn"][s - 1][:, inside]
    theirs = np.stack([reference("impulse_noise", s, 0, seed) for seed in
                       REFERENCE_SEEDS])[:, inside]
    n = mine.size
    for value in (0.0, 1.0):
      # Each value flips with probability `amount`, half to 0, half to 1 (4 sigma).
      tolerance = 4 * np.sqrt(amount / 2 * (1 - amount / 2) / n)
      assert np.mean(mine == value) == pytest.approx(amount / 2, abs=tolerance)
      assert np.mean(theirs == value) == pytest.approx(amount / 2, abs=tolerance)
    assert np.mean((mine != 0) & (mine != 1)) == pytest.approx(1 - amount, abs=2 * tolerance)


def frost_photo(seed: int) -> int:
  """The photograph the reference picks with this seed (its first draw)."""
  np.random.seed(seed)
  return np.random.randint(5)


def test_frost_layer_statistics():
  """On a black image the output is the frost layer times its weight. Per photograph,
  compare the layer's per-channel mean and spread and its share of fine detail (variance
  removed by a 1 px Gaussian blur) with the reference's crops of that photograph."""
  weight = imagenet_c._CORRUPTIONS["frost"].params[0][1]
  mine = ours("frost")["drawn"][0] / weight
  seeds = {k: [s for s in range(100) if frost_photo(s) == k][:8] for k in range(5)}

  def fine_share(layers):
    gray = layers.mean(-1)
    return np.mean([np.var(g - ndimage.gaussian_filter(g, 1.0)) / np.var(g) for g in gray])

  for photo in range(5):
    ours_layers = mine[photo::5]
    theirs = np.stack([reference("frost", 1, -1, seed) for seed in seeds[photo]]) / weight
    # Our layer's mean is the photograph's; the reference's crops scatter around it.
    crop_means = theirs.mean((1, 2))
    tolerance = 0.03 + 3 * crop_means.std(0, ddof=1) / np.sqrt(len(crop_means))
    assert np.all(np.abs(ours_layers.mean((0, 1, 2)) - crop_means.mean(0)) <= tolerance), photo
    np.testing.assert_allclose(ours_layers.std((1, 2)).mean(0), theirs.std((1, 2)).mean(0),
                               rtol=0.3, err_msg=f"photo {photo}")
    assert fine_share(ours_layers) == pytest.approx(fine_share(theirs), rel=0.35), photo


# --------------------------------------------------------------------------- the operator


def test_operator_through_build_under_jit():
  """The registered kind under jit on a batch: each image draws from its own key, split
  as for every rrjax operator (image i: jax.random.split(jax.random.split(rng, B)[i])[1])."""
  name, severity = "gaussian_noise", 3
  spec = imagenet_c._CORRUPTIONS[name]
  op = operators.build({"kind": "imagenet_c", "corruption": name, "severity": severity})

  def one(key, image):
    draws = spec.draw(jax.random.split(key)[1], image.shape, spec.params[severity - 1])
    return imagenet_c._apply(name, severity, image, draws)

  @jax.jit
  def run(rng, images):
    return op(rng, images), jax.vmap(one)(jax.random.split(rng, len(images)), images)

  clean = jnp.asarray(np.repeat(clean_images()[:1] / 255.0, 3, axis=0), jnp.float32)
  out, expected = (np.asarray(a) for a in run(jax.random.key(7), clean))
  assert out.shape == clean.shape and out.dtype == np.float32
  np.testing.assert_array_equal(out, expected)
  # Three copies of one image come out differently; another key gives another batch.
  assert not np.array_equal(out[0], out[1]) and not np.array_equal(out[1], out[2])
  assert not np.array_equal(np.asarray(run(jax.random.key(8), clean)[0]), out)


def test_operator_keeps_dtype():
  op = jax.jit(operators.build({"kind": "imagenet_c", "corruption": "contrast",
                                "severity": 2}))
  images = jnp.asarray(clean_images() / 255.0, jnp.bfloat16)
  out = op(jax.random.key(0), images)
  assert out.dtype == jnp.bfloat16 and out.shape == images.shape


@pytest.mark.parametrize("spec, message", [
    ({"kind": "imagenet_c", "corruption": "fogg", "severity": 1},
     "'operator.corruption' must be one of ['gaussian_noise'"),
    ({"kind": "imagenet_c", "corruption": "fog", "severity": 6},
     "'operator.severity' must be an integer severity in [1, 2, 3, 4, 5]; got 6"),
    ({"kind": "imagenet_c", "corruption": "fog", "severity": 2.0},
     "'operator.severity' must be an integer severity"),
    ({"kind": "imagenet_c", "corruption": "fog"}, "missing field 'operator.severity'"),
    ({"kind": "imagenet_c", "corruption": "fog", "severity": 1, "p": 0.5},
     "unknown field(s) ['p']"),
])
def test_operator_spec_errors(spec, message):
  with pytest.raises(ValueError) as error:
    operators.build(spec)
  assert message in str(error.value)


def test_operator_rejects_non_rgb():
  op = operators.build({"kind": "imagenet_c", "corruption": "contrast", "severity": 1})
  with pytest.raises(ValueError, match="RGB images"):
    op(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="floats in"):
    op(jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.uint8))


def test_glass_blur_moves_match_the_sequential_loop():
  """The wavefront schedule reproduces the reference's sequential pixel moves exactly,
  including on a size where rounds wrap unevenly (13 x 17, shift 3, 2 iterations)."""
  h, w, delta, iterations = 13, 17, 3, 2
  shifts = np.random.default_rng(0).integers(-delta, delta, (iterations, h, w, 2))
  # The reference's statement on [h, w, 1] arrays: views, so a copy, not a swap.
  x = np.arange(h * w).reshape(h, w, 1)
  for i in range(iterations):
    for y in range(h - delta, delta, -1):
      for xx in range(w - delta, delta, -1):
        dx, dy = shifts[i, y, xx]
        x[y, xx], x[y + dy, xx + dx] = x[y + dy, xx + dx], x[y, xx]
  sources = imagenet_c.blur._glass_sources(jnp.asarray(shifts, jnp.int32), h, w, delta)
  np.testing.assert_array_equal(np.asarray(sources), x.ravel())


def test_severities_share_one_compiled_evaluation_program():
  """The five severities of a corruption run through one evaluation program with the
  severity as an argument: one compile, each severity's outputs those of its own operator."""
  images = np.random.default_rng(4).integers(0, 256, (8, 6, 6, 3), dtype=np.uint8)
  batch = {"image": images, "label": np.zeros(8, np.int32), "id": np.arange(8, dtype=np.int32),
           "valid": np.ones(8, bool)}
  output_fn = lambda variables, corrupted, batch: jnp.mean(corrupted, axis=(1, 2))
  mesh = sharding.make_mesh(jax.devices()[:1])
  built = [operators.build({"kind": "imagenet_c", "corruption": "gaussian_noise", "severity": s})
           for s in SEVERITIES]
  assert len({op.program for op in built}) == 1
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), i))(
      jnp.arange(8))
  for op in built:
    got = evaluate.collect_outputs(output_fn, None, [batch], mesh=mesh, key=jax.random.key(0),
                                   repeats=1, operator=op)
    want = np.mean(op.keyed(keys, images / 255.0), axis=(1, 2))
    # The same float32 operations in another program: equal up to fusion choices.
    np.testing.assert_allclose(got["outputs"][0], want, atol=1e-6)
  run = evaluate._compiled_draws(output_fn, built[0].program, 1, sharding.replicated(mesh))
  assert run._cache_size() == 1
