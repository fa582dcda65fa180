"""Images and videos -> what a Qwen2-VL / Qwen2.5-VL processor sees: pixel budgets, loading, frame sampling.

Qwen2-VL and Qwen2.5-VL cut an image into 14x14 patches and merge 2x2 of them into one visual token, so the
image they see has both sides a multiple of 28 and an area inside a pixel budget (``min_pixels``,
``max_pixels``). ``smart_resize`` computes that size, ``fit_image`` applies it and returns the scale that maps
coordinates the model writes (pixels of the image it saw) back to the original image.

A video is read through ``qwen_vl_utils.fetch_video`` with its decord reader (``load_video``), under a
``VideoBudget``. The rules it applies are restated here as pure functions, and ``load_video`` checks that the
library did exactly that:

* ``frame_indices``: ``n = duration * fps`` frames, clamped to ``[min_frames, max_frames]`` (rounded up / down
  to even) and to the frame count, floored to even (two frames make one temporal patch); the frames taken are
  ``round(linspace(0, n_frames - 1, n))``. ``frame_times``: frame ``i`` is at ``i / video_fps`` seconds.
* ``frame_size``: every frame is resized by ``smart_resize`` with the per-frame area capped at
  ``min(max_pixels, max(min(768 * factor**2, 2 * total_pixels / n), int(1.05 * min_pixels)))``.

``check_vision_tokens`` is the pre-flight check that each prompt holds as many ``<|image_pad|>`` /
``<|video_pad|>`` tokens as its images' and videos' grids give features, naming the sample when not.

Departures from ``fetch_video`` on its own: decord is always the reader (the library would prefer torchcodec
when it is installed, and after a decord error it silently re-reads the file with torchvision; both may count
frames differently), and a file that decord cannot decode is a ``DataError``, not a fallback.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from qwen_vl_utils import vision_process

from mmrl.errors import ConfigError, DataError

MAX_ASPECT_RATIO = 200
"""Qwen2-VL rejects images whose longer side is more than this many times the shorter one."""

_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What Pillow raises on a corrupt, truncated or non-image file (``UnidentifiedImageError`` is an OSError)."""


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> tuple[int, int]:
    """Return ``(h, w)``: the size Qwen2-VL/2.5-VL resizes a ``height`` x ``width`` image to.

    The rule (Qwen2-VL's image processor and ``qwen_vl_utils.smart_resize``):

    1. round each side to the nearest multiple of ``factor`` (Python's ``round``, so halves go to the even
       multiple: 42 -> 56, 70 -> 56), at least ``factor``;
    2. if the area exceeds ``max_pixels``, scale both original sides by ``beta = sqrt(h*w / max_pixels)``
       and round each *down* to a multiple of ``factor``;
    3. else if the area is below ``min_pixels``, scale both original sides by ``beta = sqrt(min_pixels /
       (h*w))`` and round each *up* to a multiple of ``factor``.

    The defaults are the Qwen2.5-VL processor's (``min_pixels`` 3136, ``max_pixels`` 1003520); note that
    ``qwen_vl_utils`` has different defaults, so pass the budget explicitly when comparing.

    Departure: in step 2 a side is never rounded below ``factor`` (as in transformers' processor);
    ``qwen_vl_utils`` would return 0 there, which only happens for very thin images under a small budget.

    Raises ``ValueError`` if a side is not positive or the aspect ratio exceeds ``MAX_ASPECT_RATIO``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image sides must be positive, got height={height}, width={width}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio must be at most {MAX_ASPECT_RATIO}, got {ratio:.1f} ({width}x{height})")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _reason(exc: BaseException) -> str:
    """``exc``'s message on one line, or its type's name if it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert to RGB; transparent pixels become white (as ``qwen_vl_utils`` does for RGBA)."""
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` and decode it fully into an RGB image.

    Decoding happens here (``img.load()``), so a truncated file fails now and not inside a training step.
    EXIF orientation is not applied: benchmark boxes refer to the stored pixel grid.

    Raises ``DataError`` with a one-line message naming the file: ``image not found: PATH`` or
    ``cannot read image PATH: REASON``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {_reason(exc)}") from exc


def fit_image(
    img: Image.Image, min_pixels: int, max_pixels: int, factor: int = 28
) -> tuple[Image.Image, tuple[float, float]]:
    """Resize ``img`` (bicubic) to ``smart_resize``'s size and return ``(resized, (sx, sy))``.

    ``sx = orig_w / new_w`` and ``sy = orig_h / new_h``: a point ``(x, y)`` the model gives in pixels of the
    image it saw is ``(x * sx, y * sy)`` in the original image.
    """
    orig_w, orig_h = img.size
    new_h, new_w = smart_resize(orig_h, orig_w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    resized = img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    return resized, (orig_w / new_w, orig_h / new_h)


FRAME_FACTOR = vision_process.FRAME_FACTOR
"""Sampled frame counts are multiples of this: Qwen2-VL/2.5-VL packs 2 consecutive frames into one patch."""

MAX_FRAME_TOKENS = vision_process.VIDEO_MAX_TOKEN_NUM
"""qwen-vl-utils caps a video frame at this many visual tokens (``MAX_FRAME_TOKENS * factor**2`` pixels)."""


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` reads: decord's frame count and average fps, ``duration = n_frames / fps``
    seconds (the length qwen-vl-utils samples over) and the frame size in pixels."""

    path: str
    n_frames: int
    fps: float
    duration: float
    width: int
    height: int


