"""SPACE.yaml: which Config keys a search varies, over what ranges, and with which sampler/pruner.

```yaml
sampler: {kind: tpe, seed: 0}                      # tpe | random
pruner: {kind: median, startup_trials: 2, warmup_epochs: 1}   # median | hyperband | none
# pruner: {kind: median, by: progress, warmup_percent: 25}  # judge trials at equal shares of
#                                                           # their own schedules
seeds: [42, 43]        # optional: every trial trains each seed; its score is their mean
params:
  optim.lr: {type: float, low: 0.003, high: 0.1, log: true}
  train.epochs: {type: int, low: 2, high: 6}
  model.arch: {type: categorical, choices: [resnet18, resnet9]}
  recipe: {type: categorical, choices: [reference, fast]}   # whole recipes
```

Every key is checked against the Config tree and every bound or choice against the Config's
own validation before any trial runs, so a bad space is one error line, not a failed search.

`seeds` (optional) makes every trial train the same values once per seed and score their mean
best validation accuracy: single-seed differences of a few validation images are noise, and a
search over noise picks a lucky seed, not better values. Pruning watches the first seed only.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bloodmnist.config import RECIPES, Config, load_yaml, validate
from bloodmnist.config.resolve import _coerce, _merge, nest
from bloodmnist.errors import ConfigError

RECIPE_KEY = "recipe"
KINDS = ("float", "int", "categorical")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")


class SpaceError(ConfigError):
    """A search space file is invalid (named key, one line)."""


@dataclass
class Param:
    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None
    choices: list[Any] = field(default_factory=list)


@dataclass
class Space:
    params: list[Param]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    source: dict[str, Any]  # the file as read, stored with the study to detect a changed space
    seeds: list[int] = field(default_factory=list)  # empty: the fixed options' one seed

    def suggest(self, trial: Any) -> dict[str, Any]:
        """One value per key from an Optuna trial, in the file's order."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "float":
                out[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log)
            elif p.kind == "int":
                out[p.key] = trial.suggest_int(p.key, p.low, p.high, step=p.step or 1, log=p.log)
            else:
                out[p.key] = trial.suggest_categorical(p.key, p.choices)
        return out


def _leaf_hint(key: str) -> Any:
    """The type annotation of dotted Config key `key`; SpaceError for a section or unknown."""
    node: Any = Config()
    parts = key.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            where = ".".join(parts[:i]) or "the config"
            raise SpaceError(f"unknown config key '{key}' (known in {where}: {', '.join(names)})")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, part)):
                raise SpaceError(f"'{key}' is a config section; name one of its keys")
            return typing.get_type_hints(type(node))[part]
        node = getattr(node, part)
        if not dataclasses.is_dataclass(node):
            raise SpaceError(
                f"unknown config key '{key}' ('{'.'.join(parts[: i + 1])}' is a value)"
            )
    raise SpaceError(f"unknown config key '{key}'")


