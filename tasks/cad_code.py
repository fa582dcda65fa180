"""CAD code generation (CAD-RL, "From Intent to Execution", 2025): a description in, a CadQuery script out.

Data: JSON lines ``{"id", "description", "code"[, "images"]}`` (``mmrl.eval.cad.load_cad``): ``code`` is the
reference script, whose solid is the value of ``result`` or the argument of ``show_object(...)``; ``images``
(optional) are rendered views given to the model with the description. Unset files = the seeded synthetic parts of
``tasks.synthetic_cad`` (boxes, cylinders, plates with holes, filleted boxes, bosses, shells), written to the cache.

The model answers with a fenced ```` ```python ```` block (``rewards.cad.extract_code``; with ``think: true`` the
prompt asks for reasoning in ``<think>`` first). Every script, the model's and the reference, runs in
``mmrl.sandbox`` (bubblewrap, a pool of CadQuery workers): the script's solid comes back as BREP text and is
measured against the reference in a fresh child (``rewards.cad.measure_solid``: exact volume IoU from OCC booleans,
Chamfer distance on surface samples). Rewards, weighted in the run's ``rewards:``:

- ``executable``: 1 when the script runs and yields a solid (CAD-RL's executability reward);
- ``iou``: the volume IoU, in the description's frame (``data.frame: description``, default) or with both solids
  normalised into the unit cube (``unit_cube``, cadrille's protocol);
- ``chamfer``: ``exp(-chamfer / chamfer_scale)``;
- ``judge``: CAD-RL's external evaluation, a judge scoring rendered views (``mmrl.plugins.VIEW_JUDGES``, named
  by ``data.judge``; off by default). The shipped ``silhouette`` judge compares the two solids' silhouettes.

Geometry counts only when the script runs: a failure scores 0 on every reward, with its reason kept for
evaluation (``diagnose``). CAD-RL's training aids are the trainer's: Trust Region Stretch
(``policy_loss: trust_region_stretch``), Precision Token Loss (``token_weights: {precision: {weight: w}}``) and
Overlong Filtering (``overlong_filter: true``).
"""
from __future__ import annotations

import hashlib
import math
import statistics
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from mmrl.errors import ConfigError
from mmrl.eval.cad import CadRecord, load_cad
from mmrl.plugins import RENDERERS, TASKS, VIEW_JUDGES
from mmrl.sandbox import Job, Limits, Result, Sandbox, check_mode
from mmrl.store import cached_build
from mmrl.task import Task, read_split
from mmrl.types import LoadContext, Sample
from rewards import cad
from tasks import cad_render, synthetic_cad

PROMPT = ("Write a CadQuery script that builds this part: {description} Leave the solid in a variable named `result` "
          "and answer with one ```python code block.")
THINK_PROMPT = ("Write a CadQuery script that builds this part: {description} First reason about the shape inside "
                "<think></think>, then answer with one ```python code block that leaves the solid in `result`.")
COLLECT, PREPARE, MEASURE = "rewards.cad:collect_solid", "rewards.cad:script_globals", "rewards.cad:measure_solid"
SANDBOX_MODULES = ["cadquery", "rewards.cad", "scipy.spatial"]
"""Imported once per sandbox worker (scipy's KD-tree is the Chamfer distance's: ~0.25 s a child otherwise)."""
SANDBOX_PACKAGES = ["rewards"]
CACHE_SIZE = 4096
"""Measurements (by script and reference) and reference solids kept: every reward of a step and the evaluation
share one run."""


@dataclass
class SyntheticCad:
    """Settings of the synthetic parts (``tasks.synthetic_cad``)."""

    n_train: int = 4000
    n_eval: int = 200
    """Held-out parts (generated from seed + 1)."""
    seed: int = 0
    families: list[str] = field(default_factory=lambda: list(synthetic_cad.FAMILIES))
    min_size: int = 5
    max_size: int = 40


