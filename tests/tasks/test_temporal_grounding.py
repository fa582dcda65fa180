"""The temporal grounding task on real files: synthetic MP4s + Charades-STA annotations, prompts, answers,
think modes, export, and one clear error per kind of bad input (naming the annotation file and line)."""
from __future__ import annotations

import shutil

import pytest

from mmrl.errors import ConfigError, DataError
from mmrl.eval.charades import load_annotations
from mmrl.types import LoadContext
from mmrl.vision import VideoBudget
from rewards import temporal
from tasks.synthetic_video import generate
from tasks.temporal_grounding import SyntheticVideoConfig, TemporalGrounding, TemporalGroundingData

pytest.importorskip("decord")

BUDGET = VideoBudget(fps=2.0, min_frames=4, max_frames=16, min_pixels=3136, max_pixels=3136, total_pixels=50176)


@pytest.fixture(scope="module")
def charades_dir(tmp_path_factory):
    """Four 4-second synthetic videos (one event each) in Charades-STA layout: videos/ beside the annotations."""
    out = tmp_path_factory.mktemp("charades")
    generate(out, 4, seed=3, duration=(4.0, 4.0), min_event=1.0, split_name="train")
    return out


def ctx(tmp_path) -> LoadContext:
    return LoadContext(3136, 3136, str(tmp_path / "cache"), video=BUDGET)


def load(path, tmp_path, **data):
    return TemporalGrounding().load("train", TemporalGroundingData(train=str(path), **data), ctx(tmp_path))


def test_samples_carry_video_answer_and_frame_times(charades_dir, tmp_path):
    samples = load(charades_dir / "charades_train.txt", tmp_path, think="never")
    records, _ = load_annotations(charades_dir / "charades_train.txt")
    assert len(samples) == len(records) == 4
    for s, r in zip(samples, records):
        assert s.videos == [str(charades_dir / "videos" / f"{r.video_id}.mp4")]
        assert s.prompt.startswith("<video>\nThe video lasts 4.0 seconds.") and r.sentence in s.prompt
        assert s.answer == f"<answer>{r.start:.1f} to {r.end:.1f}</answer>"
        assert s.fields["gt_interval"] == [r.start, r.end] and s.fields["duration"] == 4.0
        # 16 frames at 4 fps, 4 s at 2 fps -> 8 frames: linspace(0, 15, 8) rounded, over 4 fps
        assert s.fields["frame_times"] == [0.0, 0.5, 1.0, 1.5, 2.25, 2.75, 3.25, 3.75]
        # the ground truth is the best answer under every reward and metric
        score = TemporalGrounding().score(s.answer, s)
        assert score == {"miou": 1.0, "r1@0.3": 1.0, "r1@0.5": 1.0, "r1@0.7": 1.0, "parsed": 1.0}
        assert temporal.format_reward([s.answer], think=[s.fields["think"]]) == [1.0]


def test_think_modes(charades_dir, tmp_path):
    path = charades_dir / "charades_train.txt"
    always = load(path, tmp_path, think="always")
    assert all(s.answer.startswith("<think>") and "Think first" in s.prompt for s in always)
    assert all(s.fields["think"] is True for s in always)
    assert temporal.format_reward([s.answer for s in always], think=[True] * 4) == [1.0] * 4
    mixed = [load(path, tmp_path, think="hybrid", think_ratio=r) for r in (0.0, 0.5, 1.0)]
    assert [sum(s.fields["think"] for s in m) for m in (mixed[0], mixed[2])] == [0, 4]
    assert [s.fields["think"] for s in mixed[1]] == [s.fields["think"] for s in load(path, tmp_path, think="hybrid")]
    with pytest.raises(ConfigError, match="data.think"):
        load(path, tmp_path, think="sometimes")


def test_synthetic_split_is_generated_once_and_cached(tmp_path):
    cfg = TemporalGroundingData(synthetic=SyntheticVideoConfig(n_train=2, n_eval=1, duration=[4.0, 4.0]))
    task = TemporalGrounding()
    first = task.load("train", cfg, ctx(tmp_path))
    again = task.load("train", cfg, ctx(tmp_path))
    held_out = task.load("eval", cfg, ctx(tmp_path))
    assert [s.answer for s in first] == [s.answer for s in again] and len(first) == 2 and len(held_out) == 1
    assert first[0].videos != held_out[0].videos


def test_export_writes_charades_lines_that_load_back(charades_dir, tmp_path):
    samples = load(charades_dir / "charades_train.txt", tmp_path)
    out = tmp_path / "kept" / "kept.txt"
    TemporalGrounding().export(samples[1:3], out)
    records, _ = load_annotations(out)
    assert [(r.start, r.end, r.sentence) for r in records] == [
        (*s.fields["gt_interval"], s.fields["sentence"]) for s in samples[1:3]]
    reloaded = load(out, tmp_path, video_dir=str(charades_dir / "videos"))
    assert [s.answer for s in reloaded] == [s.answer for s in samples[1:3]]


@pytest.fixture()
def broken(charades_dir, tmp_path):
    """A copy of the dataset whose 2nd line points at a video this test breaks."""
    root = tmp_path / "broken"
    shutil.copytree(charades_dir, root)
    lines = (root / "charades_train.txt").read_text().splitlines()
    return root, lines, root / "videos" / f"{lines[1].split()[0]}.mp4"


@pytest.mark.parametrize("damage, message", [
    ("missing", "not found"),
    ("corrupt", "cannot read video"),
    ("empty", "video file is empty"),
])
def test_bad_video_names_annotation_file_and_line(broken, tmp_path, damage, message):
    root, lines, video = broken
    if damage == "missing":
        video.unlink()
    else:
        video.write_bytes(b"\x00\x01not an mp4" * 50 if damage == "corrupt" else b"")
    path = root / "charades_train.txt"
    with pytest.raises(DataError, match=message) as err:
        load(path, tmp_path)
    assert f"{path}:2:" in str(err.value)
    with pytest.warns(UserWarning, match="skipped 1 bad"):
        assert len(load(path, tmp_path, skip_bad_samples=True)) == 3


def test_malformed_line_names_file_and_line(broken, tmp_path):
    root, lines, _ = broken
    path = root / "charades_train.txt"
    path.write_text("\n".join([lines[0], "vid 1.0 oops##a sentence", *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: malformed annotation line"):
        load(path, tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 bad"):
        assert len(load(path, tmp_path, skip_bad_samples=True)) == 4
