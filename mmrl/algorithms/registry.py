"""Name -> function registries: one shared signature per kind, so the trainer never special-cases a name.

A registered function takes the kind's positional inputs followed by keyword-only hyperparameters with
defaults and type annotations. ``Registry.bind(name, args, key)`` checks a config's ``args`` mapping against
those keywords (unknown key or wrong type -> ``ConfigError`` naming ``key.<arg>`` and the valid ones) and
returns the function with the arguments applied.
"""
from __future__ import annotations

import functools
import inspect
import typing
from typing import Any, Callable, TypeVar

from mmrl.config import check_type
from mmrl.errors import ConfigError

F = TypeVar("F", bound=Callable)


class Registry:
    """A named table of interchangeable functions; ``get`` of an unknown name lists the valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._fns: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def decorator(fn: F) -> F:
            if name in self._fns:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._fns[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> Callable:
        if name not in self._fns:
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._fns))}")
        return self._fns[name]

    def names(self) -> list[str]:
        return sorted(self._fns)

    def hyperparameters(self, name: str) -> dict[str, tuple[Any, Any]]:
        """``{keyword: (type, default)}`` of the function's keyword-only hyperparameters."""
        fn = self.get(name)
        hints = typing.get_type_hints(fn)
        return {
            p.name: (hints.get(p.name, Any), p.default)
            for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def bind(self, name: str, args: dict[str, Any] | None = None, key: str = "args") -> Callable:
        """``get(name)`` with the type-checked keyword hyperparameters ``args`` applied."""
        params = self.hyperparameters(name)
        args = dict(args or {})
        unknown = sorted(set(args) - set(params))
        if unknown:
            valid = ", ".join(params) or "none"
            raise ConfigError(f"unknown config key '{key}.{unknown[0]}' for {self.kind} {name!r}; valid: {valid}")
        checked = {k: check_type(v, params[k][0], f"{key}.{k}") for k, v in args.items()}
        return functools.partial(self.get(name), **checked)


ADVANTAGES = Registry("advantage estimator")
POLICY_LOSSES = Registry("policy loss")
KL_ESTIMATORS = Registry("KL estimator")
AGGREGATIONS = Registry("loss aggregation")
TOKEN_WEIGHTS = Registry("token weighting")
PROMPT_SAMPLERS = Registry("prompt sampler")
ROLLOUTS = Registry("rollout strategy")
