"""Out-of-class generalisation (SPEC E5, Fig. 5, Table 3): a student and probe trained on
ImageNet-100 (mask range p ~ U(0.5, 0.95) or noise range sigma ~ U(0.1, 0.3)) tested on
5 ImageNet classes it never saw, each relabelled to a similar ImageNet-100 class (cup ->
cocktail shaker, Dungeness crab -> rock crab, mountain bike -> moped, wood rabbit ->
hare, French bulldog -> American Staffordshire terrier), across severities.

  python -m rrjax.main --config=configs/out_of_class.py:kind=mask --workdir=workdirs/ooc/mask
  python -m rrjax.main --config=configs/out_of_class.py:kind=noise --workdir=workdirs/ooc/noise
  python -m rrjax.main --config=configs/out_of_class.py:smoke --workdir=/tmp/ooc

Needs tfds `imagenet2012` (the unseen classes come from its validation split). Sized like
configs/mask.py (8 GPUs, a few GPU-hours). The paper reports accuracy falling smoothly
with severity on the unseen classes (Fig. 5); no single number to match.
"""

from rrjax import config as config_lib

RANGES = {"mask": ({"kind": "mask", "p": (0.5, 0.95)}, (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)),
          "noise": ({"kind": "noise", "sigma": (0.1, 0.3)},
                    (0.05, 0.1, 0.2, 0.3, 0.4, 0.5))}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, kind="mask", **config_lib.COMMON_ARGS)
  if args.kind not in RANGES:
    raise ValueError(f"kind={args.kind!r}; choose one of {sorted(RANGES)}.")
  c = config_lib.base_config()
  c.experiment = "E5"
  c.operator, c.eval.levels = RANGES[args.kind]
  c.evals = config_lib.evals("out_of_class")
  config_lib.apply_common_args(c, args)
  if args.smoke:
    # Generated data has no unseen ImageNet classes: test on the smoke classes instead.
    c.evals = config_lib.evals("classification")
  return c


def get_sweep():
  return ["kind=mask", "kind=noise"]
