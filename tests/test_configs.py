"""Every config in configs/ builds (with and without `smoke`), validates, documents its
command and experiment ids, and together they cover SPEC E1-E13; each family's smoke
variant runs the whole pipeline."""

import glob
import json
import os
import re

import jax
import pytest

from rrjax import config as config_lib
from rrjax import sharding, stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
FAMILIES = [os.path.splitext(os.path.basename(p))[0] for p in CONFIGS]


@pytest.fixture(scope="module", autouse=True)
def smoke_dir(tmp_path_factory):
  previous = os.environ.get("RRJAX_SMOKE_DIR")
  os.environ["RRJAX_SMOKE_DIR"] = str(tmp_path_factory.mktemp("smoke_assets"))
  yield
  if previous is None:
    del os.environ["RRJAX_SMOKE_DIR"]
  else:
    os.environ["RRJAX_SMOKE_DIR"] = previous


def _docstring(path):
  text = open(path).read()
  return re.match(r'\s*"""(.*?)"""', text, re.S).group(1)


@pytest.mark.parametrize("path", CONFIGS, ids=FAMILIES)
def test_config_builds_validates_and_documents_itself(path):
  doc = _docstring(path)
  family = os.path.basename(path)
  assert f"--config=configs/{family}" in doc, "the docstring gives the exact command"
  assert re.search(r"\bE\d+\b", doc), "the docstring names its SPEC experiments"
  assert re.search(r"GPU|TPU", doc), "the docstring names the hardware it was sized for"
  for arg in ("", "smoke"):
    config = config_lib.load_config(f"{path}:{arg}" if arg else path)
    assert config.experiment
    if arg == "smoke":
      config_lib.check_config(config, num_devices=8)
      assert config.data.source == "folder" and os.path.isdir(config.data.root)
  with pytest.raises(ValueError, match="not_an_argument"):
    config_lib.load_config(f"{path}:not_an_argument=1")


def test_every_spec_experiment_is_covered():
  covered = set()
  for path in CONFIGS:
    covered |= set(re.findall(r"\bE(\d+)\b", _docstring(path)))
    covered |= set(config_lib.load_config(path).experiment.replace("E", "").split(","))
  assert {str(i) for i in range(1, 14)} <= covered


def test_mask_default_is_the_paper_setting():
  config = config_lib.load_config(os.path.join(REPO, "configs", "mask.py"))
  assert config.operator.to_dict() == {"kind": "mask", "p": 0.9}
  assert (config.loss.kind, config.loss.temperature) == ("student_teacher", 0.1)
  assert (config.batch_size, config.num_epochs, config.optimizer.learning_rate,
          config.optimizer.weight_decay) == (256, 25, 3e-4, 1e-4)
  assert (config.probe.batch_size, config.probe.num_epochs, config.probe.learning_rate) == (
      128, 10, 1e-3)
  assert config.eval.repeats == 10
  # SPEC §5, §8: OpenAI's CLIP RN101 is the teacher and the student's initialisation.
  assert (config.teacher.kind, config.teacher.name) == ("clip", "timm/resnet101_clip.openai")
  assert (config.student.model, config.student.init, config.student.teacher_name) == (
      "clip", "teacher", "")


def test_arguments_parse_into_the_config():
  config = config_lib.load_config(
      os.path.join(REPO, "configs", "noise.py") + ":sigma=0.1-0.3,levels=0.35/0.5,baseline")
  assert config.operator.sigma == (0.1, 0.3)
  assert config.eval.levels == (0.35, 0.5)
  assert "baseline" in config.stages
  assert config.stages.index("baseline") < config.stages.index("eval")


# The mask family runs end to end in tests/test_main.py through `python -m rrjax.main`;
# noise and blur differ from it only in their operator (built and checked above). The
# adversarial family's smoke run (~100 s here, mostly compiling APGD) is left to its
# pieces' tests (tests/test_adversarial*.py). All to keep the suite inside its budget.
E2E_FAMILIES = [f for f in FAMILIES
                if f not in ("mask", "noise", "blur", "quickstart", "adversarial")]


@pytest.mark.parametrize("family", E2E_FAMILIES)
def test_family_smoke_runs_end_to_end(family, tmp_path):
  config = config_lib.load_config(os.path.join(REPO, "configs", f"{family}.py") + ":smoke")
  config.unlock()
  config.eval.repeats = 1
  # Agreement and zero-shot are tested with the mask family in tests/test_main.py.
  for name in [n for n, spec in config.evals.items() if spec.type in ("agreement", "zero_shot")]:
    del config.evals[name]
  config.num_epochs = config.probe.num_epochs = config.baseline.num_epochs = 1
  # Two test operators show the family's evaluation; more only add compile time.
  config.eval.levels = tuple(config.eval.levels)[:2]
  config.eval.operators = tuple(config.eval.operators)[:2]
  stages.run_stages(config, str(tmp_path), mesh=sharding.make_mesh(jax.devices()[:1]))
  report = json.loads((tmp_path / "results.json").read_text())
  assert report["results"], family
  for row in report["results"]:
    assert 0 <= row["top1"]["mean"] <= 100


def test_evaluators_are_chosen_by_name_and_checked():
  config = config_lib.load_config(os.path.join(REPO, "configs", "mask.py"))
  assert {spec.type for spec in config.evals.values()} == {"classification", "zero_shot",
                                                           "agreement"}
  assert config_lib.evaluator_options("zs", {"type": "zero_shot"}) == {
      "type": "zero_shot", "templates": "clip80", "class_names_file": "", "repeats": 0}
  from rrjax import evaluators
  assert set(evaluators.TYPES) == set(config_lib.EVALUATORS)
  with pytest.raises(ValueError, match=r"evals.x.type='nope'"):
    config_lib.evaluator_options("x", {"type": "nope"})
  with pytest.raises(ValueError, match=r"evals.zs has unknown option\(s\) \['template'\]"):
    config_lib.evaluator_options("zs", {"type": "zero_shot", "template": "single"})
  config.unlock()
  config.evals.zero_shot.templates = "ensemble"
  with pytest.raises(ValueError, match="evals.zero_shot.templates"):
    config_lib.check_config(config, 1)
  config.evals.zero_shot.templates = "single"
  config.probe.solver = "sgd"
  with pytest.raises(ValueError, match="probe.solver"):
    config_lib.check_config(config, 1)
