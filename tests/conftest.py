"""Test-wide set-up: 8 simulated CPU devices.

XLA_FLAGS must be set before JAX initialises its backends, so this runs first. The device
count is added to the user's XLA_FLAGS (e.g. `--xla_cpu_max_isa=AVX2`), not put in their
place.
Single-device references simply run on the default device; sharded code uses all 8.
No persistent compilation cache: on CPU, multi-device programs with collectives loaded
from it deadlock in XLA's in-process rendezvous (jax 0.10.2). Tests share compiled
functions through module- and session-scoped fixtures instead.
"""

import os

from support.xla_flags import with_device_count

os.environ["XLA_FLAGS"] = with_device_count(8)
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
