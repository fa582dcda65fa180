"""Tests for mmrl.vision's video half: probing, frame sampling and sizing against qwen-vl-utils, loading errors,
and the pre-flight check of vision pad tokens."""
from __future__ import annotations

import av
import decord
import numpy as np
import pytest
import torch
from qwen_vl_utils import vision_process

from mmrl.errors import ConfigError, DataError
from mmrl.vision import (
    VideoBudget,
    VideoInfo,
    check_vision_tokens,
    frame_indices,
    frame_size,
    frame_times,
    load_video,
    probe_video,
)
from tasks.synthetic_video import write_mp4

TINY = VideoBudget(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28, total_pixels=1024 * 28 * 28)


def _level(k):
    """The grey level of frame ``k`` of a ramp video: frames 0..35 are told apart by brightness."""
    return 20 + 6 * k % 216


def _ramp(path, n_frames, fps, width=64, height=48):
    """Write a video whose frame ``k`` is uniformly ``_level(k)`` grey; return its path."""
    frames = np.stack([np.full((height, width, 3), _level(k), dtype=np.uint8) for k in range(n_frames)])
    write_mp4(path, frames, fps)
    return path


def _info(n_frames, fps):
    return VideoInfo("clip.mp4", n_frames, float(fps), n_frames / fps, 64, 48)


@pytest.fixture
def reader_choice(monkeypatch):
    """Lets a test change qwen-vl-utils' video reader choice; the choice is recomputed afterwards."""
    vision_process.get_video_reader_backend.cache_clear()
    yield monkeypatch
    vision_process.get_video_reader_backend.cache_clear()


def _assert_one_line_naming(exc_info, path):
    message = str(exc_info.value)
    assert str(path) in message
    assert "\n" not in message


def test_probe_video_reads_the_header(tmp_path):
    path = _ramp(tmp_path / "ramp.mp4", 33, 4, width=64, height=48)
    info = probe_video(path)
    assert info == VideoInfo(str(path), 33, 4.0, 8.25, 64, 48)


@pytest.mark.parametrize(
    ("n_frames", "fps", "budget", "expected"),
    [
        # 33 frames at 4 fps = 8.25 s; 8.25 * 2 = 16.5 -> floored to even 16; step 32/15 = 2.133:
        # 0, 2.13, 4.27, 6.4, 8.53, 10.67, 12.8, 14.93, 17.07, 19.2, 21.33, 23.47, 25.6, 27.73, 29.87, 32.
        (33, 4, VideoBudget(), [0, 2, 4, 6, 9, 11, 13, 15, 17, 19, 21, 23, 26, 28, 30, 32]),
        # 1.5 s * 2 = 3 is raised to min_frames 4; linspace(0, 5, 4) = 0, 1.67, 3.33, 5.
        (6, 4, VideoBudget(), [0, 2, 3, 5]),
        # min_frames 3 rounds up to 4.
        (6, 4, VideoBudget(min_frames=3), [0, 2, 3, 5]),
        # 10 s * 2 = 20 is capped by max_frames 7, rounded down to 6; linspace(0, 99, 6) step 19.8.
        (100, 10, VideoBudget(max_frames=7), [0, 20, 40, 59, 79, 99]),
        # 3 frames are fewer than min_frames: all of them, floored to even -> 2.
        (3, 30, VideoBudget(), [0, 2]),
        # fps above the video's: at most every frame, floored to even (10 * 1 s -> 5 frames -> 4).
        (5, 5, VideoBudget(fps=10), [0, 1, 3, 4]),
    ],
)
def test_frame_indices_hand_checked(n_frames, fps, budget, expected):
    assert frame_indices(_info(n_frames, fps), budget) == expected


def test_frame_indices_one_frame_video():
    with pytest.raises(DataError, match="clip.mp4 has 1 frame"):
        frame_indices(_info(1, 4), VideoBudget())


def test_frame_times():
    assert frame_times(_info(40, 4), [0, 2, 5, 39]) == [0.0, 0.5, 1.25, 9.75]


