"""GUI grounding (GUI-G², Tang et al. 2025, "GUI-G²: Gaussian Reward Modeling for GUI Grounding").

Given a screenshot and an instruction, the model answers where to click: a point ``(x, y)`` or a box
``[x1,y1,x2,y2]`` in its model family's convention: the pixels of the image it saw (after Qwen's ``smart_resize``
with the family's factor; Qwen2.5-VL) or 0-1000 of each side (Qwen2-VL, Qwen3-VL, Qwen3.5, other families). Rewards
map the answer back to original pixels (``scale`` = original pixels per answer unit) and score it with the
Gaussian point and coverage rewards
(``rewards.gui``); evaluation counts a click inside the element's box, as ScreenSpot does.

Data comes from ScreenSpot v1/v2/Pro files (``mmrl.eval.screenspot_format``) or from the seeded synthetic generator
(``tasks.synthetic_gui``), which writes the same ScreenSpot v1 format into the cache.
"""
from __future__ import annotations

from functools import partial
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmrl.errors import ConfigError
from mmrl.eval.screenspot import coord_scale, image_size
from mmrl.eval.screenspot_format import GroundingRecord, load_screenspot
from mmrl.plugins import TASKS
from mmrl.store import cached_build
from mmrl.task import Task, read_split
from mmrl.types import IMAGE_MARK, LoadContext, Sample
from rewards import gui
from rewards.parsing import parse_point
from tasks import synthetic_gui

PROMPTS = {
    "point": "{instruction}\nAnswer with the point to click as (x, y) {units}.",
    "box": "Outline the position corresponding to the instruction: {instruction}. "
    "The output should be only [x1,y1,x2,y2]{box_units}.",
}
"""The box prompt is the GUI-G² paper's; the point prompt is the same request for a click. Both ask for the model
family's coordinate convention (``UNITS``); answers map to original pixels with ``mmrl.eval.screenspot.coord_scale``
of that convention (``resized``: the image the model saw, after ``smart_resize`` with the family's factor)."""

UNITS = {
    "resized": {"units": "in pixels", "box_units": ""},
    "0-1000": {"units": "with x and y from 0 to 1000 across the image's width and height",
               "box_units": " with coordinates from 0 to 1000 across the image"},
}
"""How a prompt names each coordinate convention (``LoadContext.coords``); the paper's pixel prompt is unchanged."""


@dataclass
class SyntheticConfig:
    n_train: int = 2000
    """Training screenshots to generate."""
    n_eval: int = 200
    """Held-out screenshots (generated from a different seed stream)."""
    seed: int = 0
    """Generator seed (train uses it, eval uses seed + 1)."""
    width: int = 112
    """Screenshot width in pixels."""
    height: int = 112
    """Screenshot height in pixels."""
    n_distractors: int = 0
    """Other elements on each screenshot that the instruction rules out."""
    kinds: list[str] = field(default_factory=lambda: ["button"])
    """Element kinds: button, icon, text."""
    min_size: int = 14
    """Smallest element side in pixels."""
    max_size: int = 40
    """Largest element side in pixels."""


@dataclass
class GuiGroundingData:
    train: str | dict[str, Any] | None = None
    """ScreenSpot-format JSON file or folder for training, or a Hugging Face ``datasets`` source (a mapping,
    ``mmrl.hf_data.HFSource``: fields image, instruction, bbox, optional ui_type, id, split, application, group,
    platform); unset = synthetic data."""
    eval: str | dict[str, Any] | None = None
    """The same for evaluation; unset = synthetic data."""
    image_dir: str | None = None
    """Folder of the screenshots (default: ``images/`` or ``screenspot_imgs/`` beside the JSON)."""
    answer_format: str = "point"
    """point: ``(x, y)``; box: ``[x1,y1,x2,y2]`` (needed for the coverage reward)."""
    instruction_first: bool = False
    """Put the instruction before the screenshot (default: image first, as Qwen and the paper do). Then the text
    between the image and the answer has a fixed length, so the answer's rotary offset to each image token is
    the same for every sample. Not shown to speed up learning here: at 112x112 the tiny model stayed at chance
    either way within 1,500 SFT steps."""
    alpha: float = 0.5
    """GUI-G² Gaussian width factor: sigma = alpha * element side (0.5 is the paper's best)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Synthetic data settings (used for a split whose path is unset)."""


