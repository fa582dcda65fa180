"""The rollout viewer without a browser: reading run directories (bad files included), the path guard, sorting,
tables, and the task renderers on files in the real formats written by the real writers (the server's routes:
``test_hostile.py``)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from mmrl.demo import tables
from mmrl.demo.app import Viewer
from mmrl.demo.render import TIMELINE_LABELS, gaussian_field, render_diffusion, render_gui, render_video
from mmrl.demo.runs import RefusedPath, RunView, inside
from mmrl.demo.text import markdown_literal
from mmrl.store import RunDir
from mmrl.types import Group, Sample
from rewards.gui import gaussian_point


def _gui_group(image: str, completions: list[str], totals: list[float]) -> Group:
    sample = Sample(id="7", prompt="click the red button", images=[image], answer="(20, 20)",
                    fields={"gt_box": [10.0, 12.0, 30.0, 28.0], "scale": [2.0, 2.0], "answer_format": "point"})
    n = len(completions)
    return Group(sample, completions, {"point": [t - 1 for t in totals], "format": [1.0] * n}, totals,
                 [t - sum(totals) / n for t in totals], [False] * (n - 1) + [True], [5] * n, [True] * n)


@pytest.fixture
def gui_run(tmp_path):
    """A run directory written by ``RunDir`` (the trainer's writer): two steps of one GUI group, the screenshot
    kept under ``media/`` although the data set lives elsewhere."""
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (40, 40), (200, 200, 200)).save(data / "shot.png")
    run = RunDir(tmp_path / "run")
    for step, totals in ((1, [1.2, 0.1, 1.9, 0.5]), (2, [1.5, 1.8, 1.7, 1.9])):
        run.log_rollouts(step, [_gui_group(str(data / "shot.png"), ["(5, 6)", "junk", "(10, 10)", "(0, 0)"], totals)])
        run.log_metrics(step, {"reward/mean": sum(totals) / 4, "reward/std": 0.5, "kl": 0.01 * step,
                               "completion_len/mean": 5.0, "reward/point": 0.3, "reward/format": 1.0})
    run.write_json("config.json", {"task": "gui_grounding", "data": {"alpha": 0.5}})
    return tmp_path / "run"


def test_media_are_kept_inside_the_run(gui_run, tmp_path):
    record = json.loads((gui_run / "rollouts" / "step_000001.jsonl").read_text())
    stored = record["media"]["images"][0]
    assert record["images"] == [str(tmp_path / "data" / "shot.png")]  # provenance: what the model saw
    assert stored.startswith("media/")
    assert (gui_run / stored).read_bytes() == (tmp_path / "data" / "shot.png").read_bytes()
    second = json.loads((gui_run / "rollouts" / "step_000002.jsonl").read_text())
    assert second["media"]["images"] == [stored] and len(os.listdir(gui_run / "media")) == 1


def test_media_of_a_missing_file_is_none(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.publish_media(str(tmp_path / "gone.png")) is None


def test_path_guard_refuses_what_leaves_the_run(tmp_path):
    root = tmp_path / "run"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "sub" / "link.txt")
    assert inside(root, "sub") == (root / "sub").resolve()
    assert inside(root, str(root / "sub")) == (root / "sub").resolve()  # absolute, but inside
    for name in ("../secret.txt", "sub/../../secret.txt", str(tmp_path / "secret.txt"), "/etc/passwd",
                 "sub/link.txt", "", "a\x00b"):
        with pytest.raises(RefusedPath):
            inside(root, name)


def test_missing_and_corrupt_rollout_files_give_messages(gui_run):
    path = gui_run / "rollouts" / "step_000002.jsonl"
    good = path.read_text()
    path.write_text('{"prompt": "cut off", "completions": ["a"\n' + good + "[1, 2]\n")
    view = RunView(gui_run)
    step = view.rollouts(2)
    assert len(step.groups) == 1 and step.groups[0]["prompt"] == "click the red button"
    assert step.problems[0].startswith(f"{path}:1: not valid JSON")
    assert step.problems[1] == f"{path}:3: a line must be a JSON object; line skipped"
    assert view.rollouts(9).problems == [f"rollout file {gui_run / 'rollouts' / 'step_000009.jsonl'} not found"]
    path.write_text("")
    assert view.rollouts(2).problems == [f"rollout file {path} is empty"]


def test_metrics_skip_a_half_written_last_line_but_report_others(gui_run):
    path = gui_run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n{oops\n" + lines[1] + '\n{"step": "3"}\n{"step": 4, "reward/me')
    rows, problems = RunView(gui_run).metrics()
    assert [r["step"] for r in rows] == [1, 2]
    assert problems == [f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes); line skipped",
                        f"{path}:4: a metrics line needs an integer 'step'; line skipped"]


def test_steps_come_from_the_listing_and_kind_from_the_config(gui_run):
    (gui_run / "rollouts" / "notes.txt").write_text("not a step")
    view = RunView(gui_run)
    assert view.steps() == [1, 2] and view.kind() == "gui_grounding"
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        RunView(gui_run / "nope")


def test_sorting_and_tables(gui_run):
    rollouts = RunView(gui_run).rollouts(1)
    totals = lambda order: [s.total for s in tables.chosen_samples(rollouts, tables.ALL_GROUPS, order)]  # noqa: E731
    assert totals("failures first") == [0.1, 0.5, 1.2, 1.9]
    assert totals("best first") == [1.9, 1.2, 0.5, 0.1]
    assert totals("as logged") == [1.2, 0.1, 1.9, 0.5]
    samples = tables.chosen_samples(rollouts, "0: click the red button", "best first")
    frame = tables.sample_frame(rollouts, samples)
    assert list(frame.columns) == ["group", "sample", "total", "advantage", "format", "point", "length",
                                   "truncated", "text"]
    assert frame.iloc[0].to_dict() == {"group": 0, "sample": 2, "total": 1.9, "advantage": 0.975, "format": 1.0,
                                       "point": 0.9, "length": 5, "truncated": "no", "text": "(10, 10)"}
    assert frame.iloc[2]["truncated"] == "yes"  # sample 3, the last of the group, was cut off
    rewards = tables.reward_frame(samples[0])
    assert rewards.values.tolist() == [["reward: point", "0.9"], ["reward: format", "1.0"], ["total", "1.9"],
                                       ["advantage", "0.975"], ["length", "5"], ["truncated", "no"]]
    summary = tables.summary_frame(rollouts, RunView(gui_run).rollouts(2))
    assert summary.values.tolist()[2] == ["total (mean)", "0.925", "1.725"]


def test_plot_frames_are_long_form(gui_run):
    frames, problems = Viewer(gui_run).plot_frames()
    reward, kl, length, components = frames
    assert problems == ""
    assert reward.values.tolist() == [[1, 0.925, "reward/mean"], [1, 0.5, "reward/std"],
                                      [2, 1.725, "reward/mean"], [2, 0.5, "reward/std"]]
    assert kl["value"].tolist() == [0.01, 0.02] and set(components["series"]) == {"reward/point", "reward/format"}
    assert length["value"].tolist() == [5.0, 5.0]


def test_gaussian_overlay_is_the_point_reward(gui_run):
    box, alpha = [10.0, 12.0, 30.0, 28.0], 0.5
    field = gaussian_field(40, 40, box, alpha)
    for x, y in ((19, 19), (0, 0), (29, 13), (35, 20)):
        assert field[y, x] == pytest.approx(gaussian_point((x + 0.5, y + 0.5), box, alpha), rel=1e-12)


def test_gui_renderer_draws_truth_and_prediction(gui_run):
    view = RunView(gui_run)
    rollouts = view.rollouts(1)
    sample = rollouts.samples()[0]  # "(5, 6)" in seen pixels, scale 2 -> (10, 12) original: the box corner
    image = np.asarray(render_gui(view, rollouts.groups[0], sample, {"alpha": 0.5}))
    k = 448 // 40 + 1  # 40 px enlarged by a whole factor to at least 448
    assert image.shape == (40 * k, 40 * k, 3)
    assert tuple(image[20 * k, 10 * k]) == (30, 170, 60)  # the green ground-truth box's left edge
    assert tuple(image[12 * k, 10 * k + 8]) == (220, 40, 40)  # the red cross through the predicted point
    centre, corner = image[20 * k + k // 2, 20 * k + k // 2].astype(int), image[2, 2].astype(int)
    assert centre[0] > corner[0] - 5 and centre[2] < corner[2] - 100  # orange field at the centre, grey far off


def test_a_record_pointing_outside_the_run_is_refused_not_shown(gui_run, tmp_path):
    path = gui_run / "rollouts" / "step_000001.jsonl"
    record = json.loads(path.read_text())
    record["media"]["images"] = ["../data/shot.png"]
    path.write_text(json.dumps(record) + "\n")
    viewer = Viewer(gui_run)
    rollouts = viewer.rollouts(1)
    picture, prompt, completion, rewards, notes = viewer.sample_view(rollouts, rollouts.samples()[0])
    assert picture is None and "outside the run directory" in notes and completion == "(5, 6)"
    assert rewards is not None and prompt.startswith("click the red button")


def test_a_corrupt_image_is_a_message(gui_run):
    media = next((gui_run / "media").iterdir())
    media.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    viewer = Viewer(gui_run)
    rollouts = viewer.rollouts(1)
    picture, *_, notes = viewer.sample_view(rollouts, rollouts.samples()[0])
    assert picture is None and markdown_literal("cannot draw this sample: cannot read image") in notes
    assert markdown_literal(media.name) in notes  # notes are Markdown: names from the run are escaped


def test_diffusion_renderer_marks_best_worst_and_selected(tmp_path):
    root = tmp_path / "run"
    (root / "rollouts" / "step_000001").mkdir(parents=True)
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]
    for i, c in enumerate(colours):
        Image.new("RGB", (32, 32), c).save(root / "rollouts" / "step_000001" / f"{i:04d}.png")
    group = {"step": 1, "kind": "diffusion", "prompt": "a cat",
             "images": [f"rollouts/step_000001/{i:04d}.png" for i in range(3)] + [None],
             "rewards": {"jpeg": [0.1, 0.9, 0.5, 0.3]}, "total": [0.1, 0.9, 0.5, 0.3], "advantages": None}
    (root / "rollouts" / "step_000001.jsonl").write_text(json.dumps(group) + "\n")
    (root / "config.json").write_text(json.dumps({"algorithm": "ddpo"}))
    view = RunView(root)
    rollouts = view.rollouts(1)
    samples = rollouts.samples()
    assert [s.image for s in samples][:3] == group["images"][:3] and samples[0].completion is None
    grid = np.asarray(render_diffusion(view, rollouts.groups[0], samples[2], {}))
    cell = 32 * 8 + 12  # tiles are contained in 256 px, plus a 6 px margin each side
    assert grid.shape[1] == 4 * cell
    assert tuple(grid[2, cell + 2]) == (30, 170, 60)  # image 1 (best) framed green
    assert tuple(grid[2, 2]) == (220, 40, 40)  # image 0 (worst) framed red
    assert tuple(grid[2, 2 * cell + 2]) == (40, 110, 230)  # the selected image 2 framed blue
    assert tuple(grid[100, 2 * cell + 100]) == (0, 0, 250)  # and its pixels are shown
    assert view.kind() == "diffusion"


@pytest.mark.slow
def test_video_renderer_shows_frames_and_both_intervals(tmp_path):
    pytest.importorskip("decord")
    from tasks.synthetic_video import generate

    annotations = generate(tmp_path / "data", 1, seed=0, duration=(4.0, 4.0), min_event=1.0)
    video = next((tmp_path / "data" / "videos").iterdir())
    run = RunDir(tmp_path / "run")
    sample = Sample(id="v", prompt="when does it move?", videos=[str(video)],
                    fields={"gt_interval": [1.0, 2.0], "duration": 4.0})
    run.log_rollouts(1, [Group(sample, ["<answer>2.0 - 4.0</answer>", "no idea"], {"iou": [0.0, 0.0]}, [0.0, 0.0],
                               [0.0, 0.0], [False, False], [9, 3], [True, True])])
    view = RunView(run.root)
    rollouts = view.rollouts(1)
    strip = np.asarray(render_video(view, rollouts.groups[0], rollouts.samples()[0], {}))
    assert annotations.exists() and strip.shape[0] == 96 + 16 + 56 + 12
    top, left = 96 + 16 + 8, 4 + TIMELINE_LABELS  # the timeline spans [left, width - 4] for 4 seconds
    width = strip.shape[1] - 4 - left
    green = [x for x in range(strip.shape[1]) if tuple(strip[top + 6, x]) == (30, 170, 60)]
    red = [x for x in range(strip.shape[1]) if tuple(strip[top + 24, x]) == (220, 40, 40)]
    assert green and red
    assert min(green) == pytest.approx(left + width / 4, abs=2) and max(green) == pytest.approx(left + width / 2, abs=2)
    assert min(red) == pytest.approx(left + width / 2, abs=2) and max(red) == pytest.approx(left + width, abs=2)


def test_curves_are_thinned_from_the_last_step():
    rows = [{"step": s, "reward/mean": float(s)} for s in range(1, 1001)]
    kept = tables.thin(rows)
    assert len(kept) == 250 and kept[-1]["step"] == 1000 and kept[0]["step"] == 4
    assert {b["step"] - a["step"] for a, b in zip(kept, kept[1:])} == {4}
    assert tables.thin(rows[:7]) == rows[:7] and tables.thin([]) == []
    frame = tables.plot_frame(rows, tables.PLOTS["reward"][1])
    assert frame["step"].tolist() == [r["step"] for r in kept]
