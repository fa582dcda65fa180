"""Typed values: build dataclasses from nested dicts, checking every key and type (the config's and the registries'
hyperparameters' checker). A leaf module: it imports nothing of mmrl but the errors."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from mmrl.errors import ConfigError


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_type(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` (ints widen to float) or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return check_type(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': {value!r} is not of type {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"config key '{key}': expected null, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return build(tp, value, prefix=key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        args = typing.get_args(tp)
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(items) != len(value):
            raise ConfigError(f"config key '{key}': expected {len(items)} items, got {value!r}")
        return tuple(check_type(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, items)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {str(k): check_type(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config key '{key}': expected {tp.__name__}, got {value!r}")
    return value


def build(cls, values: dict[str, Any], prefix: str = ""):
    """Instantiate dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    fields = field_types(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys{' under ' + prefix[:-1] if prefix else ''}: "
            f"{', '.join(fields)}"
        )
    kwargs = {}
    for name, value in values.items():
        if dataclasses.is_dataclass(fields[name]) and isinstance(value, dict):
            base = dataclasses.asdict(fields[name]())
            value = deep_merge(base, value)
        kwargs[name] = check_type(value, fields[name], prefix + name)
    return cls(**kwargs)


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out
