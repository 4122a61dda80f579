"""The operator spec language (rrjax.operators' module doc): parsing and validation with
messages naming the bad field, short descriptions for plots and reports, and each kind's
severity field."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rrjax import adversarial, imagenet_c

Level = float | tuple[float, float]

def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
      value, (bool, np.bool_))


def _is_integer(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_pair(value) -> bool:
  return (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2)


def _level_parser(minimum: float, maximum: float = math.inf, *, integer: bool = False,
                  exclusive_minimum: bool = False):
  """A parser for a level field: a number or a (low, high) pair, within the bounds."""
  kind = "an integer" if integer else "a number"
  lower = f"{minimum} <" if exclusive_minimum else f"{minimum} <="
  upper = "" if maximum == math.inf else f" <= {maximum}"
  allowed = (f"{kind} x with {lower} x{upper}, or a pair (low, high) of such values with "
             "low <= high")

  def ok(x) -> bool:
    if not (_is_integer(x) if integer else _is_number(x)):
      return False
    above = x > minimum if exclusive_minimum else x >= minimum
    return bool(above and x <= maximum)

  def parse(where: str, value) -> Level:
    if _is_pair(value) and all(ok(v) for v in value) and value[0] <= value[1]:
      return tuple(int(v) if integer else float(v) for v in value)
    if ok(value):
      return int(value) if integer else float(value)
    raise ValueError(f"operator field {where!r} must be {allowed}; got {value!r}.")

  return parse


def _parse_odd_size(where: str, value) -> int:
  if _is_integer(value) and value >= 1 and value % 2 == 1:
    return int(value)
  raise ValueError(
      f"operator field {where!r} must be an odd integer >= 1 (1, 3, 5, ...); got {value!r}.")


def _parse_factor(where: str, value) -> int:
  if _is_integer(value) and value >= 1:
    return int(value)
  raise ValueError(
      f"operator field {where!r} must be an integer >= 1 (a fixed factor: the "
      f"low-resolution shape must be static); got {value!r}.")


def _parse_bool(where: str, value) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  raise ValueError(f"operator field {where!r} must be True or False; got {value!r}.")


def _parse_ops(where: str, value) -> tuple[dict[str, Any], ...]:
  if isinstance(value, Sequence) and not isinstance(value, str) and value:
    return tuple(parse(spec, f"{where}[{i}]") for i, spec in enumerate(value))
  raise ValueError(
      f"operator field {where!r} must be a non-empty list of operator specs; got {value!r}.")


def _parse_weights(where: str, value) -> tuple[float, ...] | None:
  if value is None:
    return None
  if (isinstance(value, Sequence) and not isinstance(value, str) and value
      and all(_is_number(w) and 0 <= w < math.inf for w in value) and sum(value) > 0):
    return tuple(float(w) for w in value)
  raise ValueError(
      f"operator field {where!r} must be None (uniform) or a list of finite numbers >= 0 "
      f"with a positive sum, one per entry of ops; got {value!r}.")


def _parse_positive(where: str, value) -> float:
  if _is_number(value) and value > 0:
    return float(value)
  raise ValueError(f"operator field {where!r} must be a number > 0; got {value!r}.")


def _parse_optional_positive(where: str, value) -> float | None:
  return None if value is None else _parse_positive(where, value)


def _parse_steps(where: str, value) -> int:
  if _is_integer(value) and value >= 0:
    return int(value)
  raise ValueError(f"operator field {where!r} must be an integer >= 0 (the number of attack "
                   f"steps; 0: the random start alone); got {value!r}.")


def _choice_parser(choices: Sequence[str]):
  def parse(where: str, value) -> str:
    if value in choices:
      return value
    raise ValueError(f"operator field {where!r} must be one of {list(choices)}; got {value!r}.")

  return parse


ATTACK_LOSSES = ("mse", "train")
ADVERSARIAL_KINDS = ("pgd",)

_REQUIRED = object()

# kind -> {field: (parser, default)}; _REQUIRED marks fields without a default.
SCHEMA: dict[str, dict[str, tuple[Callable[[str, Any], Any], Any]]] = {
    "identity": {},
    "mask": {"p": (_level_parser(0.0, 1.0), _REQUIRED)},
    "noise": {"sigma": (_level_parser(0.0), _REQUIRED), "clip": (_parse_bool, False)},
    "blur": {"kernel_size": (_parse_odd_size, _REQUIRED),
             "sigma": (_level_parser(0.0, exclusive_minimum=True), _REQUIRED)},
    "block_mask": {"size": (_level_parser(1, integer=True), _REQUIRED)},
    "downsample": {"factor": (_parse_factor, _REQUIRED)},
    "compose": {"ops": (_parse_ops, _REQUIRED)},
    "choice": {"ops": (_parse_ops, _REQUIRED), "weights": (_parse_weights, None)},
    "imagenet_c": {"corruption": (imagenet_c.parse_corruption, _REQUIRED),
                   "severity": (imagenet_c.parse_severity, _REQUIRED)},
    # step_size None: 2.5 * eps / steps (Madry et al.'s rule; FARE's 1/255 at eps 4/255).
    "pgd": {"eps": (_parse_positive, _REQUIRED), "steps": (_parse_steps, 10),
            "step_size": (_parse_optional_positive, None),
            "norm": (_choice_parser(adversarial.NORMS), "linf"),
            "loss": (_choice_parser(ATTACK_LOSSES), "mse")},
}


def parse(spec, where: str = "operator") -> dict[str, Any]:
  """Validates a spec and returns it as a plain dict with every field normalised."""
  if hasattr(spec, "to_dict"):  # ml_collections ConfigDict
    spec = spec.to_dict()
  if not isinstance(spec, Mapping):
    raise ValueError(
        f"{where} must be a dict or ConfigDict such as {{'kind': 'mask', 'p': 0.9}}; "
        f"got {spec!r}.")
  kind = spec.get("kind")
  if kind not in SCHEMA:
    raise ValueError(
        f"operator field '{where}.kind' must be one of {sorted(SCHEMA)}; got {kind!r}.")
  fields = SCHEMA[kind]
  unknown = sorted(set(spec) - set(fields) - {"kind"})
  if unknown:
    raise ValueError(
        f"{where} of kind {kind!r} has unknown field(s) {unknown}; its fields are "
        f"{sorted(fields)}.")
  parsed = {"kind": kind}
  for name, (parse_field, default) in fields.items():
    if name in spec:
      parsed[name] = parse_field(f"{where}.{name}", spec[name])
    elif default is _REQUIRED:
      raise ValueError(
          f"{where} of kind {kind!r} is missing field '{where}.{name}' (its fields are "
          f"{sorted(fields)}).")
    else:
      parsed[name] = default
  if kind == "choice":
    _check_choice(parsed, where)
  return parsed


def _check_choice(parsed: dict[str, Any], where: str) -> None:
  """What the choice's fields cannot check alone: one weight per operator, no attacks."""
  ops, weights = parsed["ops"], parsed["weights"]
  if weights is not None and len(weights) != len(ops):
    raise ValueError(
        f"operator field '{where}.weights' must hold one weight per entry of '{where}.ops' "
        f"({len(ops)}); got {len(weights)}.")

  def attacks(stage, at):
    if stage["kind"] in ("compose", "choice"):
      return [f for i, s in enumerate(stage["ops"]) for f in attacks(s, f"{at}.ops[{i}]")]
    return [at] if stage["kind"] in ADVERSARIAL_KINDS else []

  found = [f for i, stage in enumerate(ops) for f in attacks(stage, f"{where}.ops[{i}]")]
  if found:
    # Each image is corrupted alone, but an attack needs the whole batch's loss.
    raise ValueError(
        f"operator field '{found[0]}.kind' is an attack (kind 'pgd'), which a choice cannot "
        "hold: it draws an operator per image, and attacks need the batch's training loss. "
        "Attack after the choice instead: {'kind': 'compose', 'ops': [choice, pgd]}.")


