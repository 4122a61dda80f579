"""Records the depth each `rrjax.in_flight.pipelined` call asks for, so tests can check that
code under test keeps several batches in flight (and not one at a time)."""

from __future__ import annotations

from rrjax import in_flight


def record_depths(monkeypatch) -> list[int]:
  """Wraps `in_flight.pipelined` for the test; returns the list each call's depth joins."""
  depths = []
  pipelined = in_flight.pipelined

  def spy(items, dispatch, *, depth, **kwargs):
    depths.append(depth)
    return pipelined(items, dispatch, depth=depth, **kwargs)

  monkeypatch.setattr(in_flight, "pipelined", spy)
  return depths
