"""Records shared by every layer: tasks produce ``Sample``s, the trainer turns them into ``Group``s."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmrl.vision import VideoBudget

IMAGE_MARK = "<image>"
"""Where a prompt places an image; images without a mark go before the text (Qwen's convention)."""
VIDEO_MARK = "<video>"
"""Where a prompt places a video; videos without a mark go before the text, ahead of unmarked images."""


@dataclass
class Sample:
    """One task record, ready to become a prompt.

    ``prompt`` is the user text (the task formats the instruction), ``images`` and ``videos`` are image and
    video file paths in the order they appear in the prompt, ``answer`` is the ground-truth completion exactly as the policy should
    write it (the SFT target), and ``fields`` are keyword columns handed to reward functions and metrics
    (TRL convention: each reward receives ``fields[key]`` for every completion as a list).
    """

    id: str
    prompt: str
    images: list[str] = field(default_factory=list)
    answer: str = ""
    videos: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Group:
    """G completions of one prompt with their scores, as written to ``rollouts/``."""

    sample: Sample
    completions: list[str]
    rewards: dict[str, list[float]]
    total: list[float]
    advantages: list[float]
    truncated: list[bool]
    lengths: list[int]
    trained: list[bool]
    """Whether each completion entered the loss (False when dynamic sampling or overlong filtering removed it)."""
    offpolicy: list[bool] = field(default_factory=list)
    """Whether each completion is the ground-truth answer placed in the group (TempSamp-R1), not a sample."""


@dataclass(frozen=True)
class LoadContext:
    """What a task needs from the run to build samples: the model's pixel budgets and a cache folder."""

    min_pixels: int
    max_pixels: int
    cache_dir: str
    factor: int = 28
    """Side multiple of the model's resized images (patch size x spatial merge size; 28 for Qwen2/2.5-VL, 32 for
    Qwen3-VL): the model family's, so the processor never resizes again."""
    coords: str = "resized"
    """How the model family answers grounding: ``resized`` (pixels of the resized image) or ``0-1000``."""
    video: VideoBudget | None = None
    """How videos are sampled and resized (frame timestamps depend on it)."""
