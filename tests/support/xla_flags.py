"""XLA_FLAGS for test processes: the tests' own flags are added to the user's, never put
in their place, so that e.g. `XLA_FLAGS=--xla_cpu_max_isa=AVX2 pytest` tests that ISA
everywhere, subprocesses included."""

from __future__ import annotations

import os

_DEVICE_COUNT = "--xla_force_host_platform_device_count"


def with_device_count(devices: int, flags: str | None = None) -> str:
  """`flags` (default: this process's XLA_FLAGS) with the simulated CPU device count set
  to `devices`, replacing any count already there and keeping every other flag."""
  flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
  kept = [f for f in flags.split() if not f.startswith(_DEVICE_COUNT)]
  return " ".join(kept + [f"{_DEVICE_COUNT}={devices}"])
