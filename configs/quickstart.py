"""Quickstart: the whole method on Imagenette (10 easy ImageNet classes, 9,469 training /
3,925 validation images; `python -m rrjax.data.build_tfds imagenette` downloads and
prepares it once, about 1.5 GB, with TensorFlow from the `prepare` extra) with the real
CLIP ViT-B/32 teacher (`openai/clip-vit-base-patch32`, transformers layout, from the
Hugging Face hub) as the teacher and as the student's initialisation, 90% pixel masks, on
a single GPU. The trained student is a drop-in robust CLIP: `python -m rrjax.export
workdirs/quickstart --format hf --out DIR` writes it next to the original text tower.

  pip install -e ".[cuda12,prepare]"
  python -m rrjax.data.build_tfds imagenette
  python -m rrjax.main --config=configs/quickstart.py --workdir=workdirs/quickstart
  python -m rrjax.main --config=configs/quickstart.py:smoke --workdir=/tmp/qs  # CPU, ~1.5 min

Covers the E1 setting (mask p=0.9) at a small scale, with E13's zero-shot evaluation
(Imagenette's wnid labels become CLIP's ImageNet class names, with its 80 prompt
templates). Sized for one A100/H100: the cache (10 views) takes
a few minutes, 15 student epochs well under half an hour, probe and evaluation minutes.
Expected: a probe accuracy far above the teacher's own on masked images (compare with
`configs/no_contrastive.py`); no paper number exists for Imagenette.
"""

from rrjax import config as config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, p=0.9, **config_lib.COMMON_ARGS)
  c = config_lib.base_config()
  c.experiment = "E1,E13"
  c.data.name, c.data.wnids = "imagenette", ""
  c.data.train_split, c.data.eval_split = "train", "validation"
  c.teacher.name = "openai/clip-vit-base-patch32"
  c.operator = {"kind": "mask", "p": args.p}
  c.cache.num_views = 10
  c.num_epochs = 15
  c.batch_size = 128
  c.optimizer.warmup_steps = 200
  c.eval.repeats = 5
  return config_lib.apply_common_args(c, args)