@pytest.mark.parametrize(
    ("height", "width", "n_frames", "budget", "expected"),
    [
        # Budget is loose: smart_resize(48, 64) rounds both sides to 56; 3136 is inside [3136, 50176].
        (48, 64, 4, TINY, (56, 56)),
        # total_pixels binds: 12544 / 8 * 2 = 3136 per frame; 224x224 = 50176 -> beta 4 -> 56x56.
        (224, 224, 8, VideoBudget(min_pixels=784, max_pixels=78400, total_pixels=12544), (56, 56)),
        # 5% over min_pixels binds: per-frame share 784 / 8 * 2 = 196 < int(12544 * 1.05) = 13171;
        # beta = sqrt(50176 / 13171) = 1.952, 224 / 1.952 = 114.8 -> 112.
        (224, 224, 8, VideoBudget(min_pixels=12544, max_pixels=78400, total_pixels=784), (112, 112)),
        # The 768-token cap binds although max_pixels is higher: cap 602112; beta = sqrt(1254400 / 602112)
        # = 1.443, 1120 / 1.443 = 776.0 -> 27 * 28 = 756.
        (1120, 1120, 4, VideoBudget(max_pixels=2000 * 784, total_pixels=10**9), (756, 756)),
    ],
)
def test_frame_size_hand_checked(height, width, n_frames, budget, expected):
    assert frame_size(height, width, n_frames, budget) == expected


FETCH_CASES = [
    # (n_frames, fps, width, height, budget)
    (33, 4, 64, 48, TINY),
    (50, 25, 64, 48, VideoBudget(fps=1.0, min_pixels=784, max_pixels=3136, total_pixels=10**6)),
    (9, 3, 96, 32, VideoBudget(fps=0.5, min_frames=3, min_pixels=784, max_pixels=3136, total_pixels=8 * 784)),
    (40, 8, 64, 48, VideoBudget(fps=4.0, max_frames=7, min_pixels=12544, max_pixels=12544, total_pixels=4 * 784)),
    (21, 10, 160, 120, VideoBudget(fps=3.0, min_pixels=784, max_pixels=10**5, total_pixels=8000)),
    (4, 2, 840, 840, VideoBudget(max_pixels=2000 * 784, total_pixels=10**9)),
]


@pytest.mark.parametrize(("n_frames", "fps", "width", "height", "budget"), FETCH_CASES)
def test_pure_functions_match_fetch_video(tmp_path, reader_choice, n_frames, fps, width, height, budget):
    reader_choice.setattr(vision_process, "FORCE_QWENVL_VIDEO_READER", "decord")
    path = _ramp(tmp_path / "v.mp4", n_frames, fps, width, height)
    info = probe_video(path)
    request = {"video": str(path), "fps": budget.fps, "min_frames": budget.min_frames,
               "max_frames": budget.max_frames, "min_pixels": budget.min_pixels, "max_pixels": budget.max_pixels,
               "total_pixels": budget.total_pixels}
    (video, metadata), sample_fps = vision_process.fetch_video(
        request, return_video_sample_fps=True, return_video_metadata=True)
    assert metadata["video_backend"] == "decord"
    indices = frame_indices(info, budget)
    assert list(metadata["frames_indices"]) == indices
    assert tuple(video.shape) == (len(indices), 3, *frame_size(height, width, len(indices), budget))
    assert sample_fps == pytest.approx(len(indices) / info.duration)


def test_load_video_samples_the_right_frames(tmp_path):
    path = _ramp(tmp_path / "ramp.mp4", 33, 4)
    clip = load_video(path, TINY)
    indices = [0, 2, 4, 6, 9, 11, 13, 15, 17, 19, 21, 23, 26, 28, 30, 32]
    assert clip.frames.dtype == torch.uint8
    assert tuple(clip.frames.shape) == (16, 3, 56, 56)
    assert clip.timestamps == [k / 4 for k in indices]
    assert clip.sample_fps == pytest.approx(16 / 8.25)
    assert clip.info == probe_video(path)
    means = clip.frames.float().mean(dim=(1, 2, 3))
    assert means.tolist() == pytest.approx([_level(k) for k in indices], abs=3)