@dataclass
class CadData:
    train: str | dict[str, Any] | None = None
    """JSON lines ``{"id", "description", "code"[, "images"]}`` for training, or a Hugging Face ``datasets`` source
    (a mapping, ``mmrl.hf_data.HFSource``: fields description, code, optional id, images); unset = synthetic
    parts."""
    eval: str | dict[str, Any] | None = None
    """The same for evaluation; unset = synthetic parts."""
    think: bool = False
    """Ask for reasoning in ``<think></think>`` before the code block."""
    prompt: str | None = None
    """The question with ``{description}`` filled in (default: ``PROMPT``, or ``THINK_PROMPT`` with ``think``)."""
    frame: str = "description"
    """Frame of the volume IoU: ``description`` (as built) or ``unit_cube`` (both normalised, cadrille)."""
    samples: int = 8192
    """Surface samples per solid for the Chamfer distance (cadrille: 8,192)."""
    chamfer_scale: float = 0.01
    """The ``chamfer`` reward is ``exp(-chamfer / chamfer_scale)`` (unit-cube frame)."""
    judge: str | None = None
    """A ``VIEW_JUDGES`` name scoring rendered views (the ``judge`` reward); off by default."""
    sandbox: str = "bwrap"
    """``bwrap`` (isolated; refuses to start without bubblewrap) or ``unsafe_local`` (no isolation: see
    ``mmrl.sandbox.UNSAFE_LOCAL_LOSES``)."""
    workers: int | None = None
    """Sandbox workers (default: one per CPU core)."""
    limits: Limits = field(default_factory=Limits)
    """Per-script limits: wall clock, CPU seconds, memory, file size, processes."""
    synthetic: SyntheticCad = field(default_factory=SyntheticCad)


def synthetic_file(cfg: SyntheticCad, split: str, cache_dir: str) -> Path:
    """Generate (once; cached by a hash of the settings) and return the synthetic JSONL of ``split``."""
    n, seed = (cfg.n_train, cfg.seed) if split == "train" else (cfg.n_eval, cfg.seed + 1)
    families = tuple(cfg.families)
    synthetic_cad.check_settings(cfg.min_size, cfg.max_size, families)

    def build(folder: Path) -> None:
        rows = synthetic_cad.generate(n, seed, families, cfg.min_size, cfg.max_size)
        synthetic_cad.write_jsonl(rows, folder / f"{split}.jsonl")

    return cached_build(cache_dir, f"cad_synthetic-{split}", {**asdict(cfg), "split": split, "version": 1},
                        f"{split}.jsonl", build)