@dataclass(frozen=True)
class VideoBudget:
    """How a video is sampled and resized for Qwen2-VL/2.5-VL: the keys ``qwen_vl_utils.fetch_video`` reads.

    The pixel defaults are qwen-vl-utils' per-frame bounds (128 and 768 visual tokens of 28x28 pixels) and the
    24576-token total of its earlier releases (0.0.14 defaults to 0.9 x 128000 tokens, sized for a 128k
    context). Raises ``ConfigError`` for a budget that cannot be met.
    """

    fps: float = 2.0
    """Frames sampled per second of video, before the frame-count bounds apply."""
    min_frames: int = 4
    """Fewest frames sampled (rounded up to even); a video with fewer frames gives all of them (floored to even)."""
    max_frames: int = 768
    """Most frames sampled (rounded down to even)."""
    min_pixels: int = 128 * 28 * 28
    """Smallest area of one resized frame, in pixels."""
    max_pixels: int = 768 * 28 * 28
    """Largest area of one resized frame, in pixels; ``total_pixels`` may lower it (see ``frame_size``)."""
    total_pixels: int = 24576 * 28 * 28
    """Area budget of all sampled frames together: each frame gets at most ``2 * total_pixels / n_frames``."""
    factor: int = 28
    """Resized sides are multiples of this: the patch size (14) times the spatial merge (2)."""
    timestamps: bool = False
    """Qwen3-VL-style textual timestamps: each temporal patch (2 frames) becomes its own video preceded by its time
    as text, ``<1.5s>``, instead of one video whose time is only in the rotary positions. A model that reads times
    from text needs no temporal position readout (what a tiny model fails to learn)."""

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ConfigError(f"video fps must be > 0, got {self.fps}")
        if not 1 <= self.min_frames <= self.max_frames or self.max_frames < FRAME_FACTOR:
            raise ConfigError(f"need 1 <= min_frames <= max_frames and max_frames >= {FRAME_FACTOR}, "
                              f"got min_frames={self.min_frames}, max_frames={self.max_frames}")
        if not 0 < self.min_pixels <= self.max_pixels or self.total_pixels <= 0:
            raise ConfigError(f"need 0 < min_pixels <= max_pixels and total_pixels > 0, got min_pixels="
                              f"{self.min_pixels}, max_pixels={self.max_pixels}, total_pixels={self.total_pixels}")
        if self.factor <= 0 or self.factor % vision_process.SPATIAL_MERGE_SIZE:
            raise ConfigError(f"video factor must be a positive even number (patch size x 2), got {self.factor}")