def adversarial_fields(spec) -> list[str]:
  """The field paths of the spec's adversarial stages ("operator", "operator.ops[1]"):
  empty for an operator that needs no model."""

  def walk(parsed, where):
    if parsed["kind"] == "compose":
      return [field for i, stage in enumerate(parsed["ops"])
              for field in walk(stage, f"{where}.ops[{i}]")]
    return [where] if parsed["kind"] in ADVERSARIAL_KINDS else []

  return walk(parse(spec), "operator")


_SHORT_NAMES = {"kernel_size": "k"}


def _describe_value(value) -> str:
  if isinstance(value, str):
    return f"={value}"
  if isinstance(value, tuple):
    return f"~U({value[0]:g},{value[1]:g})"
  return f"={value:g}"


def _describe_budget(value: float, norm: str) -> str:
  """linf budgets below 1 that are multiples of 1/255 as papers state them ("4/255"),
  others as they are."""
  if norm == "linf" and value < 1 and abs(value * 255 - round(value * 255)) < 1e-6:
    return f"{round(value * 255)}/255"
  return f"{value:g}"


def _describe_pgd(parsed: dict[str, Any]) -> str:
  norm = parsed["norm"]
  words = ["pgd", norm, f"eps={_describe_budget(parsed['eps'], norm)}",
           f"steps={parsed['steps']}"]
  if parsed["step_size"] is not None:
    words.append(f"step={_describe_budget(parsed['step_size'], norm)}")
  if parsed["loss"] != "mse":
    words.append(f"loss={parsed['loss']}")
  return " ".join(words)


