"""Loss ablation (SPEC E6, Fig. 6): the five losses of SPEC §2, each training a student
on masks p ~ U(0.5, 0.95), tested at p = 0.90 ... 0.99.

  python -m rrjax.main --config=configs/loss_ablation.py:loss=student_teacher --workdir=...
  python -m rrjax.main --config=configs/loss_ablation.py:loss=mse,smoke --workdir=/tmp/mse

Sized like configs/mask.py (8 GPUs, a few GPU-hours per loss). Paper (SPEC §7) at 90%
masking: student_teacher 81.9, student_student 81.9, student_both 82.5, mse 77.4 (top-1,
CLIP RN101).
"""

from rrjax import config as config_lib
from rrjax import losses


def get_config(arg=None):
  args = config_lib.parse_arg(arg, loss="student_teacher", **config_lib.COMMON_ARGS)
  c = config_lib.base_config()
  c.experiment = "E6"
  c.operator = {"kind": "mask", "p": (0.5, 0.95)}
  c.loss.kind = args.loss
  c.eval.levels = (0.9, 0.92, 0.94, 0.96, 0.98, 0.99)
  return config_lib.apply_common_args(c, args)


def get_sweep():
  return [f"loss={kind}" for kind in losses.KINDS]
