"""The noise family of ImageNet-C (rrjax.imagenet_c): gaussian, shot, impulse and speckle
noise."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rrjax.imagenet_c.filters import Corruption


def _standard_normal(key, shape, param):
  del param
  return jax.random.normal(key, shape)


def _gaussian_noise(x, z, c):
  return x + c * z


def _speckle_noise(x, z, c):
  return x + x * c * z


def _uniform(key, shape, param):
  del param
  return jax.random.uniform(key, shape)


def _shot_noise(x, u, c):
  """Poisson(c x) / c by inversion of u ~ U[0, 1): the smallest n with CDF(n) >= u.

  The CDF is summed up to n = c + 8 sqrt(c) + 8 (beyond it the probability is < 1e-12)
  and u is scaled by its float32 total, so rounding cannot push a count past it. Two
  short loops of elementwise work: compiles far faster than jax.random.poisson."""
  lam = x * c
  top = int(c + 8 * math.sqrt(c) + 8)

  def terms(k, state):
    p, cdf = state
    p = p * lam / k
    return p, cdf + p

  def below(k, state):
    p, cdf, n = state
    p, cdf = terms(k, (p, cdf))
    return p, cdf, n + (cdf < target)

  p0 = jnp.exp(-lam)
  total = jax.lax.fori_loop(1, top + 1, terms, (p0, p0))[1]
  target = u * total
  n = jax.lax.fori_loop(1, top + 1, below, (p0, p0, (p0 < target).astype(jnp.float32)))[2]
  return n / c


def _impulse_noise_draw(key, shape, amount):
  flip_key, salt_key = jax.random.split(key)
  return {"flipped": jax.random.bernoulli(flip_key, amount, shape),
          "salted": jax.random.bernoulli(salt_key, 0.5, shape)}


def _impulse_noise(x, draws, amount):
  del amount
  return jnp.where(draws["flipped"], draws["salted"].astype(jnp.float32), x)


CORRUPTIONS = {
    "gaussian_noise": Corruption((0.08, 0.12, 0.18, 0.26, 0.38), _gaussian_noise,
                                 _standard_normal),
    "shot_noise": Corruption((60, 25, 12, 5, 3), _shot_noise, _uniform),
    "impulse_noise": Corruption((0.03, 0.06, 0.09, 0.17, 0.27), _impulse_noise,
                                _impulse_noise_draw),
    "speckle_noise": Corruption((0.15, 0.2, 0.35, 0.45, 0.6), _speckle_noise,
                                _standard_normal),
}
