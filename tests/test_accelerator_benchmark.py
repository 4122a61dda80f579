"""`benchmarks/accelerator.py --quick` on CPU: every section runs, measures a positive
throughput, records no error and says which devices and software it ran on; `--plan`'s
step analysis and largest-batch arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from support.xla_flags import with_device_count

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "accelerator.py")
DEVICE_FIELDS = ("device_kind", "device_count", "backend", "jax_version", "date", "dtype")


def test_quick_run_writes_every_section(tmp_path):
  out = tmp_path / "tmp" / "accelerator.json"
  # One simulated device: the quick run is about the script, not about sharding (and
  # runs faster than on the test suite's 8).
  env = dict(os.environ, RRJAX_SMOKE_DIR=str(tmp_path / "smoke"),
             XLA_FLAGS=with_device_count(1))
  done = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", str(out),
                         "--workdir", str(tmp_path / "work")],
                        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads(out.read_text())
  assert results["quick"] is True
  assert set(results["sections"]) == {"student", "teacher", "pipeline", "e2e"}
  for name, section in results["sections"].items():
    assert section["error"] is None, (name, section["error"])
    for field in DEVICE_FIELDS:
      assert section[field], (name, field)
    assert section["device_count"] == 1 and section["backend"] == "cpu"
    assert section["dtype"] == "bfloat16"
    assert section["wall_seconds"] > 0
  sections = results["sections"]
  assert sections["student"]["results"]
  for row in sections["student"]["results"]:
    assert row["images_per_s"] > 0 and row["flops_per_device"] > 0
    assert row["mfu"] is None  # No peak is known for CPUs.
  assert {r["teacher"] for r in sections["teacher"]["results"]} == {"tiny_vit", "tiny_rn"}
  for row in sections["teacher"]["results"]:
    assert row["forward_images_per_s"] > 0 and row["cache_build_images_per_s"] > 0
  assert sections["pipeline"]["images_per_s"] > 0
  assert sections["pipeline"]["num_workers"] == os.cpu_count()
  e2e = sections["e2e"]
  assert e2e["images_per_s"] > 0 and e2e["step_alone_images_per_s"] > 0
  assert e2e["timed_steps"] > 0 and 0 <= e2e["input_wait_fraction"] < 1
  assert e2e["step_alone_from"] == "student section"  # As on the accelerator.
  assert e2e["images_per_s_after_first_window"] > 0 and e2e["windows"]
  # The table is printed, one line per measurement.
  assert "e2e" in done.stdout and "pipeline" in done.stdout


def test_e2e_reuses_the_student_sections_step():
  """On the accelerator the e2e student (ResNet-50, batch 128, 224 px) was already timed
  by the student section: its number is reused instead of compiling the step again."""
  accelerator = _accelerator_module()
  full = accelerator.FULL
  row = {"student": full["e2e_student"], "batch_size": full["e2e_batch"],
         "image_size": full["image_size"], "images_per_s": 123.0}
  other = dict(row, batch_size=full["e2e_batch"] * 2, images_per_s=7.0)
  assert accelerator.same_step(full, {"results": [other, row]}) == 123.0
  assert accelerator.same_step(full, {"results": [other]}) is None
  assert accelerator.same_step(full, None) is None
  assert accelerator.same_step(dict(full, e2e_student="resnet101"), {"results": [row]}) is None


def _accelerator_module():
  sys.path.insert(0, os.path.dirname(SCRIPT))
  try:
    import accelerator
  finally:
    sys.path.remove(os.path.dirname(SCRIPT))
  return accelerator


def test_largest_batch_is_where_the_affine_bytes_meet_the_budget():
  accelerator = _accelerator_module()
  # 10 GB fixed, 1 GB per image: 70 images fit 80 GB, 64 is the multiple of 8 below.
  points = [(b, 10e9 + b * 1e9) for b in (8, 16)]
  assert accelerator.largest_batch(*points, 80e9) == 64
  assert accelerator.largest_batch(*points, 82e9) == 72
  assert accelerator.largest_batch(*points, 9e9) == 0


def test_plan_counts_the_state_and_the_step_of_a_tiny_student():
  """--plan's analysis of one compiled step: parameters and AdamW's two moments as the
  variables count them, FLOPs and activations growing with the batch."""
  accelerator = _accelerator_module()
  module, shapes, dim = accelerator.plan_student("clip_vit_b32", 32, "bfloat16",
                                                 accelerator.QUICK["student_towers"])
  assert module.dtype == jnp.bfloat16 and dim == module.spec.embed_dim
  parameters = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  small, large = (accelerator.step_analysis(module, shapes, dim, b, 32) for b in (8, 16))
  assert small["parameter_bytes"] == 4 * parameters  # float32 whatever the compute dtype.
  # mu and nu per parameter (float32), plus the schedule's step counts.
  assert 8 * parameters <= small["optimizer_bytes"] <= 8 * parameters + 64
  assert large["flops"] > small["flops"] > 0
  assert large["activation_bytes"] > small["activation_bytes"] > 0
  assert large["peak_bytes"] > small["peak_bytes"] > small["activation_bytes"]
