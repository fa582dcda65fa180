"""Seeded synthetic MP4 videos in Charades-STA format, for CPU runs of the video temporal grounding task.

Each video is a plain dark background on which ``n_events`` coloured shapes (circle, square, triangle) appear
at their start time, cross the frame horizontally in lanes of their own, and vanish at their end time. The
shapes of one video have distinct colours, so a sentence naming colour and shape picks out one event.

Times are exact: frame ``k`` shows time ``k / fps``; an event's start and end are multiples of 0.1 s (kept as
integer tenths, so no float rounding enters), and its shape is drawn in frame ``k`` exactly when
``start <= k / fps < end``. An event's length is drawn uniformly between ``min_event`` and ``max_event`` seconds
(capped by the video) and its start uniformly where it fits, both on a grid of ``time_step`` seconds, so with
short events no constant answer scores well; every event covers at least one frame.
A video has ``round(d * fps)`` frames (at least 2) for a duration ``d`` drawn from ``duration``, so its length
is ``n_frames / fps`` seconds, what ``mmrl.vision.probe_video`` reports.

Output layout (``generate``)::

    out_dir/charades_<split_name>.txt     one line per event: ``VID START END##sentence`` (seconds, 1 decimal)
    out_dir/videos/<VID>.mp4              libx264 (else mpeg4), yuv420p, ``fps`` frames a second

Video ``i`` depends only on ``(seed, i)`` and the layout arguments: the same seed gives the same annotation
text and the same decoded frames (the encoded bytes are not promised), and more videos extend fewer.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from mmrl.colours import rgb8
from mmrl.errors import ConfigError

COLOURS = rgb8(("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink"))
"""Shape colours (``mmrl.colours``): saturated, bright, far from each other and from the dark grey backgrounds."""

SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ((16, 16, 16), (32, 32, 40), (48, 44, 40))
DIRECTIONS = {1: "from left to right", -1: "from right to left"}
TEMPLATES = (
    "the {colour} {shape} moves across the screen",
    "a {colour} {shape} slides {direction}",
    "the {colour} {shape} travels {direction}",
    "a {colour} {shape} appears and crosses the frame",
)
MIN_SHAPE = 8  # smallest shape side in pixels
MARGIN = 1  # free pixels between a lane's edge and its shape


@dataclass(frozen=True)
class Event:
    """One shape's pass: ``start``/``end`` in integer tenths of a second, ``top``/``size`` in pixels,
    ``direction`` +1 (left to right) or -1."""

    colour: str
    shape: str
    start: int
    end: int
    top: int
    size: int
    direction: int
    sentence: str

    def visible(self, k: int, fps: int) -> bool:
        """True if the shape is drawn in frame ``k``: ``start <= k / fps < end`` (in exact integers)."""
        return self.start * fps <= 10 * k < self.end * fps

    def left(self, k: int, fps: int, width: int) -> int:
        """The shape's left edge in frame ``k``: it slides linearly from one side to the other."""
        progress = (10 * k - self.start * fps) / ((self.end - self.start) * fps)
        offset = round(progress * (width - self.size))
        return offset if self.direction == 1 else width - self.size - offset


@dataclass
class SyntheticVideo:
    """Rendered frames ``[T, H, W, 3]`` (uint8) with the events they show."""

    frames: np.ndarray
    fps: int
    background: tuple[int, int, int]
    events: list[Event]

    def lines(self, video_id: str) -> list[str]:
        """The Charades-STA annotation lines of this video, one per event."""
        return [f"{video_id} {e.start / 10:.1f} {e.end / 10:.1f}##{e.sentence}" for e in self.events]


def _tenths(seconds: float) -> int:
    """``seconds`` rounded up to whole tenths (as an integer), ignoring float noise below 1e-6 s."""
    return math.ceil(round(seconds * 10, 6))


def _n_frames(seconds: float, fps: int) -> int:
    """Frames of a video drawn ``seconds`` long: ``round(seconds * fps)``, at least 2."""
    return max(2, round(seconds * fps))