def _base_type(hint: Any) -> Any:
    """int for `int | None`, etc.; tuples and other shapes come back as they are."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner[0] if len(inner) == 1 else hint
    return hint


def _check_value(base: Config, key: str, value: Any, what: str) -> Any:
    """`value` coerced to `key`'s type and passed through the Config's validation."""
    cfg = copy.deepcopy(base)
    try:
        _merge(cfg, nest({key: value}))
        validate(cfg)
    except ConfigError as exc:
        raise SpaceError(f"'{key}' {what} {value!r} is not a valid config value: {exc}") from None
    return _coerce(value, _leaf_hint(key), key)


def _number(spec: dict[str, Any], name: str, key: str, kind: str) -> float | int:
    value = spec.get(name)
    if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as text
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "int":
        ok = ok and float(value).is_integer()
    if not ok or not math.isfinite(float(value)):
        raise SpaceError(f"'{key}': {name} must be {'an integer' if kind == 'int' else 'a number'}")
    return int(value) if kind == "int" else float(value)


def _range_param(key: str, spec: dict[str, Any], kind: str, base: Config) -> Param:
    hint = _base_type(_leaf_hint(key))
    if hint is not (float if kind == "float" else int):
        name = getattr(hint, "__name__", str(hint))
        raise SpaceError(f"'{key}' holds {name} values; a {kind} range does not fit it")
    low, high = _number(spec, "low", key, kind), _number(spec, "high", key, kind)
    if low > high:
        raise SpaceError(f"'{key}': lower bound {low} > upper bound {high}")
    if low == high:
        raise SpaceError(f"'{key}': empty range ({low}..{high}); fix it as a train option instead")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"'{key}': log must be true or false")
    if log and low <= 0:
        raise SpaceError(f"'{key}': a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and (kind != "int" or not isinstance(step, int) or step < 1):
        raise SpaceError(f"'{key}': step must be an integer >= 1 (int ranges only)")
    if log and step not in (None, 1):  # Optuna samples a log int range only with step 1
        raise SpaceError(f"'{key}': a log range cannot have a step (got {step})")
    for name, value in (("low", low), ("high", high)):
        _check_value(base, key, value, name)
    return Param(key, kind, low, high, log, step)


def _categorical_param(key: str, spec: dict[str, Any], base: Config) -> Param:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"'{key}': choices must be a non-empty list")
    if key == RECIPE_KEY:
        bad = [c for c in choices if c not in RECIPES]
        if bad:
            raise SpaceError(f"'recipe' choice {bad[0]!r} is unknown (known: {', '.join(RECIPES)})")
        return Param(key, "categorical", choices=list(choices))
    _leaf_hint(key)
    out = []
    for value in choices:
        if not (value is None or isinstance(value, bool | int | float | str)):
            raise SpaceError(
                f"'{key}': choice {value!r} is not a single value (Optuna stores scalars)"
            )
        out.append(_check_value(base, key, value, "choice"))
    if len(set(map(repr, out))) != len(out):
        raise SpaceError(f"'{key}': choices repeat a value")
    return Param(key, "categorical", choices=out)


def _param(key: str, spec: Any, base: Config) -> Param:
    if not isinstance(spec, dict):
        raise SpaceError(f"'{key}' must map to {{type: float|int|categorical, ...}}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise SpaceError(f"'{key}': type must be one of {', '.join(KINDS)}, got {kind!r}")
    allowed = (
        {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    )
    extra = sorted(set(spec) - allowed)
    if extra:
        raise SpaceError(f"'{key}': unknown field '{extra[0]}' for a {kind} parameter")
    if key == RECIPE_KEY and kind != "categorical":
        raise SpaceError("'recipe' can only be categorical (choices: recipe names)")
    if kind == "categorical":
        return _categorical_param(key, spec, base)
    return _range_param(key, spec, kind, base)


#: The options each `sampler:` / `pruner:` entry may carry (see tuning/study.py).
SECTION_FIELDS = {
    "sampler": {"kind", "seed", "startup_trials"},
    "pruner": {
        "kind", "by", "startup_trials", "warmup_epochs", "warmup_percent", "min_epochs",
        "reduction_factor",
    },
}  # fmt: skip
#: `pruner.by`: compare trials at the same epoch, or at the same share of their own schedule.
PRUNE_BY = ("epoch", "progress")
#: Lowest allowed values (others: 0): Hyperband divides by log(reduction_factor) and by
#: min_epochs (a ZeroDivisionError in its second trial).
SECTION_MINIMA = {"min_epochs": 1, "reduction_factor": 2}


def _section(data: dict[str, Any], name: str, kinds: tuple[str, ...], default: str) -> dict:
    spec = data.get(name) or {"kind": default}
    if not isinstance(spec, dict):
        raise SpaceError(f"'{name}' must be a mapping, e.g. {name}: {{kind: {kinds[0]}}}")
    if spec.get("kind", default) not in kinds:
        raise SpaceError(f"{name}.kind must be one of {', '.join(kinds)}")
    extra = sorted(set(spec) - SECTION_FIELDS[name])
    if extra:
        known = ", ".join(sorted(SECTION_FIELDS[name]))
        raise SpaceError(f"unknown field '{name}.{extra[0]}' (known: {known})")
    for key, value in spec.items():
        if key in ("kind", "by"):
            continue
        if not (isinstance(value, int) and not isinstance(value, bool)):
            raise SpaceError(f"'{name}.{key}' must be an integer, got {value!r}")
        low = SECTION_MINIMA.get(key, 0)  # Optuna fails on these only mid-search
        if key != "seed" and value < low:
            raise SpaceError(f"'{name}.{key}' must be >= {low}, got {value}")
    return {"kind": default, **spec}


def _pruner(data: dict[str, Any]) -> dict[str, Any]:
    """The `pruner:` entry; `by: progress` (median only) compares trials at the same share of
    their own schedule: a 40-epoch one-cycle run at epoch 10 has not annealed yet, and judging
    it against a 20-epoch run's epoch 10 would prune the long runs, which often win."""
    spec = _section(data, "pruner", PRUNERS, "median")
    by = spec.setdefault("by", "epoch")
    if by not in PRUNE_BY:
        raise SpaceError(f"pruner.by must be one of {', '.join(PRUNE_BY)}, got {by!r}")
    wrong = "warmup_epochs" if by == "progress" else "warmup_percent"
    if wrong in spec:
        other = "warmup_percent" if by == "progress" else "warmup_epochs"
        raise SpaceError(f"pruner.{wrong} does not go with by: {by}; use pruner.{other}")
    if by == "progress" and spec["kind"] != "median":
        raise SpaceError("pruner.by: progress works with the median pruner only")
    if not 0 <= spec.get("warmup_percent", 0) <= 100:
        raise SpaceError("pruner.warmup_percent must be in 0..100")
    return spec


