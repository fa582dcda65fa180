"""Name -> function registries: one shared signature per kind, so the trainer never special-cases a name."""
from __future__ import annotations

from typing import Callable, TypeVar

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


ADVANTAGES = Registry("advantage estimator")
POLICY_LOSSES = Registry("policy loss")
KL_ESTIMATORS = Registry("KL estimator")
AGGREGATIONS = Registry("loss aggregation")
