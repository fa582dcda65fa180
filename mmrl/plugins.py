"""The one registry mechanism: everything chosen by name (tasks, rewards, algorithm parts, diffusion algorithms,
image rewards, demo renderers, model-family adapters) lives in a ``Registry``, and other installed packages add
to any of them through the ``mmrl.plugins`` entry-point group.

Registering::

    from mmrl.plugins import POLICY_LOSSES

    @POLICY_LOSSES.register("my_loss", needs_reference=True)
    def my_loss(batch, *, eps: float = 0.2): ...

* The positional inputs of a registered function are the registry's shared signature; its keyword-only
  parameters, with type annotations and defaults, are the hyperparameters a config binds (``Registry.bind``).
  A class is built the same way from its keyword-only ``__init__`` parameters. An entry that declares a
  ``config`` capability (a dataclass, e.g. a task's ``data:`` section) has that dataclass's fields as its keys.
* Capabilities are declared at registration, against the registry's typed table (``Capability``): an
  undeclared capability or a value of the wrong type is an error at registration, and reading one the registry
  does not know is an error too, so a typo never silently turns a feature off.
* An unknown name raises ``ConfigError`` listing the valid ones.

Plugins (the pattern of pytest's ``pytest11`` entry points): a package declares

.. code-block:: toml

    [project.entry-points."mmrl.plugins"]
    my_plugin = "my_package.mmrl_plugin"

and that module is imported the first time any registry is read, so its decorators run; each registration
records the distribution that installs the module defining the object (``Entry.origin``), which ``mmrl list``
prints. mmrl's own
tasks arrive the same way (``pyproject.toml`` names the ``tasks`` package), so a user's task is no different
from a shipped one. The object an entry point names may also be a function taking no arguments; it is called.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import typing
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any, Callable, Iterator, TypeVar

from mmrl.errors import ConfigError
from mmrl.typed import build, check_type

T = TypeVar("T")

ENTRY_POINT_GROUP = "mmrl.plugins"
"""The entry-point group whose modules are imported on first use of any registry."""


@dataclass(frozen=True)
class Capability:
    """A property an entry declares when it is registered, such as "needs reference log-probs"."""

    type: Any
    """The value's type (checked with the config checker, so ``bool``, ``int``, ``type``, ``tuple[str, ...]``...)."""
    default: Any
    """The value of an entry that does not declare it."""
    doc: str
    """What it means, shown by ``mmrl list``."""


@dataclass(frozen=True)
class Entry:
    """One registration: the object, where it came from, and its declared capabilities."""

    name: str
    obj: Any
    origin: str
    """``mmrl`` or the distribution (plugin package) that registered it."""
    capabilities: dict[str, Any] = field(default_factory=dict)
    """Every capability of the registry, declared or default."""