def _varying_level(ops: Sequence[dict[str, Any]]) -> str | None:
  """The one field, numeric in every spec, in which specs of one kind differ, else None."""
  first = ops[0]
  if len(ops) < 2 or any(set(op) != set(first) or op["kind"] != first["kind"] for op in ops):
    return None
  varying = [name for name in first if any(op[name] != first[name] for op in ops)]
  if len(varying) == 1 and all(_is_number(op[varying[0]]) for op in ops):
    return varying[0]
  return None


def _describe_choice(parsed: dict[str, Any]) -> str:
  """"choice(mask p=0.5 or noise sigma=0.3)", "choice(0.75: mask p=0.5 or 0.25: noise
  sigma=0.3)" (non-uniform weights, normalised), and a uniform choice among levels of one
  operator as "imagenet_c corruption=fog severity~{1,2,3,4,5}". Not "|": labels go into
  Markdown tables."""
  ops, weights = parsed["ops"], parsed["weights"]
  uniform = weights is None or len(set(weights)) == 1
  field = _varying_level(ops) if uniform else None
  if field:
    rest = {name: value for name, value in ops[0].items() if name != field}
    levels = ",".join(f"{op[field]:g}" for op in ops)
    return f"{_describe_parsed(rest)} {_SHORT_NAMES.get(field, field)}~{{{levels}}}"
  labels = [_describe_parsed(op) for op in ops]
  if not uniform:
    labels = [f"{w / sum(weights):.3g}: {label}" for w, label in zip(weights, labels)]
  return f"choice({' or '.join(labels)})"


def _describe_parsed(parsed: dict[str, Any]) -> str:
  kind = parsed["kind"]
  if kind == "compose":
    return " + ".join(_describe_parsed(stage) for stage in parsed["ops"])
  if kind == "pgd":
    return _describe_pgd(parsed)
  if kind == "choice":
    return _describe_choice(parsed)
  words = [kind]
  for name, value in parsed.items():
    if name == "kind":
      continue
    if isinstance(value, bool):
      words += [name] if value else []
    else:
      words.append(_SHORT_NAMES.get(name, name) + _describe_value(value))
  return " ".join(words)


def describe(spec) -> str:
  """A short label for plots and reports, e.g. "mask p=0.9", "blur k=21 sigma=5"."""
  return _describe_parsed(parse(spec))


# Each kind's severity field: what `eval.levels` sets and severity plots put on the x axis.
SEVERITY_FIELDS = {"mask": "p", "noise": "sigma", "blur": "sigma", "block_mask": "size",
                   "downsample": "factor", "imagenet_c": "severity", "pgd": "eps"}


def severity(spec) -> float | None:
  """The spec's severity as a number, or None for kinds without one and for ranges."""
  spec = spec.to_dict() if hasattr(spec, "to_dict") else spec
  value = spec.get(SEVERITY_FIELDS.get(spec.get("kind"), ""))
  return float(value) if _is_number(value) else None


def with_severity(spec, level) -> dict[str, Any]:
  """The operator `spec` at another severity ({"kind": "mask", "p": .9}, .99 -> p=.99)."""
  spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
  if spec.get("kind") not in SEVERITY_FIELDS:
    raise ValueError(f"eval.levels: operator kind {spec.get('kind')!r} has no severity "
                     f"field; levels work for {', '.join(SEVERITY_FIELDS)}.")
  spec[SEVERITY_FIELDS[spec["kind"]]] = level
  return spec