@dataclass(frozen=True)
class VideoClip:
    """The frames of one video as the model sees them.

    ``frames`` is ``[T, C, H, W]`` (uint8 from ``load_video``), sampled and resized; ``timestamps[i]`` is frame
    ``i``'s time in the source video (seconds); ``sample_fps`` is frames sampled per second of video, the
    ``fps`` Qwen2.5-VL's processor takes to place frames in time.
    """

    frames: torch.Tensor
    timestamps: list[float]
    sample_fps: float
    info: VideoInfo

    timestamped: bool = False
    """Whether prompts show this clip as timestamped temporal patches (``VideoBudget.timestamps``)."""

    def metadata(self) -> dict:
        """What transformers' video processor needs (``video_metadata``) to place the already-sampled frames in
        time: Qwen2.5-VL's ``second_per_grid_ts`` = temporal patch / ``sampled_fps``, and ``sampled_fps`` =
        frames / total * fps, here ``sample_fps``."""
        return {"total_num_frames": len(self.frames), "fps": self.sample_fps,
                "frames_indices": list(range(len(self.frames)))}

    def chunks(self, size: int) -> list[VideoClip]:
        """Consecutive clips of ``size`` frames (one temporal patch each when ``size`` is the patch size)."""
        return [replace(self, frames=self.frames[i : i + size], timestamps=self.timestamps[i : i + size])
                for i in range(0, len(self.frames), size)]


_DECORD_LOG_HEADER = re.compile(r"^\[[\d:]+\] \S+:\d+: (?:Check failed: [^()]*\([^()]*\) )?")
"""What decord puts before its message, e.g. ``[20:52:39] /src/video/video_reader.cc:151: Check failed: st_nb >= 0
(-1 vs. 0) `` (a log header and the failed check)."""


def _decord_reason(exc: BaseException) -> str:
    """decord's error on one line without its log header; it says only "Error reading PATH..." of a file it cannot
    open at all."""
    if str(exc).startswith("Error reading "):
        return "decord cannot open it (not a video, or a corrupt or truncated file)"
    return _DECORD_LOG_HEADER.sub("", _reason(exc))


