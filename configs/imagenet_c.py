"""ImageNet-100C (SPEC E12, App. D.8): students trained on the range models (mask
p ~ U(0.5, 0.95) or noise sigma ~ U(0.1, 0.3)) tested on the ImageNet-C corruptions
(tfds `imagenet2012_corrupted/<corruption>_<severity>`, 19 kinds x 5 severities)
restricted to the ImageNet-100 classes. The test images come already corrupted, so the
evaluation operator is the identity.

  python -m rrjax.main --config=configs/imagenet_c.py:corruption=gaussian_noise,severity=3 \
      --workdir=workdirs/imagenet_c/gaussian_noise_3
  python -m rrjax.main --config=configs/imagenet_c.py:smoke --workdir=/tmp/inc

Needs tfds `imagenet2012` and `imagenet2012_corrupted` prepared (the latter is generated
from the former by tfds). Sized like configs/mask.py (8 GPUs, a few GPU-hours). The paper reports per-corruption
accuracies in App. D.8; use the sweep for all 95 settings.
"""

from rrjax import config as config_lib

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
               "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
               "elastic_transform", "pixelate", "jpeg_compression", "gaussian_blur",
               "saturate", "spatter", "speckle_noise")
TRAINED = {"mask": {"kind": "mask", "p": (0.5, 0.95)},
           "noise": {"kind": "noise", "sigma": (0.1, 0.3)}}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, corruption="gaussian_noise", severity=3, train="noise",
                              **config_lib.COMMON_ARGS)
  if args.corruption not in CORRUPTIONS or args.severity not in range(1, 6):
    raise ValueError(f"corruption={args.corruption!r}, severity={args.severity}: choose a "
                     f"corruption from {CORRUPTIONS} and a severity 1..5.")
  c = config_lib.base_config()
  c.experiment = "E12"
  c.operator = TRAINED[args.train]
  c.eval.data_name = f"imagenet2012_corrupted/{args.corruption}_{args.severity}"
  c.eval.operators = ({"kind": "identity"},)
  c.evals = config_lib.evals("classification", "zero_shot")  # No cache of the corrupted set.
  config_lib.apply_common_args(c, args)
  if args.smoke:
    c.eval.data_name = ""  # Generated data: test clean smoke images instead.
  return c


def get_sweep():
  return [f"corruption={c},severity={s}" for c in CORRUPTIONS for s in range(1, 6)]
