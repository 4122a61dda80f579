"""Additive Gaussian noise (SPEC §3 `noise`, sigma on the [0,1] scale, not clipped).

Covers E1 (noise columns of Table 1: `sigma=0.1|0.3|0.5`, with `fractions=0.1` and
`baseline`), E3 (train on a range, test harsher: `sigma=0.1-0.3,levels=0.35/0.4/0.45/0.5`)
and E9 (test milder than training: `sigma=0.5,levels=0.1/0.3`).

  python -m rrjax.main --config=configs/noise.py:sigma=0.3 --workdir=workdirs/noise/0.3
  python -m rrjax.main --config=configs/noise.py:sigma=0.1-0.3,levels=0.35/0.5 --workdir=...
  python -m rrjax.main --config=configs/noise.py:smoke --workdir=/tmp/noise  # ~1.5 min CPU

Sized like configs/mask.py (8 GPUs, a few GPU-hours per run). Paper (SPEC §7): 84.5 /
81.3 / 76.2% top-1 at sigma 0.1 / 0.3 / 0.5 with 100% of labels; 81.0 / 78.2 / 73.1% with
10%.
"""

from rrjax import config as config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, sigma=0.3, clip=False, **config_lib.COMMON_ARGS)
  c = config_lib.base_config()
  c.experiment = "E1,E3,E9"
  c.operator = {"kind": "noise", "sigma": args.sigma, "clip": args.clip}
  return config_lib.apply_common_args(c, args)


def get_sweep():
  return ["sigma=0.1,fractions=0.1,baseline", "sigma=0.3,fractions=0.1,baseline",
          "sigma=0.5,fractions=0.1,baseline", "sigma=0.1-0.3,levels=0.35/0.4/0.45/0.5"]