def synthetic_files(cfg: SyntheticConfig, split: str, cache_dir: str) -> Path:
    """Generate (once; cached by a hash of the settings) and return the synthetic ScreenSpot file of ``split``."""
    n, seed = (cfg.n_train, cfg.seed) if split == "train" else (cfg.n_eval, cfg.seed + 1)
    params = {**asdict(cfg), "split": split, "version": 2}
    build = partial(synthetic_gui.generate, n=n, seed=seed, width=cfg.width, height=cfg.height,
                    n_distractors=cfg.n_distractors, kinds=tuple(cfg.kinds), min_size=cfg.min_size,
                    max_size=cfg.max_size, split_name=split)
    return cached_build(cache_dir, f"gui_synthetic-{split}", params, f"screenspot_{split}.json", build)


def format_answer(box_seen: list[float], answer_format: str) -> str:
    """The ground-truth completion in answer units (``answer_scale``): ``(cx, cy)`` or ``[x1,y1,x2,y2]``,
    integers."""
    x1, y1, x2, y2 = box_seen
    if answer_format == "point":
        return f"({round((x1 + x2) / 2)}, {round((y1 + y2) / 2)})"
    return f"[{round(x1)},{round(y1)},{round(x2)},{round(y2)}]"


def to_sample(record: GroundingRecord, cfg: GuiGroundingData, ctx: LoadContext) -> Sample:
    scale = list(coord_scale(ctx.coords, image_size(record), ctx.min_pixels, ctx.max_pixels, ctx.factor))
    box_seen = [v / scale[i % 2] for i, v in enumerate(record.gt_box)]
    return Sample(
        id=str(record.id),
        prompt=PROMPTS[cfg.answer_format].format(instruction=record.instruction, **UNITS[ctx.coords]) + (
            f"\n{IMAGE_MARK}" if cfg.instruction_first else ""
        ),
        images=[str(record.image)],
        answer=format_answer(box_seen, cfg.answer_format),
        fields={
            "gt_box": list(record.gt_box),
            "scale": scale,
            "answer_format": cfg.answer_format,
            "ui_type": record.ui_type,
            "instruction": record.instruction,
        },
    )


@TASKS.register("gui_grounding", config=GuiGroundingData, renderer="gui", benchmarks=("screenspot",))
class GuiGrounding(Task):
    """Task adapter for GUI grounding on ScreenSpot-format or synthetic data. Its benchmark records are
    ScreenSpot's (``mmrl.eval.screenspot_format.GroundingRecord``)."""

    def load(self, split: str, cfg: GuiGroundingData, ctx: LoadContext) -> list[Sample]:
        if cfg.answer_format not in PROMPTS:
            raise ConfigError(f"config key 'data.answer_format': {cfg.answer_format!r}; valid: point, box")
        records = read_split(split, cfg, ctx, synthetic_files, partial(load_screenspot, image_dir=cfg.image_dir),
                             task="gui_grounding")
        return self.samples_from_records(records, cfg, ctx)

    def samples_from_records(self, records: list[GroundingRecord], cfg: GuiGroundingData, ctx: LoadContext):
        """Samples (prompt, image, ground-truth answer, reward fields) of already-loaded ScreenSpot records."""
        return [to_sample(r, cfg, ctx) for r in records]

    def reward_functions(self, cfg: GuiGroundingData) -> dict:
        return {
            "point": partial(gui.point_reward, alpha=cfg.alpha),
            "coverage": partial(gui.coverage_reward, alpha=cfg.alpha),
            "click": gui.click_reward,
            "iou": gui.iou_reward,
            "format": gui.format_reward,
        }

    def default_rewards(self, cfg: GuiGroundingData) -> dict[str, float]:
        """GUI-G²: point + coverage + format with equal weights (coverage needs box answers)."""
        if cfg.answer_format == "box":
            return {"point": 1.0, "coverage": 1.0, "format": 1.0}
        return {"point": 1.0, "format": 1.0}

    def score(self, completion: str, sample: Sample) -> dict[str, float]:
        """``correct``: the click (point, or box centre) lands inside the element box in original pixels."""
        correct = gui.click_reward([completion], gt_box=[sample.fields["gt_box"]], scale=[sample.fields["scale"]])[0]
        return {"accuracy": correct, "parsed": float(parse_point(completion) is not None)}