def _key(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _fenced(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


@dataclass
class Outcome:
    """What running one output gave: the measurement (None when it failed) and why it failed."""

    measurement: dict[str, Any] | None
    reason: str = ""


class Measurer:
    """Runs outputs and reference scripts in the sandbox, once each: a cache of futures keyed by script and
    reference, shared by the rewards of a step (which run in parallel threads) and by evaluation."""

    def __init__(self, cfg: CadData):
        self.cfg = cfg
        self._box: Sandbox | None = None
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, Future] = OrderedDict()
        self._references: OrderedDict[str, Future] = OrderedDict()

    def sandbox(self) -> Sandbox:
        with self._lock:
            if self._box is None:
                try:
                    import cadquery  # noqa: F401  (the workers import it; say what is missing here)
                except ImportError:
                    raise ConfigError("task cad_code needs CadQuery: pip install 'mmrl[cad]'") from None
                self._box = Sandbox(SANDBOX_MODULES, SANDBOX_PACKAGES, self.cfg.limits, self.cfg.workers,
                                    self.cfg.sandbox)
            return self._box

    def close(self) -> None:
        if self._box is not None:
            self._box.close()
            self._box = None

    def _claim(self, table: OrderedDict, keys: list[str], jobs: list) -> list[Future]:
        """Futures of ``keys``; the jobs of keys first seen here are run (in one batch over the pool). The table
        keeps the ``CACHE_SIZE`` most recently used."""
        with self._lock:
            futures, mine = [], []
            for key, job in zip(keys, jobs):
                if key not in table:
                    table[key] = Future()
                    mine.append((table[key], job))
                futures.append(table[key])
                table.move_to_end(key)
            while len(table) > CACHE_SIZE:
                table.popitem(last=False)
        if mine:
            try:
                results = self.sandbox().run_many([job for _, job in mine])
            except BaseException as exc:  # the sandbox cannot start: every waiting reward sees the same error
                with self._lock:
                    for key, job in zip(keys, jobs):
                        table.pop(key, None)
                for future, _ in mine:
                    future.set_exception(exc)
                raise
            for (future, _), result in zip(mine, results):
                future.set_result(result)
        return futures

    def references(self, codes: list[str]) -> list[Result]:
        """Each reference script's run (its solid as BREP text in ``value["collected"]``)."""
        keys = [_key(code) for code in codes]
        jobs = [Job(code, COLLECT, PREPARE) for code in codes]
        return [f.result() for f in self._claim(self._references, keys, jobs)]

    def outcomes(self, completions: list[str], codes: list[str], chamfer: bool = True,
                 mesh: bool = False) -> list[Outcome]:
        """Each completion's measurement against its reference, or the reason it has none. Without ``chamfer``
        the measurement skips the Chamfer distance (unless a run with it is already cached); with ``mesh`` it
        holds both solids' tessellations."""
        mesh = mesh or self.cfg.judge is not None  # one run serves every reward when the judge needs meshes
        refs = self.references(codes)
        scripts = [cad.extract_code(c) for c in completions]
        keys, jobs, slots = [], [], []
        for i, (script, ref) in enumerate(zip(scripts, refs)):
            if script is None or not ref.ok:
                continue
            samples = self.cfg.samples if chamfer else 0
            full = _key(script, ref.value["collected"], str(mesh), self.cfg.frame, str(self.cfg.samples))
            with self._lock:
                cached = full in self._runs
            keys.append(full if chamfer or cached else _key(script, ref.value["collected"], str(mesh),
                                                               self.cfg.frame, "0"))
            jobs.append(Job(script, COLLECT, PREPARE, MEASURE, {"reference": ref.value["collected"],
                                                               "samples": samples, "frame": self.cfg.frame,
                                                               "mesh": mesh}))
            slots.append(i)
        runs = dict(zip(slots, (f.result() for f in self._claim(self._runs, keys, jobs))))
        out = []
        for i, (script, ref) in enumerate(zip(scripts, refs)):
            if not ref.ok:
                _warn_reference(codes[i], ref.reason)
                out.append(Outcome(None, f"the reference script failed: {ref.reason}"))
            elif script is None:
                out.append(Outcome(None, "no ```python code block in the output"))
            else:
                out.append(Outcome(runs[i].value if runs[i].ok else None, runs[i].reason))
        return out


_warned_references: set[str] = set()


def _warn_reference(code: str, reason: str) -> None:
    key = _key(code)
    if key not in _warned_references:
        _warned_references.add(key)
        warnings.warn(f"a reference script builds no solid ({reason}); its samples score 0:\n{code[:300]}",
                      stacklevel=3)


def judge_views(judge: str, description: str, measurement: dict[str, Any] | None) -> float:
    """The judge's score of the rendered prediction against the rendered reference (0 without a solid)."""
    if measurement is None or "mesh" not in measurement:
        return 0.0
    meshes = [measurement["reference_mesh"], measurement["mesh"]]
    bounds = cad_render.common_bounds([m["vertices"] for m in meshes])
    ref, pred = (cad_render.render_views(m["vertices"], m["triangles"], bounds=bounds, captions=False)
                 for m in meshes)
    return float(VIEW_JUDGES.get(judge)(description, ref, pred))


@VIEW_JUDGES.register("silhouette")
def silhouette_judge(description: str, reference, prediction) -> float:
    """A judge with no model: the IoU of the two renders' silhouettes (non-background pixels), over all views.
    It stands in for CAD-RL's judge model (a VLM scoring rendered views) and shows the hook's contract."""
    ref, pred = (cad_render.silhouette(image) for image in (reference, prediction))
    union = (ref | pred).sum()
    return float((ref & pred).sum() / union) if union else 0.0


@TASKS.register("cad_code", config=CadData, renderer="cad", benchmarks=("cad",))
class CadCode(Task):
    """Text-to-CadQuery; benchmark records are ``CadRecord``s."""

    def open(self, cfg: CadData) -> None:
        check_mode(cfg.sandbox, "data.sandbox")
        if cfg.frame not in cad.FRAMES:
            raise ConfigError(f"config key 'data.frame': {cfg.frame!r}; valid: {', '.join(cad.FRAMES)}")
        if cfg.judge is not None:
            VIEW_JUDGES.get(cfg.judge)  # an unknown name fails now, listing the valid ones
        self.measurer = Measurer(cfg)

    def close(self) -> None:
        self.measurer.close()

    def load(self, split: str, cfg: CadData, ctx: LoadContext) -> list[Sample]:
        records = read_split(split, cfg, ctx, synthetic_file, load_cad, task="cad_code")
        return self.samples_from_records(records, cfg, ctx)

    def samples_from_records(self, records: list[CadRecord], cfg: CadData, ctx: LoadContext) -> list[Sample]:
        template = cfg.prompt or (THINK_PROMPT if cfg.think else PROMPT)
        samples = []
        for r in records:
            try:
                prompt = template.format(description=r.description)
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"config key 'data.prompt': cannot fill {template!r} "
                                  f"({type(exc).__name__}: {exc}); placeholder: {{description}}") from None
            samples.append(Sample(id=str(r.id), prompt=prompt, images=list(r.images), answer=_fenced(r.code),
                                  fields={"code": r.code, "description": r.description}))
        return samples

    def reward_functions(self, cfg: CadData) -> dict:
        def reward(value, completions: list[str], code: list[str], description: list[str], **_) -> list[float]:
            outcomes = self.measurer.outcomes(completions, code, chamfer=value is chamfer)
            if value is None:
                return [judge_views(cfg.judge, d, o.measurement) for d, o in zip(description, outcomes)]
            return [value(o.measurement) for o in outcomes]

        chamfer = partial(cad.chamfer_score, scale=cfg.chamfer_scale)
        rewards = {"executable": partial(reward, cad.executability), "iou": partial(reward, cad.iou_score),
                   "chamfer": partial(reward, chamfer)}
        if cfg.judge is not None:
            rewards["judge"] = partial(reward, None)
        return rewards

    def default_rewards(self, cfg: CadData) -> dict[str, float]:
        """CAD-RL: executability + geometric accuracy (IoU)."""
        return {"executable": 1.0, "iou": 1.0}

    def diagnose(self, completions: list[str], samples: list[Sample]) -> list[dict[str, Any]]:
        """Per output: ``executable``, ``iou`` (0 on failure), ``chamfer`` (None on failure) and ``reason``."""
        outcomes = self.measurer.outcomes(completions, [s.fields["code"] for s in samples])
        return [{"executable": cad.executability(o.measurement), "iou": cad.iou_score(o.measurement),
                 "chamfer": None if o.measurement is None else o.measurement.get("chamfer"), "reason": o.reason}
                for o in outcomes]

    def score_batch(self, completions: list[str], samples: list[Sample]) -> list[dict[str, float]]:
        """``executable``, ``iou`` and ``chamfer`` (NaN on failure) of each output, run over the whole pool."""
        return [{"executable": row["executable"], "iou": row["iou"],
                 "chamfer": math.nan if row["chamfer"] is None else row["chamfer"]}
                for row in self.diagnose(completions, samples)]

    def score(self, completion: str, sample: Sample) -> dict[str, float]:
        return self.score_batch([completion], [sample])[0]

    def aggregate(self, scores: list[dict[str, float]], samples: list[Sample], outputs: list[str]) -> dict[str, float]:
        """``executable`` (share with a solid), ``iou`` (mean, a failure counts 0), ``chamfer_mean`` and
        ``chamfer_median`` (×10³, over the executable outputs, as cadrille reports), ``n``."""
        n = max(len(scores), 1)
        chamfers = [s["chamfer"] * 1e3 for s in scores if not math.isnan(s["chamfer"])]
        return {"executable": sum(s["executable"] for s in scores) / n, "iou": sum(s["iou"] for s in scores) / n,
                "chamfer_mean": statistics.fmean(chamfers) if chamfers else None,
                "chamfer_median": statistics.median(chamfers) if chamfers else None, "n": len(scores)}