def test_load_video_matches_fetch_video_pixels(tmp_path):
    path = tmp_path / "noise.mp4"
    rng = np.random.default_rng(0)
    write_mp4(path, rng.integers(0, 256, size=(12, 48, 64, 3), dtype=np.uint8), 6)
    clip = load_video(path, TINY)
    request = {"video": str(path), "fps": 2.0, "min_frames": 4, "max_frames": 768, "min_pixels": TINY.min_pixels,
               "max_pixels": TINY.max_pixels, "total_pixels": TINY.total_pixels}
    video = vision_process.fetch_video(request)
    assert torch.equal(clip.frames, video.to(torch.uint8))


def test_load_video_forces_decord(tmp_path, reader_choice):
    reader_choice.setattr(vision_process, "FORCE_QWENVL_VIDEO_READER", "torchvision")
    clip = load_video(_ramp(tmp_path / "ramp.mp4", 8, 4), TINY)
    assert len(clip.timestamps) == 4
    assert vision_process.get_video_reader_backend() == "decord"


def _broken_reader(ele):
    raise RuntimeError("simulated decode failure")


def _fake_torchvision_reader(ele):
    return torch.zeros(4, 3, 48, 64, dtype=torch.uint8), {"video_backend": "torchvision"}, 2.0


@pytest.mark.parametrize("fallback", [None, _fake_torchvision_reader], ids=["fallback-fails", "fallback-reads"])
def test_load_video_decord_failure_is_a_data_error(tmp_path, monkeypatch, fallback):
    path = _ramp(tmp_path / "ramp.mp4", 8, 4)
    # qwen-vl-utils catches the reader's error and silently re-reads with torchvision; load_video must not.
    monkeypatch.setitem(vision_process.VIDEO_READER_BACKENDS, "decord", _broken_reader)
    if fallback is not None:
        monkeypatch.setitem(vision_process.VIDEO_READER_BACKENDS, "torchvision", fallback)
    with pytest.raises(DataError, match="^cannot read video ") as exc_info:
        load_video(path, TINY)
    _assert_one_line_naming(exc_info, path)


def test_load_video_one_frame(tmp_path):
    path = _ramp(tmp_path / "still.mp4", 1, 4)
    with pytest.raises(DataError, match="has 1 frame") as exc_info:
        load_video(path, TINY)
    _assert_one_line_naming(exc_info, path)


def test_missing_video(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(DataError, match="^video not found: ") as exc_info:
        load_video(path, TINY)
    _assert_one_line_naming(exc_info, path)


def test_empty_video_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="^video file is empty: ") as exc_info:
        probe_video(path)
    _assert_one_line_naming(exc_info, path)