def parse_space(data: dict[str, Any], base: Config) -> Space:
    """Check a space mapping against `base` (the trials' fixed config); SpaceError if bad."""
    unknown = sorted(set(data) - {"params", "sampler", "pruner", "seeds"})
    if unknown:
        raise SpaceError(
            f"unknown top-level entry '{unknown[0]}' (known: params, sampler, pruner, seeds)"
        )
    params = data.get("params")
    if not isinstance(params, dict) or not params:
        raise SpaceError(
            "'params' must map config keys to ranges, e.g. optim.lr: {type: float, ...}"
        )
    if "seeds" in data and "train.seed" in params:
        raise SpaceError("'seeds' trains every trial on each seed: drop train.seed from params")
    # a search chooses on validation accuracy, which means nothing on images it trained on
    if "data.train_on" in params or base.data.train_on != "train":
        raise SpaceError(
            "a search chooses on validation, so its trials train on train only: drop "
            "data.train_on (train on train+val after choosing, with the chosen config)"
        )
    parsed = [_param(str(k), v, base) for k, v in params.items()]
    sampler = _section(data, "sampler", SAMPLERS, "tpe")
    pruner = _pruner(data)
    return Space(parsed, sampler, pruner, data, _seeds(data.get("seeds")))


def _seeds(value: Any) -> list[int]:
    """The `seeds` entry: absent, or a list of distinct non-negative integers."""
    if value is None:
        return []
    ok = isinstance(value, list) and bool(value)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    if not ok:
        raise SpaceError(f"'seeds' must be a list of integers >= 0, e.g. [42, 43], got {value!r}")
    if len(set(value)) != len(value):
        raise SpaceError(f"'seeds' repeats a seed: {value}")
    return list(value)


def load_space(path: str | Path, base: Config) -> Space:
    """Read and check SPACE.yaml; every error names the file."""
    try:
        return parse_space(load_yaml(path), base)
    except SpaceError as exc:
        raise SpaceError(f"search space {path}: {exc}") from None