def probe_video(path: str | Path) -> VideoInfo:
    """Read ``path``'s frame count, fps and frame size with decord (the reader ``load_video`` uses).

    decord exposes no frame size, so frame 0 is decoded for it; no other frame is.

    Raises ``DataError`` with a one-line message naming the file: ``video not found: PATH``, ``video file is
    empty: PATH``, ``cannot read video PATH: REASON`` or ``video has no frames: PATH``.
    """
    import decord  # video-only dependency

    path = Path(path)
    if not path.exists():
        raise DataError(f"video not found: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"video file is empty: {path}")
    try:
        reader = decord.VideoReader(str(path))
    except AssertionError:  # decord asserts a positive frame count after opening
        raise DataError(f"video has no frames: {path}") from None
    except (decord.DECORDError, RuntimeError) as exc:
        raise DataError(f"cannot read video {path}: {_decord_reason(exc)}") from exc
    n_frames, fps = len(reader), float(reader.get_avg_fps())
    if n_frames <= 0 or not fps > 0:
        raise DataError(f"video has no frames: {path}")
    try:
        height, width, _ = reader.next().shape
    except (decord.DECORDError, RuntimeError, StopIteration) as exc:
        raise DataError(f"cannot read video {path}: {_decord_reason(exc)}") from exc
    return VideoInfo(str(path), n_frames, fps, n_frames / fps, int(width), int(height))


def frame_indices(info: VideoInfo, budget: VideoBudget) -> list[int]:
    """The frames qwen-vl-utils' decord reader takes from the whole video (its ``smart_nframes``).

    ``n = duration * budget.fps``, clamped to ``[min_frames rounded up to even, max_frames rounded down to
    even]``, then to ``n_frames``, then floored to even; the indices are ``round(linspace(0, n_frames - 1,
    n))``, computed as the library does (``torch.linspace`` in the default dtype, halves rounded to even): evenly
    spread, first and last frame included.

    Raises ``DataError`` naming the file if that leaves fewer than 2 frames (a one-frame video).
    """
    lowest = math.ceil(budget.min_frames / FRAME_FACTOR) * FRAME_FACTOR
    highest = math.floor(budget.max_frames / FRAME_FACTOR) * FRAME_FACTOR
    n = min(max(info.duration * budget.fps, lowest), highest, info.n_frames)
    n = math.floor(n / FRAME_FACTOR) * FRAME_FACTOR
    if n < FRAME_FACTOR:
        raise DataError(f"video {info.path} has {info.n_frames} frame(s); Qwen video input needs {FRAME_FACTOR}")
    return torch.linspace(0, info.n_frames - 1, n).round().long().tolist()


def frame_times(info: VideoInfo, indices: list[int]) -> list[float]:
    """The times of frames ``indices`` in the video, in seconds: ``index / fps``."""
    return [index / info.fps for index in indices]


def frame_size(height: int, width: int, n_frames: int, budget: VideoBudget) -> tuple[int, int]:
    """``(h, w)`` each of ``n_frames`` sampled ``height`` x ``width`` frames is resized to (``fetch_video``'s rule).

    The per-frame area cap is ``min(budget.max_pixels, max(min(MAX_FRAME_TOKENS * factor**2, total_pixels /
    n_frames * 2), int(min_pixels * 1.05)))``: the total budget shared by the frames (two frames per temporal
    patch), never above 768 tokens a frame, never below 5% over ``min_pixels``, and never above the budget's
    own ``max_pixels``. Then ``smart_resize(height, width, factor, min_pixels, cap)``.
    """
    shared = min(MAX_FRAME_TOKENS * budget.factor**2, budget.total_pixels / n_frames * FRAME_FACTOR)
    cap = min(budget.max_pixels, max(shared, int(budget.min_pixels * 1.05)))
    return smart_resize(height, width, factor=budget.factor, min_pixels=budget.min_pixels, max_pixels=cap)


def _use_decord() -> None:
    """Make qwen-vl-utils read videos with decord, as ``FORCE_QWENVL_VIDEO_READER=decord`` at import would."""
    if vision_process.FORCE_QWENVL_VIDEO_READER != "decord":
        vision_process.FORCE_QWENVL_VIDEO_READER = "decord"
        vision_process.get_video_reader_backend.cache_clear()


def _decode_failure(path: str, indices: list[int], exc: BaseException | None) -> str:
    """Why reading ``path`` failed: decord's own error on ``indices`` (qwen-vl-utils only logs it before retrying
    with torchvision), else ``exc``'s message."""
    import decord  # video-only dependency

    try:
        decord.VideoReader(path).get_batch(indices)
    except Exception as decord_exc:  # noqa: BLE001 - any decord failure is the reason to report
        return _decord_reason(decord_exc)
    return _reason(exc) if exc is not None else "decord failed while qwen-vl-utils read it"


def load_video(path: str | Path, budget: VideoBudget) -> VideoClip:
    """Sample and resize ``path``'s frames as Qwen2-VL/2.5-VL sees them, through ``qwen_vl_utils.fetch_video``.

    The file is probed first (``probe_video``'s errors), then read with decord under ``budget``. Frames come
    back as uint8 ``[T, 3, H, W]`` (the library's bicubic resize already rounds to whole values), with their
    times in the video. Raises ``DataError`` ``cannot read video PATH: REASON`` when decoding fails, and
    ``RuntimeError`` if the library sampled other frames or another size than ``frame_indices`` and
    ``frame_size`` say (a qwen-vl-utils version this module does not mirror).
    """
    info = probe_video(path)
    indices = frame_indices(info, budget)
    size = frame_size(info.height, info.width, len(indices), budget)
    request = {
        "video": info.path, "fps": budget.fps, "min_frames": budget.min_frames, "max_frames": budget.max_frames,
        "min_pixels": budget.min_pixels, "max_pixels": budget.max_pixels, "total_pixels": budget.total_pixels,
    }
    _use_decord()
    try:
        (frames, metadata), sample_fps = vision_process.fetch_video(
            request, image_patch_size=budget.factor // vision_process.SPATIAL_MERGE_SIZE,
            return_video_sample_fps=True, return_video_metadata=True,
        )
    except Exception as exc:  # noqa: BLE001 - the reader, its fallback or the resize failed on this file
        raise DataError(f"cannot read video {info.path}: {_decode_failure(info.path, indices, exc)}") from exc
    if metadata.get("video_backend") != "decord":
        raise DataError(f"cannot read video {info.path}: {_decode_failure(info.path, indices, None)}")
    taken, got_size = [int(i) for i in metadata["frames_indices"]], tuple(frames.shape[-2:])
    if taken != indices or got_size != size:
        raise RuntimeError(
            f"qwen-vl-utils read frames {taken} at {got_size} from {info.path}, but frame_indices and frame_size "
            f"give {indices} at {size}: mmrl.vision does not mirror this qwen-vl-utils version"
        )
    frames = frames.round().clamp(0, 255).to(torch.uint8)
    return VideoClip(frames, frame_times(info, indices), float(sample_fps), info, budget.timestamps)


PAD_TOKENS = {"image": "<|image_pad|>", "video": "<|video_pad|>"}
"""How Qwen2-VL/2.5-VL's tokenizer spells the placeholder tokens that visual features replace."""


def _check_pad_tokens(
    kind: str, input_ids: torch.Tensor, grid_thw: torch.Tensor | None, token_id: int, merge_size: int,
    sample_ids: list[str],
) -> None:
    """``check_vision_tokens`` for one kind ("image" or "video")."""
    features = [] if grid_thw is None else (grid_thw.prod(dim=-1) // merge_size**2).tolist()
    is_pad = input_ids == token_id
    run_starts = is_pad.clone()
    run_starts[:, 1:] &= ~is_pad[:, :-1]
    n_tokens, n_items = is_pad.sum(dim=-1).tolist(), run_starts.sum(dim=-1).tolist()
    pad = PAD_TOKENS[kind]
    if sum(n_items) != len(features):
        raise DataError(f"samples {', '.join(map(str, sample_ids))}: prompts hold {sum(n_items)} {kind}(s) "
                        f"(runs of {pad}) but {kind}_grid_thw describes {len(features)}")
    offset = 0
    for sample_id, tokens, items in zip(sample_ids, n_tokens, n_items, strict=True):
        given = sum(features[offset:offset + items])
        offset += items
        if tokens != given:
            source = f"its {kind} gives" if items == 1 else f"its {items} {kind}s give"
            raise DataError(f"sample {sample_id}: prompt has {tokens} {pad} tokens but {source} {given} features "
                            f"(the model fails with '{kind.capitalize()} features and {kind} tokens do not match')")


def check_vision_tokens(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    video_grid_thw: torch.Tensor | None,
    image_token_id: int,
    video_token_id: int,
    merge_size: int,
    sample_ids: list[str],
) -> None:
    """Check before a forward pass that each row's pad tokens match the features its images and videos give.

    Qwen2-VL/2.5-VL's processor expands each image (video) into one contiguous run of ``prod(t, h, w) /
    merge_size**2`` ``<|image_pad|>`` (``<|video_pad|>``) tokens, and the model scatters the visual features
    into those positions, failing on a mismatch without saying which sample. Here the grid rows
    (``[N, 3]`` tensors, or None when the batch has none) are handed to the rows of ``input_ids`` (``[B, L]``)
    in order, one per run of pad tokens, and each row's token count is compared with its grids' features.

    Raises ``DataError``, e.g. ``sample ID: prompt has 12 <|video_pad|> tokens but its video gives 16 features
    (...)``, or, when the runs and the grids differ in number, a message naming the batch's samples.
    """
    for kind, grid_thw, token_id in (("image", image_grid_thw, image_token_id),
                                     ("video", video_grid_thw, video_token_id)):
        _check_pad_tokens(kind, input_ids, grid_thw, token_id, merge_size, sample_ids)
