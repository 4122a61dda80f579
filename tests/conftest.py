"""Test-wide set-up: 8 simulated CPU devices and a persistent XLA compilation cache.

XLA_FLAGS must be set before JAX initialises its backends, so this runs first.
Single-device references simply run on the default device; sharded code uses all 8.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("USE_TORCH", "0")
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402

_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "rrjax-tests-xla")
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