def _header_only(path):
    """An MP4 with a video stream declared but no frame in it."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()


def _truncated(path):
    """The first 60% of a real MP4 (its index is at the end, so it is lost)."""
    _ramp(path, 20, 4)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])


@pytest.mark.parametrize(
    "make",
    [
        lambda path: path.write_bytes(np.random.default_rng(1).bytes(4096)),
        lambda path: path.write_text("not a video\nat all\n"),
        _header_only,
        _truncated,
    ],
    ids=["random-bytes", "text", "no-frames", "truncated"],
)
def test_unreadable_video_file(tmp_path, make):
    path = tmp_path / "bad.mp4"
    make(path)
    with pytest.raises(DataError, match=r"^cannot read video \S+: [^\[]") as exc_info:
        load_video(path, TINY)
    _assert_one_line_naming(exc_info, path)


class _StubReader:
    """Stands in for ``decord.VideoReader`` on a video decord opens but finds no frames in."""

    def __init__(self, uri):
        pass

    def __len__(self):
        return 0

    def get_avg_fps(self):
        return 0.0


def _asserting_reader(uri):
    raise AssertionError("Invalid frame count: 0")  # what decord itself does


@pytest.mark.parametrize("reader", [_StubReader, _asserting_reader], ids=["zero-count", "decord-assert"])
def test_video_without_frames(tmp_path, monkeypatch, reader):
    path = _ramp(tmp_path / "ramp.mp4", 4, 4)
    monkeypatch.setattr(decord, "VideoReader", reader)
    with pytest.raises(DataError, match="^video has no frames: ") as exc_info:
        probe_video(path)
    _assert_one_line_naming(exc_info, path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(fps=0), "fps"),
        (dict(min_frames=0), "min_frames"),
        (dict(min_frames=8, max_frames=4), "min_frames"),
        (dict(max_frames=1, min_frames=1), "max_frames"),
        (dict(min_pixels=5000, max_pixels=4000), "min_pixels"),
        (dict(total_pixels=0), "total_pixels"),
        (dict(factor=27), "factor"),
    ],
)
def test_video_budget_rejects_impossible_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        VideoBudget(**kwargs)


IMG, VID, TXT = 7, 8, 1
MERGE = 2


def _row(*runs, length=40):
    """A prompt row: ``runs`` are (token_id, count) pairs separated by text tokens, right-padded with text."""
    ids = [TXT]
    for token_id, count in runs:
        ids += [token_id] * count + [TXT]
    return ids + [TXT] * (length - len(ids))


def _check(rows, image_grid, video_grid, ids=("a", "b")):
    check_vision_tokens(
        torch.tensor(rows),
        None if image_grid is None else torch.tensor(image_grid),
        None if video_grid is None else torch.tensor(video_grid),
        IMG, VID, MERGE, list(ids[:len(rows)]),
    )


def test_check_vision_tokens_match():
    # Image grid 1x4x4 -> 16 patches / 4 = 4 features; video grid 2x4x4 -> 32 / 4 = 8 features.
    _check([_row((IMG, 4)), _row((VID, 8))], [[1, 4, 4]], [[2, 4, 4]])
    _check([_row(), _row()], None, None)


def test_check_vision_tokens_too_many_image_tokens():
    with pytest.raises(DataError) as exc_info:
        _check([_row((IMG, 4)), _row((IMG, 5))], [[1, 4, 4], [1, 4, 4]], None)
    assert str(exc_info.value) == (
        "sample b: prompt has 5 <|image_pad|> tokens but its image gives 4 features "
        "(the model fails with 'Image features and image tokens do not match')"
    )


def test_check_vision_tokens_too_few_video_tokens():
    # Video grid 4x4x4 -> 64 / 4 = 16 features, but the prompt holds 12 pad tokens.
    with pytest.raises(DataError, match=r"^sample a: prompt has 12 <\|video_pad\|> tokens but its video gives 16 "
                                        r"features \(.*Video features and video tokens do not match"):
        _check([_row((VID, 12))], None, [[4, 4, 4]])


def test_check_vision_tokens_two_images_in_one_row():
    # Row a holds images of 4 and 6 features, row b one of 4: grids are handed out in that order.
    rows = [_row((IMG, 4), (IMG, 6)), _row((IMG, 4))]
    _check(rows, [[1, 4, 4], [1, 4, 6], [1, 4, 4]], None)
    with pytest.raises(DataError, match=r"^sample a: prompt has 10 <\|image_pad\|> tokens but its 2 images give 8 "):
        _check(rows, [[1, 4, 4], [1, 4, 4], [1, 4, 6]], None)


def test_check_vision_tokens_grid_count_mismatch():
    with pytest.raises(DataError, match=r"^samples a, b: prompts hold 2 image\(s\) .* describes 1$"):
        _check([_row((IMG, 4)), _row((IMG, 4))], [[1, 4, 4]], None)
    with pytest.raises(DataError, match="prompts hold 0 video"):
        _check([_row(), _row()], None, [[2, 4, 4]])
