"""Typed configs: dataclasses from YAML dicts and `--set key=value` overrides, with clear errors.

A run config is a nested dict (`algo`, `dataset`, `seed`, `agent: {...}`, `train: {...}`); the
`agent` and `train` sections become the algorithm's and the loop's config dataclasses. Unknown
keys are errors (a typo must not be silently ignored), and values are converted to the field's
declared type.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML-safe data."""
    return dataclasses.asdict(config)


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"{where}: cannot convert {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item = args[0] if args else Any
        return origin(_convert(v, item, where) for v in value) if item is not Any else origin(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if annotation in (int, float, str):
        try:
            converted = annotation(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
        if annotation is int and isinstance(value, float) and value != int(value):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return converted
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, section: str = "") -> T:
    """Build config dataclass `cls` from `data`, converting types; unknown keys are errors."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    prefix = f"{section}." if section else ""
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            valid = ", ".join(prefix + n for n in names) or "none"
            raise ValueError(f"unknown setting {prefix}{key}{hint}; valid: {valid}")
    kwargs = {k: _convert(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; a clear error when it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found (presets are in experiments/)")
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of settings, got {data!r}")
    return data


def apply_overrides(
    config: dict[str, Any],
    overrides: list[str] | tuple[str, ...],
    flag: str = "--set",
    example: str = "agent.lr=3e-4",
) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML) to a nested config dict.

    `flag` and `example` only shape the error message (`--policy target_return=3600` uses this
    with an empty `config` too)."""
    result = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} {example}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else None
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{flag} {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return result


def check_override_keys(overrides: list[str] | tuple[str, ...], config: dict[str, Any]) -> None:
    """Reject `--set` items whose top-level key is not one of `config`'s (`agnet.width`, `sede`)
    or that would replace a whole section with a value."""
    names = [key for key in config if key != "algo"]
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        head, _, rest = key.partition(".")
        if head not in names:
            close = difflib.get_close_matches(head, names, n=1)
            hint = f" (did you mean {close[0]}{'.' + rest if rest else ''}?)" if close else ""
            raise ValueError(f"unknown setting {key}{hint}; top-level settings: {', '.join(names)}")
        if isinstance(config[head], dict) and not rest and head != "env_kwargs":
            raise ValueError(
                f"--set {item!r}: {head} is a section; set one of its settings, e.g. "
                f"--set {head}.NAME=VALUE"
            )


def resolve_run_config(
    base: dict[str, Any],
    config_file: str | Path | None,
    overrides: list[str] | None,
    agent_cls: type,
    train_cls: type,
    given: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A run config from layers: `base` defaults, a preset file, values `given` on the command
    line (None = not given), then `--set` overrides; `agent` and `train` validated and completed.

    A preset may set any key of `base` but `algo`; mapping sections are merged, not replaced.
    """
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    if config_file is not None:
        preset = load_yaml(config_file)
        allowed = [key for key in base if key != "algo"]
        unknown = set(preset) - set(allowed)
        if unknown:
            raise ValueError(
                f"{config_file}: unknown sections {sorted(unknown)}; a preset may set "
                f"{', '.join(allowed)}"
            )
        for key, value in preset.items():
            if isinstance(config[key], dict):
                config[key].update(value or {})
            else:
                config[key] = value
    config.update({k: v for k, v in (given or {}).items() if v is not None})
    check_override_keys(overrides or [], config)
    config = apply_overrides(config, overrides or [])
    config["agent"] = to_dict(from_dict(agent_cls, config["agent"], "agent"))
    config["train"] = to_dict(from_dict(train_cls, config["train"], "train"))
    config["seed"] = int(config["seed"])
    return config
