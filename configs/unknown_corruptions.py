"""Unknown corruptions (App. D.8's question, experiment E12b next to E12's ImageNet-100C):
does a student trained on a MIXTURE of corruptions, never told which one an image went
through, stay robust to corruption families it never saw?

The student (and the probe) train on a `choice` operator (rrjax/operators.py): each
training image draws one corruption of the trained ImageNet-C families uniformly, then
its severity uniformly from 1..5 (nested choices). The test operators are the
corruptions of the HELD-OUT families at all 5 severities, made on the fly on
ImageNet-100's validation split as in configs/imagenet_c.py (whose docstring says how
they match Hendrycks' code: frost is an approximation, jpeg_compression bit-exact).
Families are Hendrycks & Dietterich's grouping of the 15 common corruptions:

  noise    gaussian_noise, shot_noise, impulse_noise
  blur     defocus_blur, glass_blur, motion_blur, zoom_blur
  weather  snow, frost, fog, brightness
  digital  contrast, elastic_transform, pixelate, jpeg_compression

Arguments: `train` "/"-separated families (default noise/blur) or `paper` (the paper's
own operators as a mixture: mask p ~ U(0.5, 0.95), noise sigma ~ U(0.1, 0.3), blur k=21
sigma ~ U(1, 5), so every ImageNet-C family is held out); `test` "/"-separated families
(default: those not trained on; name trained ones too to compare seen with held-out).

  python -m rrjax.main --config=configs/unknown_corruptions.py --workdir=workdirs/unknown/nb
  python -m rrjax.main --config=configs/unknown_corruptions.py:train=weather/digital \
      --workdir=workdirs/unknown/wd
  python -m rrjax.main --config=configs/unknown_corruptions.py:train=paper \
      --workdir=workdirs/unknown/paper
  python -m rrjax.main --config=configs/unknown_corruptions.py:smoke --workdir=/tmp/unknown
  python -m rrjax.report workdirs/unknown/nb workdirs/imagenet_c/noise \
      --alexnet_errors alexnet_in100c.json --out reports/unknown

The report's ImageNet-C table puts each run's per-corruption accuracy (and mCE, given
AlexNet's errors) next to E12's students trained on one known corruption.

Sized like configs/mask.py (8 A100/H100-class GPUs, a few GPU-hours per run), plus the
mixture: a choice runs each entry only on the images that drew it, so a training image
costs about one corruption setting, the mean of the 35 of noise/blur
(`benchmarks/operators.py` prints the mixture against that mean; not yet timed on an
accelerator). The eval stage tests 40 operators (2 held-out families x 4 corruptions x 5
severities; 75 with all four families), compiled once per corruption (its five
severities share a program), evaluator and model. The smoke variant trains on one
corruption per family (10 settings) and tests one per held-out family at severity 3.
"""

from rrjax import config as config_lib

FAMILIES = {"noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
            "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
            "weather": ("snow", "frost", "fog", "brightness"),
            "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression")}
# One corruption per family for smoke runs: those that compile fastest on CPU.
SMOKE_CORRUPTIONS = {"noise": "gaussian_noise", "blur": "defocus_blur",
                     "weather": "brightness", "digital": "contrast"}
SEVERITIES = (1, 2, 3, 4, 5)
PAPER_MIXTURE = {"kind": "choice", "ops": [
    {"kind": "mask", "p": (0.5, 0.95)}, {"kind": "noise", "sigma": (0.1, 0.3)},
    {"kind": "blur", "kernel_size": 21, "sigma": (1.0, 5.0)}]}


def _families(text: str, argument: str) -> tuple[str, ...]:
  names = tuple(filter(None, str(text).split("/")))
  if not names or not set(names) <= set(FAMILIES):
    raise ValueError(f"{argument}={text!r}: give '/'-separated families from "
                     f"{tuple(FAMILIES)}{' or paper' if argument == 'train' else ''}.")
  return names


def mixture(corruptions) -> dict:
  """One corruption drawn uniformly per image, then its severity uniformly from 1..5."""
  return {"kind": "choice", "ops": [
      {"kind": "choice", "ops": [{"kind": "imagenet_c", "corruption": name, "severity": s}
                                 for s in SEVERITIES]} for name in corruptions]}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, train="noise/blur", test="", **config_lib.COMMON_ARGS)
  trained = () if args.train == "paper" else _families(args.train, "train")
  tested = (_families(args.test, "test") if args.test
            else tuple(f for f in FAMILIES if f not in trained))
  if not tested:
    raise ValueError("test: every family is trained on; name the families to test, e.g. "
                     "test=weather/digital, or train on fewer.")
  members = (lambda family: (SMOKE_CORRUPTIONS[family],)) if args.smoke else FAMILIES.get
  c = config_lib.base_config()
  c.experiment = "E12b"
  c.operator = (PAPER_MIXTURE if args.train == "paper"
                else mixture([name for family in trained for name in members(family)]))
  c.eval.operators = tuple(
      {"kind": "imagenet_c", "corruption": name, "severity": s}
      for family in tested for name in members(family)
      for s in ((3,) if args.smoke else SEVERITIES))
  # What E12 reports, so that the report's ImageNet-C table compares the two families.
  c.evals = config_lib.evals("classification", "zero_shot")
  return config_lib.apply_common_args(c, args)


def get_sweep():
  """Train on two families, test on the other two, both ways; and the paper's operators as
  a mixture, tested on all four families."""
  return ["train=noise/blur", "train=weather/digital", "train=paper"]