class Registry:
    """A named table of interchangeable objects of one kind (one shared call signature per kind).

    ``builtins`` are modules of mmrl imported on first use (they register the shipped entries); entry-point plugins
    load at the same moment.
    """

    def __init__(self, kind: str, *, capabilities: dict[str, Capability] | None = None,
                 builtins: tuple[str, ...] = (), doc: str = ""):
        self.kind = kind
        self.doc = doc
        self.capabilities = dict(capabilities or {})
        self.builtins = builtins
        self._entries: dict[str, Entry] = {}
        self._builtins_loaded = False

    # -- registering -----------------------------------------------------------------------------------------
    def register(self, name: str, obj: T | None = None, **capabilities: Any) -> Callable[[T], T] | T:
        """Decorator (``@R.register("name", cap=value)``) or direct call (``R.register("name", obj)``)."""
        unknown = sorted(set(capabilities) - set(self.capabilities))
        if unknown:
            valid = ", ".join(self.capabilities) or "none"
            raise ConfigError(f"{self.kind} {name!r}: unknown capability {unknown[0]!r}; valid: {valid}")
        declared = {key: check_type(capabilities.get(key, cap.default), cap.type, f"{self.kind} {name!r} capability "
                                    f"{key}") for key, cap in self.capabilities.items()}

        def decorator(target: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice (first by {self._entries[name].origin})")
            self._entries[name] = Entry(name, target, _origin_of(target), declared)
            return target

        return decorator if obj is None else decorator(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests that register throwaway entries)."""
        self._entries.pop(name, None)

    # -- reading ---------------------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self.builtins:
                importlib.import_module(module)
        load_plugins()

    def entry(self, name: str) -> Entry:
        """The registration of ``name``; an unknown name raises ``ConfigError`` listing the valid ones."""
        self._ensure_loaded()
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._entries)) or 'none'}")
        return self._entries[name]

    def get(self, name: str) -> Any:
        """The registered object ``name``."""
        return self.entry(name).obj

    def capability(self, name: str, key: str) -> Any:
        """The value of capability ``key`` declared by ``name`` (its default when undeclared)."""
        if key not in self.capabilities:
            raise KeyError(f"{self.kind} has no capability {key!r}; valid: {', '.join(self.capabilities)}")
        return self.entry(name).capabilities[key]

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry]:
        for name in self.names():
            yield self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._entries

    # -- hyperparameters -------------------------------------------------------------------------------------
    def hyperparameters(self, name: str) -> dict[str, tuple[Any, Any]]:
        """``{key: (type, default)}``: the fields of a declared ``config`` dataclass, else the keyword-only
        parameters of the function (or of the class's ``__init__``)."""
        entry = self.entry(name)
        config = entry.capabilities.get("config")
        if config is not None:
            hints = typing.get_type_hints(config)
            return {f.name: (hints[f.name], _field_default(f)) for f in dataclasses.fields(config)}
        target = entry.obj.__init__ if inspect.isclass(entry.obj) else entry.obj
        hints = typing.get_type_hints(target)
        return {
            p.name: (hints.get(p.name, Any), p.default)
            for p in inspect.signature(target).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def bind(self, name: str, args: dict[str, Any] | None = None, key: str = "args") -> Callable:
        """``get(name)`` with the type-checked keyword hyperparameters ``args`` applied (``functools.partial``);
        an unknown key or a wrong type raises ``ConfigError`` naming ``key.<arg>`` and the valid ones."""
        params = self.hyperparameters(name)
        args = dict(args or {})
        unknown = sorted(set(args) - set(params))
        if unknown:
            valid = ", ".join(params) or "none"
            raise ConfigError(f"unknown config key '{key}.{unknown[0]}' for {self.kind} {name!r}; valid: {valid}")
        checked = {k: check_type(v, params[k][0], f"{key}.{k}") for k, v in args.items()}
        return functools.partial(self.get(name), **checked)

    def config(self, name: str, values: dict[str, Any] | None, key: str):
        """The entry's ``config`` dataclass built from ``values`` (unknown keys and wrong types name ``key``)."""
        config = self.capability(name, "config")
        if config is None:
            raise ConfigError(f"{self.kind} {name!r} declares no config")
        return build(config, dict(values or {}), prefix=f"{key}.")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return inspect.Parameter.empty


_entry_modules: dict[str, str] = {}
"""Top-level module of each loaded entry point -> its distribution (for installs that list no files)."""
_plugins_loaded = False


def _origin_of(obj: Any) -> str:
    """The distribution that installs the module defining ``obj`` (``mmrl`` for mmrl, tasks and rewards)."""
    top = (getattr(obj, "__module__", None) or "").split(".")[0]
    return _distributions().get(top) or _entry_modules.get(top, top or "unknown")


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, str]:
    """Top-level module -> the distribution that installs it (``mmrl`` for mmrl, tasks and rewards)."""
    return {module: dists[0] for module, dists in metadata.packages_distributions().items()}


def load_plugins() -> None:
    """Import every ``mmrl.plugins`` entry point once. A plugin that fails to import is reported in one warning
    naming it (and its error), and the rest of mmrl keeps working."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        top = ep.value.split(":")[0].split(".")[0]
        dist = ep.dist.name if ep.dist is not None else top
        _entry_modules.setdefault(top, dist)
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, ModuleType):
                loaded()
        except Exception as e:  # noqa: BLE001  (a broken plugin must not take mmrl down with it)
            warnings.warn(f"mmrl plugin {ep.name!r} ({ep.value}, from {dist}) failed to load: "
                          f"{type(e).__name__}: {e}", stacklevel=2)


def reload_plugins() -> None:
    """Load entry points again (after installing a plugin into the running interpreter, as the tests do)."""
    global _plugins_loaded
    _plugins_loaded = False
    _distributions.cache_clear()
    importlib.invalidate_caches()
    load_plugins()


def describe(entry: Entry, registry: Registry) -> dict[str, Any]:
    """What ``mmrl list`` shows of one entry: origin, config keys with defaults, capabilities."""
    keys = {k: _show(default) for k, (_, default) in registry.hyperparameters(entry.name).items()}
    caps = {k: _show(v) for k, v in entry.capabilities.items() if k != "config"}
    return {"name": entry.name, "origin": entry.origin, "config_keys": keys, "capabilities": caps}


def _show(value: Any) -> Any:
    if value is inspect.Parameter.empty:
        return "(required)"
    if isinstance(value, type):
        return value.__name__
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


# ---------------------------------------------------------------------------------------------------------------
# The registries. Each kind's shared signature is in its doc; mmrl's own entries are registered by the modules in
# ``builtins``.

TASKS = Registry(
    "task", doc="task adapters (``mmrl.task.Task``): records -> samples, rewards, grading",
    capabilities={
        "config": Capability(type | None, None, "dataclass of the task's ``data:`` config section"),
        "renderer": Capability(str, "plain", "the demo renderer (``RENDERERS``) that draws this task's rollouts"),
        "benchmarks": Capability(tuple[str, ...], (), "benchmark record formats ``samples_from_records`` accepts "
                                 "(``mmrl eval BENCHMARK --model``)"),
        "exports": Capability(bool, False, "``export`` writes a dataset in the task's format (``mmrl select --keep``)"),
    },
)
REWARDS = Registry(
    "reward function", doc="``fn(completions, **fields) -> list[float]`` usable by any task, weighted by "
    "``rewards:`` and configured by ``reward_args:``",
)
ADVANTAGES = Registry("advantage estimator", builtins=("mmrl.algorithms.advantages",),
                      doc="``fn(rewards [N], group_ids [N], state) -> advantages [N]``")
POLICY_LOSSES = Registry(
    "policy loss", builtins=("mmrl.algorithms.losses",), doc="``fn(PolicyBatch) -> LossTerms`` per token",
    capabilities={"needs_reference": Capability(bool, False, "reads reference log-probs even when beta = 0")},
)
KL_ESTIMATORS = Registry("KL estimator", builtins=("mmrl.algorithms.kl",),
                         doc="``fn(logp, ref_logp) -> per-token KL``")
AGGREGATIONS = Registry("loss aggregation", builtins=("mmrl.algorithms.aggregation",),
                        doc="``fn(token_loss, mask, n_tokens, n_seqs, max_len) -> scalar``")
TOKEN_WEIGHTS = Registry(
    "token weighting", builtins=("mmrl.algorithms.token_weights",), doc="``fn(TokenBatch) -> per-token weights``",
    capabilities={
        "needs_entropy": Capability(bool, False, "reads per-token entropies"),
        "needs_whole_groups": Capability(bool, False, "compares a group's completions (micro-batches hold whole "
                                         "groups; reads the full next-token distributions)"),
    },
)
PROMPT_SAMPLERS = Registry("prompt sampler", builtins=("mmrl.algorithms.sampling",),
                           doc="``fn(n_items, seed) -> sampler`` with draw/update/state_dict/load_state_dict")
ROLLOUTS = Registry("rollout strategy", builtins=("mmrl.algorithms.sampling",),
                    doc="``fn(draw, samples, group_size, first_group) -> Rollouts``")

DIFFUSION_ALGORITHMS = Registry(
    "diffusion algorithm", builtins=("mmrl.diffusion.algorithms",),
    doc="classes ``cls(cfg: DiffusionConfig, args)`` with ``step(ctx, prompts, generator) -> StepResult`` "
    "(``mmrl.diffusion.algorithms.base.DiffusionAlgorithm``)",
    capabilities={
        "config": Capability(type | None, None, "dataclass of the algorithm's ``algorithm_args:`` section"),
        "differentiable_reward": Capability(bool, False, "backpropagates through the reward"),
    },
)
IMAGE_REWARDS = Registry(
    "image reward", builtins=("mmrl.diffusion.image_rewards",),
    doc="factories ``cls(**args)`` of ``reward(images [B,3,H,W] in [0,1], prompts) -> [B]``",
    capabilities={"differentiable": Capability(bool, False, "gradients flow from the reward to the images")},
)
RENDERERS = Registry(
    "demo renderer", builtins=("mmrl.demo.render",),
    doc="``fn(view, group, sample, settings) -> PIL.Image | None``: the rollout inspector's picture of a sample",
    capabilities={"legend": Capability(str, "", "one line under the picture saying what its marks mean")},
)
VIEW_JUDGES = Registry(
    "view judge", doc="``fn(description, reference: PIL.Image, prediction: PIL.Image) -> float`` in [0, 1]: an "
    "external evaluation of rendered CAD views (the cad_code task's ``judge`` reward, CAD-RL)",
)
QA_JUDGES = Registry(
    "QA judge", builtins=("mmrl.judges",),
    doc="classes ``cls(**args)`` with ``answer(queries: list[rewards.caption_qa.Query]) -> list[str]`` (the raw "
    "answer text of each multiple-choice question, asked from the caption alone) and ``close()``: the caption_qa "
    "task's judge (CapRL)",
)
GENEVAL_DETECTORS = Registry(
    "GenEval detector", builtins=("tasks.mini_geneval", "mmrl.eval.geneval_detector"),
    doc="classes ``cls(**args)`` with ``detect(images: list[PIL.Image], metadata: list[dict]) -> list[list[dict]]`` "
    "(per image, every object found, unthresholded: ``{class, box: [x1, y1, x2, y2], score, color}``, ``color`` "
    "from a colour classifier or None) and ``close()``: ``mmrl eval geneval``'s detector "
    "(``mmrl.eval.geneval.Detector``)",
)
PRETRAIN_WORLDS = Registry(
    "pre-training world", builtins=("mmrl.diffusion.pretrain", "tasks.mini_geneval"),
    doc="``fn(n, resolution, generator) -> (images [n, 3, R, R] in [-1, 1], prompts)``: the synthetic images and "
    "prompts a tiny diffusion pipeline is pre-trained on (``model.tiny_world``, ``mmrl.diffusion.pretrain``)",
)
MODEL_FAMILIES = Registry(
    "model family", builtins=("mmrl.models.families",),
    doc="adapters by ``config.model_type``: what the engine needs to know about a checkpoint family",
    capabilities={
        "coords": Capability(str, "0-1000", "grounding answers: ``resized`` (pixels of the resized image) or ``0-1000``"),
        "factor": Capability(int, 28, "images and frames are resized to multiples of this (patch x merge)"),
        "pre_resized": Capability(bool, False, "images reach the processor at that size and it does not resize "
                                  "them again (so the coordinate map is exact)"),
        "shared_prefix": Capability(bool, False, "group-shared prefix log-probs and generation (the adapter "
                                    "computes prompt positions: ``rope_positions``)"),
    },
)

REGISTRIES: dict[str, Registry] = {r.kind: r for r in (
    TASKS, REWARDS, ADVANTAGES, POLICY_LOSSES, KL_ESTIMATORS, AGGREGATIONS, TOKEN_WEIGHTS, PROMPT_SAMPLERS, ROLLOUTS,
    DIFFUSION_ALGORITHMS, IMAGE_REWARDS, RENDERERS, VIEW_JUDGES, QA_JUDGES, GENEVAL_DETECTORS, PRETRAIN_WORLDS,
    MODEL_FAMILIES)}
"""Every registry by kind (what ``mmrl list`` prints)."""
