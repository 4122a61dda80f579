"""Random pixel masks (SPEC §3 `mask`), the paper's headline setting.

Covers E1 (mask columns of Table 1: `p=0.5|0.75|0.9`, with `fractions=0.1` for the 10%
probe and `baseline` for the supervised baseline), E2 (label efficiency:
`fractions=0.001/0.002/0.005/0.01/0.05/0.1`), E3 (train on a range, test harsher:
`p=0.5-0.95,levels=0.96/0.97/0.98/0.99`), E9 (test milder than training:
`p=0.9,levels=0.5/0.75`), E10 (`baseline_init=imagenet:DIR` of an ImageNet-100-trained
ResNet-101) and E13 (zero-shot with CLIP's text tower, reported by every eval).

  python -m rrjax.main --config=configs/mask.py --workdir=workdirs/mask/p0.9
  python -m rrjax.main --config=configs/mask.py:p=0.9,fractions=0.1,baseline --workdir=...
  python -m rrjax.main --config=configs/mask.py:p=0.5-0.95,levels=0.96/0.99 --workdir=...
  python -m rrjax.main --config=configs/mask.py:smoke --workdir=/tmp/mask  # ~1.5 min CPU

Sized for 8 A100/H100-class GPUs or a v4-32 slice (batch 256, the paper's setting: CLIP
RN101 teacher, `timm/resnet101_clip.openai`, cached once, and an RN101 student
initialised from it): roughly 2 GPU-hours for the cache of 25 views of the
126,689 ImageNet-100 training images, then about 1 GPU-hour per student epoch; the probe
and 10-draw evaluation take minutes. ImageNet-100 comes from tfds `imagenet2012`
(prepared manually) or an image folder (`--config.data.source=folder
--config.data.root=DIR`). Paper (CLIP RN101 teacher and student, SPEC §7): 83.0% top-1
at p=0.9 with 100% of labels, 79.9% with 10%; 85.9/84.0 at p=0.5/0.75; zero-shot at
p=0.9: 62.3%.
"""

from rrjax import config as config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, p=0.9, **config_lib.COMMON_ARGS)
  c = config_lib.base_config()
  c.experiment = "E1,E2,E3,E9,E10,E13"
  c.operator = {"kind": "mask", "p": args.p}
  return config_lib.apply_common_args(c, args)


def get_sweep():
  """E1's mask columns (ours at 100% and 10% labels, and the baseline) and E3's range."""
  return ["p=0.5,fractions=0.1,baseline", "p=0.75,fractions=0.1,baseline",
          "p=0.9,fractions=0.1,baseline", "p=0.5-0.95,levels=0.96/0.97/0.98/0.99"]