def _check_args(width: int, height: int, fps: int, duration: tuple[float, float], n_events: int,
                min_event: float, max_event: float | None, time_step: float, shape_scale: float) -> None:
    """Raise ``ConfigError`` naming the first bad argument."""
    if width % 2 or height % 2 or min(width, height) < 16:
        raise ConfigError(f"width and height must be even and >= 16 (yuv420p), got {width}x{height}")
    if not isinstance(fps, int) or fps <= 0:
        raise ConfigError(f"fps must be a positive integer, got {fps!r}")
    if not 0 < duration[0] <= duration[1]:
        raise ConfigError(f"duration must be (low, high) with 0 < low <= high, got {duration}")
    if not 0 < shape_scale < 1:
        raise ConfigError(f"shape_scale must be in (0, 1), got {shape_scale}")
    if not 1 <= n_events <= len(COLOURS) or min(height // n_events, int(width * shape_scale)) - 2 * MARGIN < MIN_SHAPE:
        raise ConfigError(f"n_events must be in 1..{len(COLOURS)} with lanes of at least {MIN_SHAPE + 2 * MARGIN}"
                          f" px on a {width}x{height} frame, got {n_events}")
    if _tenths(min_event) * fps < 10:
        raise ConfigError(f"min_event must be at least one frame (1/fps = {1 / fps:.3g} s), got {min_event}")
    if max_event is not None and max_event < min_event:
        raise ConfigError(f"max_event={max_event} is shorter than min_event={min_event}")
    if _tenths(time_step) < 1 or abs(time_step * 10 - _tenths(time_step)) > 1e-6:
        raise ConfigError(f"time_step must be a positive multiple of 0.1 s, got {time_step}")
    if -(-_tenths(min_event) // _tenths(time_step)) * _tenths(time_step) > (
            _tenths(max_event) if max_event is not None else _n_frames(duration[0], fps) * 10 // fps):
        raise ConfigError(f"no multiple of time_step={time_step} lies between min_event and max_event")
    if _n_frames(duration[0], fps) * 10 // fps < _tenths(min_event):
        raise ConfigError(f"min_event={min_event} s does not fit in the shortest video ({duration[0]} s)")


def _sample_event(rng: np.random.Generator, colour: str, lane: tuple[int, int], span: int, lengths: tuple[int, int],
                  step: int, size: int) -> Event:
    """An event of ``colour`` in ``lane`` = (top, height), inside ``[0, span]`` tenths: its length drawn from
    ``lengths`` = (min, max) tenths (max capped at ``span``), its start uniformly where it fits, both multiples of
    ``step`` tenths."""
    length = step * int(rng.integers(-(-lengths[0] // step), min(lengths[1], span) // step + 1))
    start = step * int(rng.integers(0, (span - length) // step + 1))
    end = start + length
    top = lane[0] + int(rng.integers(MARGIN, lane[1] - size - MARGIN + 1))
    shape, direction = str(rng.choice(SHAPES)), int(rng.choice((1, -1)))
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    sentence = template.format(colour=colour, shape=shape, direction=DIRECTIONS[direction]) + "."
    return Event(colour, shape, start, end, top, size, direction, sentence)


def _draw(draw: ImageDraw.ImageDraw, event: Event, left: int) -> None:
    """Draw ``event``'s shape with its left edge at ``left``."""
    x0, y0, x1, y1 = left, event.top, left + event.size - 1, event.top + event.size - 1
    fill = COLOURS[event.colour]
    if event.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif event.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)


def make_video(seed: int, index: int, *, width: int = 56, height: int = 56, fps: int = 4,
               duration: tuple[float, float] = (8.0, 8.0), n_events: int = 1, min_event: float = 1.5,
               max_event: float | None = None, time_step: float = 0.1, shape_scale: float = 1 / 3) -> SyntheticVideo:
    """Render video ``index`` of the stream for ``seed`` (a pure function of its arguments)."""
    _check_args(width, height, fps, duration, n_events, min_event, max_event, time_step, shape_scale)
    rng = np.random.default_rng([seed, index])
    n_frames = _n_frames(float(rng.uniform(*duration)), fps)
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    lane_height = height // n_events
    size = min(lane_height, int(width * shape_scale)) - 2 * MARGIN
    colours = [str(c) for c in rng.choice(list(COLOURS), size=n_events, replace=False)]
    lanes = rng.permutation(n_events)
    events = [
        _sample_event(rng, colour, (int(lane) * lane_height, lane_height), n_frames * 10 // fps,
                      (_tenths(min_event), _tenths(max_event) if max_event else 10**9), _tenths(time_step), size)
        for colour, lane in zip(colours, lanes)
    ]
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    for k in range(n_frames):
        image = Image.new("RGB", (width, height), background)
        draw = ImageDraw.Draw(image)
        for event in events:
            if event.visible(k, fps):
                _draw(draw, event, event.left(k, fps, width))
        frames[k] = np.asarray(image)
    return SyntheticVideo(frames, fps, background, events)


def write_mp4(path: str | Path, frames: np.ndarray, fps: int) -> None:
    """Encode ``frames`` ``[T, H, W, 3]`` (uint8 RGB, even sides) to an MP4 file at ``fps`` frames a second.

    x264 runs with one thread and a constant quantiser, without adaptive quantisation, macroblock tree or
    lookahead: its threading and its float-driven rate decisions otherwise made the decoded pixels vary between
    encodes of the same frames (seen after torch had run in the same process)."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w", format="mp4") as container:
        options = ({"qp": "10", "threads": "1", "x264-params": "aq-mode=0:mbtree=0:rc-lookahead=0"}
                   if codec == "libx264" else {"b": "2M", "threads": "1"})
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


def generate(out_dir: str | Path, n_videos: int, *, seed: int, width: int = 56, height: int = 56, fps: int = 4,
             duration: tuple[float, float] = (8.0, 8.0), n_events: int = 1, min_event: float = 1.5,
             max_event: float | None = None, time_step: float = 0.1, shape_scale: float = 1 / 3,
             split_name: str = "train") -> Path:
    """Write ``n_videos`` videos under ``out_dir`` with a Charades-STA annotation file and return its path.

    Files: ``out_dir/videos/<split_name>_00000.mp4`` ... and ``out_dir/charades_<split_name>.txt``, one
    ``VID START END##sentence`` line per event, videos in order. ``duration`` is the (low, high) range the
    video lengths are drawn from, in seconds; ``min_event`` / ``max_event`` the shortest / longest event (None:
up to the whole video); ``time_step`` the grid (seconds, a multiple of 0.1) event starts and lengths lie on;
``shape_scale`` a shape's side as a fraction of the frame width (capped by its lane's height). Raises ``ConfigError`` for bad
    arguments.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split_name):
        raise ConfigError(f"split_name must match [A-Za-z0-9_-]+, got {split_name!r}")
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(n_videos):
        video = make_video(seed, index, width=width, height=height, fps=fps, duration=tuple(duration),
                           n_events=n_events, min_event=min_event, max_event=max_event, time_step=time_step,
                           shape_scale=shape_scale)
        video_id = f"{split_name}_{index:05d}"
        write_mp4(out_dir / "videos" / f"{video_id}.mp4", video.frames, fps)
        lines.extend(video.lines(video_id))
    path = out_dir / f"charades_{split_name}.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
