"""Gaussian blur (SPEC §3 `blur`: odd kernel, mirror padding).

Covers E1 (blur columns of Table 1: `k=21,sigma=5` and `k=37,sigma=9`, with
`fractions=0.1` and `baseline`).

  python -m rrjax.main --config=configs/blur.py:k=21,sigma=5 --workdir=workdirs/blur/21_5
  python -m rrjax.main --config=configs/blur.py:smoke --workdir=/tmp/blur  # ~1.5 min CPU

Sized like configs/mask.py (8 GPUs, a few GPU-hours per run). Paper (SPEC §7): 83.2 /
77.8% top-1 for (21, 5) / (37, 9) with 100% of labels; 80.9 / 74.8% with 10%.
"""

from rrjax import config as config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, k=21, sigma=5.0, **config_lib.COMMON_ARGS)
  c = config_lib.base_config()
  c.experiment = "E1"
  c.operator = {"kind": "blur", "kernel_size": args.k, "sigma": args.sigma}
  return config_lib.apply_common_args(c, args)


def get_sweep():
  return ["k=21,sigma=5,fractions=0.1,baseline", "k=37,sigma=9,fractions=0.1,baseline"]
