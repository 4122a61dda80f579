"""A probe trained on CLEAN teacher embeddings, applied unchanged to the student on
distorted images (SPEC E8, Table 9): tests that the student lands in the teacher's
embedding space, not just somewhere linearly separable.

  python -m rrjax.main --config=configs/clean_probe.py:p=0.9 --workdir=workdirs/clean_probe
  python -m rrjax.main --config=configs/clean_probe.py:smoke --workdir=/tmp/clean_probe

The probe reads the cached teacher embeddings of the training views (no extra teacher
passes). Sized like configs/mask.py (8 GPUs, a few GPU-hours). Paper (Table 9): close to the distorted-probe
numbers of Table 1, a few points lower.
"""

from rrjax import config as config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, kind="mask", p=0.9, sigma=0.3, **config_lib.COMMON_ARGS)
  c = config_lib.base_config()
  c.experiment = "E8"
  c.operator = ({"kind": "mask", "p": args.p} if args.kind == "mask"
                else {"kind": "noise", "sigma": args.sigma})
  c.probe.features = "clean_teacher"
  return config_lib.apply_common_args(c, args)


def get_sweep():
  return ["kind=mask,p=0.9", "kind=noise,sigma=0.3"]
