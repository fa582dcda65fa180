"""Tests for tasks.synthetic_video: determinism, Charades-STA lines, and decoded frames that agree with them."""
from __future__ import annotations

import re

import av
import decord
import numpy as np
import pytest

from mmrl.errors import ConfigError
from mmrl.vision import probe_video
from tasks.synthetic_video import COLOURS, DIRECTIONS, SHAPES, generate, make_video

LINE = re.compile(r"^(\S+) (\d+\.\d) (\d+\.\d)##(.+)$")
TOLERANCE = 60  # a decoded pixel shows a colour when no channel is further than this from it


def _annotations(path):
    """Video ID -> list of (start tenths, end tenths, sentence), from a Charades-STA file."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = LINE.match(line)
        assert match, line
        vid, start, end, sentence = match.groups()
        out.setdefault(vid, []).append((round(float(start) * 10), round(float(end) * 10), sentence))
    return out


def _decode(path):
    """All frames of ``path`` as ``[T, H, W, 3]`` uint8, decoded with decord."""
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def _colour_counts(frames, colour):
    """Pixels per frame within ``TOLERANCE`` of ``COLOURS[colour]``."""
    diff = np.abs(frames.astype(int) - np.array(COLOURS[colour])).max(axis=-1)
    return (diff <= TOLERANCE).sum(axis=(1, 2))


def test_same_seed_same_text_and_frames(tmp_path):
    kwargs = dict(seed=3, n_events=2, duration=(3.0, 5.0))
    text_a = generate(tmp_path / "a", 3, **kwargs).read_text()
    text_b = generate(tmp_path / "b", 3, **kwargs).read_text()
    assert text_a == text_b
    for vid in _annotations(tmp_path / "a" / "charades_train.txt"):
        frames_a = _decode(tmp_path / "a" / "videos" / f"{vid}.mp4")
        frames_b = _decode(tmp_path / "b" / "videos" / f"{vid}.mp4")
        assert np.array_equal(frames_a, frames_b)


def test_different_seeds_differ(tmp_path):
    text_a = generate(tmp_path / "a", 4, seed=1, duration=(3.0, 4.0)).read_text()
    text_b = generate(tmp_path / "b", 4, seed=2, duration=(3.0, 4.0)).read_text()
    assert text_a != text_b


def test_more_videos_extend_fewer(tmp_path):
    short = generate(tmp_path / "a", 2, seed=5).read_text()
    long = generate(tmp_path / "b", 4, seed=5).read_text()
    assert long.startswith(short) and long != short


def test_annotation_lines(tmp_path):
    path = generate(tmp_path, 6, seed=7, n_events=3, duration=(4.0, 9.0), min_event=1.2, split_name="mini")
    assert path == tmp_path / "charades_mini.txt"
    annotations = _annotations(path)
    assert list(annotations) == [f"mini_{i:05d}" for i in range(6)]
    for vid, events in annotations.items():
        info = probe_video(tmp_path / "videos" / f"{vid}.mp4")
        assert len(events) == 3
        named = set()
        for start, end, sentence in events:
            assert 0 <= start < end <= info.duration * 10 + 1e-6
            assert end - start >= 12
            colours = [c for c in COLOURS if re.search(rf"\b{c}\b", sentence)]
            shapes = [s for s in SHAPES if re.search(rf"\b{s}\b", sentence)]
            assert len(colours) == 1 and len(shapes) == 1, sentence
            named.add(colours[0])
        assert len(named) == 3  # the events of one video have distinct colours


def test_decoded_frames_show_each_shape_exactly_inside_its_interval(tmp_path):
    fps = 4
    path = generate(tmp_path, 4, seed=11, fps=fps, n_events=2, duration=(5.0, 8.0))
    checked = 0
    for index, (vid, events) in enumerate(_annotations(path).items()):
        video = make_video(11, index, fps=fps, n_events=2, duration=(5.0, 8.0))
        frames = _decode(tmp_path / "videos" / f"{vid}.mp4")
        assert frames.shape == video.frames.shape
        for (start, end, sentence), event in zip(events, video.events):
            assert event.colour in sentence and event.shape in sentence
            drawn = np.all(video.frames == COLOURS[event.colour], axis=-1).sum(axis=(1, 2))
            decoded = _colour_counts(frames, event.colour)
            for k in range(len(frames)):
                if start * fps <= 10 * k < end * fps:  # start <= k / fps < end, in exact integers
                    assert drawn[k] >= 40 and decoded[k] >= 0.5 * drawn[k], (vid, k)
                    checked += 1
                else:
                    assert drawn[k] == 0 and decoded[k] == 0, (vid, k)
    assert checked > 20


def test_shapes_move_across_the_frame():
    for index in range(10):
        video = make_video(2, index)
        event = video.events[0]
        colour = np.all(video.frames == COLOURS[event.colour], axis=-1)
        visible = [k for k in range(len(colour)) if colour[k].any()]
        centres = [np.nonzero(colour[k])[1].mean() for k in visible]
        steps = np.diff(centres) * event.direction
        assert len(visible) >= 6 and np.all(steps >= 0) and centres[-1] != centres[0]
        assert DIRECTIONS[-event.direction] not in event.sentence  # a named direction is the true one


def test_event_lengths_stay_between_min_and_max_event():
    events = [make_video(5, i, min_event=1.5, max_event=3.0).events[0] for i in range(40)]
    tenths = [e.end - e.start for e in events]
    assert min(tenths) >= 15 and max(tenths) <= 30 and len(set(tenths)) > 5
    assert min(e.start for e in events) < 20 and max(e.end for e in events) > 60  # placed all over the 8 s


def test_duration_matches_probe(tmp_path):
    path = generate(tmp_path, 5, seed=4, fps=5, duration=(2.0, 6.0))
    for index, vid in enumerate(_annotations(path)):
        video = make_video(4, index, fps=5, duration=(2.0, 6.0))
        info = probe_video(tmp_path / "videos" / f"{vid}.mp4")
        assert info.n_frames == len(video.frames)
        assert info.fps == pytest.approx(5)
        assert info.duration == pytest.approx(len(video.frames) / 5)
        assert 2.0 - 0.1 <= info.duration <= 6.0 + 0.1
        assert (info.width, info.height) == (56, 56)


def test_mpeg4_when_libx264_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264"})
    path = generate(tmp_path, 1, seed=0)
    mp4 = tmp_path / "videos" / "train_00000.mp4"
    with av.open(str(mp4)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    start, end, _ = _annotations(path)["train_00000"][0]
    video = make_video(0, 0)
    decoded = _colour_counts(_decode(mp4), video.events[0].colour)
    inside = np.array([start * 4 <= 10 * k < end * 4 for k in range(len(decoded))])
    assert all(decoded[inside] > 0) and all(decoded[~inside] == 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(width=55), "even"),
        (dict(fps=2.5), "fps"),
        (dict(duration=(5.0, 3.0)), "duration"),
        (dict(n_events=9), "n_events"),
        (dict(n_events=4, height=32), "n_events"),
        (dict(min_event=0.1), "min_event"),
        (dict(min_event=9.0), "min_event"),
        (dict(min_event=2.0, max_event=1.0), "max_event"),
        (dict(split_name="a b"), "split_name"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        generate(tmp_path, 1, seed=0, **kwargs)
