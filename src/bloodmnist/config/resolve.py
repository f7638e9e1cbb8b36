"""Resolving a Config: YAML files, recipes, CLI flags and `--set` overrides, checked key by key."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from bloodmnist.config.checks import validate
from bloodmnist.config.schema import Config
from bloodmnist.config.yaml_text import load_text
from bloodmnist.errors import ConfigError

#: Settings that say how a run is carried out, not what it computes (threads and compile change
#: only the order of floating-point sums): `train --resume` may change them, and `study --adopt`
#: does not compare them.
HOW_TO_RUN = ("runtime.threads", "runtime.compile", "runtime.reports", "runtime.tensorboard")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


#: A decimal number written as text (YAML 1.1 reads `1e-4` without a dot as text): no leading
#: zero (`042` stays refused), no underscores, no base 60
_DECIMAL = re.compile(r"^[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")


def _float_or_text(text: str) -> float | str:
    return float(text) if _DECIMAL.match(text.strip()) else text


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check/convert one value against its annotation; raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(
                f"config key '{key}' must be a list of {len(args)} numbers, got {value!r}"
            )
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, str):  # `2e1`: a whole number written with an exponent
            value = _float_or_text(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-4, without a dot, as text
            value = _float_or_text(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    return value


def _merge(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested dict of updates onto a dataclass in place, validating every key."""
    if not isinstance(updates, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.')}' must be a mapping")
    hints = _hints(type(obj))
    names = {f.name for f in fields(obj)}
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, prefix=f"{dotted}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted))


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one `--set key.sub=value`; the value is read as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = load_text(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} ({exc})") from None
    if isinstance(value, str) and value.lower() in {"nan", ".nan", "inf", "-inf"}:
        value = float(value.lstrip("."))
    return key.strip(), value


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """Turn {'optim.lr': 0.1} into {'optim': {'lr': 0.1}}."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # e.g. --set optim=1 --set optim.lr=2
                section = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {key}: '{section}' was set to a value, not a section")
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path, numbers: bool = True) -> dict[str, Any]:
    """Read a YAML config file into a dict, with one-line errors (`numbers`: load_text's)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = load_text(p.read_text(encoding="utf-8"), numbers=numbers)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML ({_yaml_reason(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(data)}")
    return data


RECIPES = ("reference", "fast", "best")
#: What `train`, `study` and `tune` build on when no --recipe is given: the recipe a user should
#: run (fast: 97.9% test accuracy with TTA from scratch on a fortieth of the reference's compute,
#: docs/frontier.md). The reference stays the dataclass defaults and `--recipe reference`.
DEFAULT_RECIPE = "fast"


def base_recipe(recipe: str | None, yaml_path: str | Path | None) -> str:
    """The recipe under `--config FILE`: the one named, else DEFAULT_RECIPE, except under a
    saved config (a run's config.yaml, `tune`'s best.yaml). Keys such a file lacks were added
    after it was written, and the Config defaults are what ran before they existed; the default
    recipe's values (e.g. Muon) would silently change an old run."""
    if recipe is not None:
        return recipe
    if yaml_path is not None and Path(yaml_path).is_file():
        if is_saved_config(load_yaml(yaml_path)):
            return "reference"
    return DEFAULT_RECIPE


def lacking_keys(data: dict[str, Any]) -> list[str]:
    """The Config's dotted keys that `data` (a config file's mapping) does not set."""
    out = []
    for section, keys in Config().to_dict().items():
        given = data.get(section) if isinstance(data.get(section), dict) else {}
        out += [f"{section}.{key}" for key in keys if key not in given]
    return out


def is_saved_config(data: dict[str, Any]) -> bool:
    """Whether `data` is a whole config as `train` and `tune` write them (every key the Config
    had then; later versions add keys, so most of today's rather than all), not a user's file
    of a few keys."""
    total = sum(len(keys) for keys in Config().to_dict().values())
    return 2 * (total - len(lacking_keys(data))) >= total


def recipe_dict(name: str) -> dict[str, Any]:
    """A named recipe's settings: `reference` is the dataclass defaults; the others are YAML files
    shipped inside the package (bloodmnist/configs/<name>.yaml)."""
    if name == "reference":
        return {}
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe '{name}' (known: {', '.join(RECIPES)})")
    from importlib.resources import files

    text = (files("bloodmnist") / "configs" / f"{name}.yaml").read_text(encoding="utf-8")
    return load_text(text) or {}


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """'line L, column C: problem' from a PyYAML error (its str() spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def build_config(
    yaml_path: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    recipe: str = "reference",
) -> Config:
    """Resolve defaults <- recipe <- YAML <- dedicated flags (dotted keys) <- `--set` overrides."""
    cfg = Config()
    _merge(cfg, recipe_dict(recipe))
    if yaml_path is not None:
        data = _text_as_written(cfg, load_yaml(yaml_path), load_yaml(yaml_path, numbers=False))
        try:
            _merge(cfg, data)
        except ConfigError as exc:  # name the file: the key alone may not say where it came from
            raise ConfigError(f"config file {yaml_path}: {exc}") from None
    if flags:
        _merge(cfg, nest({k: v for k, v in flags.items() if v is not None}))
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Merge `--set key=value` texts into `cfg` (in place) and validate the result."""
    if overrides:
        _merge(cfg, nest(dict(_as_typed(cfg, o) for o in overrides)))
    validate(cfg)
    return cfg


#: The annotations of text keys (a run name, a path, class names): they keep numbers as typed.
_TEXT_HINTS = (str, str | None, list[str], list[str] | None)


def _is_text_key(cfg: Config, section: Any, name: Any) -> bool:
    owner = getattr(cfg, section, None) if isinstance(section, str) else None
    hint = _hints(type(owner)).get(name) if dataclasses.is_dataclass(owner) else None
    return hint in _TEXT_HINTS


def _as_typed(cfg: Config, text: str) -> tuple[str, Any]:
    """parse_override, but a text key (a run name, a path, class names) keeps a number as it
    was typed: `runtime.name=1.50` is "1.50", not "1.5"."""
    key, value = parse_override(text)
    section, _, name = key.partition(".")
    if _is_text_key(cfg, section, name):
        return key, load_text(text.split("=", 1)[1], numbers=False)
    return key, value


def _text_as_written(cfg: Config, data: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    """A config file's `data` with each text key's value as `text` (the same file read
    without numbers) has it: `name: 1.50` is "1.50", as `--set` keeps it, not "1.5"."""
    out = dict(data)
    for section, values in data.items():
        raw = text.get(section)
        if isinstance(values, dict) and isinstance(raw, dict):
            out[section] = {
                k: raw.get(k, v) if _is_text_key(cfg, section, k) else v for k, v in values.items()
            }
    return out


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from its saved dict (config.yaml or a checkpoint)."""
    cfg = Config()
    _merge(cfg, data)
    return cfg


def save_yaml(cfg: Config, path: str | Path) -> None:
    from bloodmnist.atomic import write_text_atomic

    write_text_atomic(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def absolute_paths(cfg: Config) -> Config:
    """The path-valued keys (data.path, train.teacher, model.pretrained=PATH), from --set or a
    YAML file too, made absolute: the saved config, --resume and a study's seeds then find
    them from any directory."""

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    if cfg.data.path:
        cfg.data.path = absolute(cfg.data.path)
    if cfg.train.teacher:
        cfg.train.teacher = absolute(cfg.train.teacher)
    if cfg.model.pretrained not in ("auto", "none"):
        cfg.model.pretrained = absolute(cfg.model.pretrained)
    return cfg