_demo: list[Measurer] = []


@RENDERERS.register("cad", legend="top: the reference solid, below: the solid the completion's script builds (run "
                                  "again in the sandbox), each from four views; the label gives the rewards, or why "
                                  "the script built nothing")
def render_cad(view, group: dict, sample, settings: dict):
    """The rollout inspector's picture of a CAD completion: reference and prediction rendered side by side."""
    from mmrl.demo.render import RenderError

    fields = group.get("fields") if isinstance(group.get("fields"), dict) else {}
    if not isinstance(fields.get("code"), str):
        raise RenderError("this record holds no reference script")
    if not _demo:
        _demo.append(Measurer(CadData(workers=1, samples=0)))
    try:
        outcome = _demo[0].outcomes([sample.completion or ""], [fields["code"]], chamfer=False, mesh=True)[0]
    except Exception as exc:  # noqa: BLE001  (no sandbox here: say so in the UI)
        raise RenderError(f"cannot run the scripts: {exc}") from None
    m = outcome.measurement
    if m is None:  # render the reference alone: its own script, measured against itself
        alone = _demo[0].outcomes([_fenced(fields["code"])], [fields["code"]], chamfer=False, mesh=True)[0]
        mesh = (alone.measurement or {}).get("mesh", {"vertices": [], "triangles": []})
        return cad_render.side_by_side(cad_render.render_views(mesh["vertices"], mesh["triangles"]),
                                       cad_render.render_views([], []),
                                       labels=("reference", f"prediction: {outcome.reason[:120]}"))
    bounds = cad_render.common_bounds([m["reference_mesh"]["vertices"], m["mesh"]["vertices"]])
    ref_image, pred_image = (cad_render.render_views(x["vertices"], x["triangles"], bounds=bounds)
                             for x in (m["reference_mesh"], m["mesh"]))
    scores = " · ".join(f"{k} {v:.3f}" for k, v in sample.rewards.items() if isinstance(v, (int, float)))
    return cad_render.side_by_side(ref_image, pred_image, labels=("reference", f"prediction · {scores}"))

