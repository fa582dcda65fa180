"""The ``detection`` renderer (tasks ``detection`` and ``rec``): boxes checked on pixels of a real PNG in a run
directory written by the trainer's writer, captions from Vision-R1's Hungarian matching, and untrusted output."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mmrl.demo.app import Viewer
from mmrl.demo.render import (MIN_SIDE, RENDERERS, detection_captions, predicted_detections, render_detection,
                              renderer_for)
from mmrl.demo.runs import RunView
from mmrl.store import RunDir
from mmrl.types import Group, LoadContext, Sample
from rewards.detection import Detection

GREEN, RED, NOTE = (30, 170, 60), (220, 40, 40), (40, 40, 40)
SIDE = 64
K = -(-MIN_SIDE // SIDE)  # 64 px enlarged by a whole factor to at least 448: 7
GT_BOXES = [[8.0, 8.0, 24.0, 24.0], [36.0, 30.0, 56.0, 50.0]]
GT_LABELS = ["circle", "square"]
# In answer units with scale [2, 2]: the circle exactly, and a "triangle" at [40, 32, 52, 48] original pixels over
# the square (IoU 12·16 / 20·20 = 0.48, labels differ).
GOOD = ('<answer>[{"bbox_2d": [4, 4, 12, 12], "label": "circle"}, '
        '{"bbox_2d": [20, 16, 26, 24], "label": "triangle"}]</answer>')
GARBAGE = [
    "", "junk", "None", "[]", "{}", "[1, 2, 3]", '[{"bbox_2d": "abc", "label": "circle"}]',
    '[{"bbox_2d": [30, 30, 2, 2], "label": "circle"}]',  # corners out of order: not a detection
    '[{"bbox_2d": [1e999, 0, 1, 1], "label": "circle"}]', '[{"bbox_2d": [NaN, 0, 1, 1], "label": "circle"}]',
    '[{"bbox_2d": [1, 2, 3, 4], "label": 7}]', "[" * 2000, '{"bbox_2d": [1, 2, 3, 4]', "<answer></answer>",
]


def _group(image: str, completions: list[str], fields: dict) -> Group:
    sample = Sample(id="3", prompt="Detect every circle, square, triangle in the image.", images=[image],
                    answer="[]", fields=fields)
    n = len(completions)
    return Group(sample, completions, {"precision": [0.0] * n}, [0.0] * n, [0.0] * n, [False] * n, [9] * n,
                 [True] * n)


def _run(tmp_path, completions: list[str], fields: dict, task: str = "detection"):
    """A run written by ``RunDir``: one step, one group, a grey 64 x 64 PNG kept under ``media/``."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    Image.new("RGB", (SIDE, SIDE), (200, 200, 200)).save(data / "shapes.png")
    run = RunDir(tmp_path / "run")
    run.log_rollouts(1, [_group(str(data / "shapes.png"), completions, fields)])
    run.write_json("config.json", {"task": task})
    view = RunView(run.root)
    rollouts = view.rollouts(1)
    return view, rollouts.groups[0], rollouts.samples()


@pytest.fixture
def detection_run(tmp_path):
    fields = {"gt_boxes": GT_BOXES, "gt_labels": GT_LABELS, "scale": [2.0, 2.0], "image_id": 3, "width": SIDE,
              "height": SIDE, "crowd_boxes": [], "crowd_labels": [], "categories": ["circle", "square", "triangle"]}
    return _run(tmp_path, [GOOD, "junk"] + GARBAGE, fields)


def _reds(row: np.ndarray) -> list[int]:
    return [x for x in range(row.shape[0]) if tuple(row[x]) == RED]


def test_boxes_are_drawn_at_their_enlarged_original_pixels(detection_run):
    view, group, samples = detection_run
    image = np.asarray(render_detection(view, group, samples[0], {}))
    assert K == 7 and image.shape == (SIDE * K, SIDE * K, 3)
    assert tuple(image[40 * K, 36 * K]) == GREEN  # the square's left edge (ground truth)
    assert tuple(image[40 * K, 56 * K - 1]) == GREEN  # and its right edge, drawn inward
    assert tuple(image[16 * K, 8 * K]) == RED  # the exact circle prediction drawn over the green truth
    # The triangle: answer x1 = 20, scale 2 -> 40 original px -> 280 enlarged (without the scale it would be 140).
    assert tuple(image[40 * K, 40 * K]) == RED and tuple(image[40 * K, 52 * K - 1]) == RED
    assert min(_reds(image[40 * K, 30 * K:])) + 30 * K == 40 * K
    assert tuple(image[40 * K, 20 * K]) == (200, 200, 200) and tuple(image[31 * K, 46 * K]) == (200, 200, 200)
    assert tuple(image[SIDE * K - 3, 2]) != NOTE  # boxes were parsed: no note


def test_captions_come_from_the_hungarian_match():
    gt_boxes, gt_labels = [[0, 0, 10, 10], [20, 20, 30, 30]], ["circle", "square"]
    pred = [Detection((0, 0, 10, 5), "circle"),  # half the circle: IoU 50 / 100
            Detection((20, 20, 30, 25), "triangle"),  # half the square, wrong label
            Detection((100, 100, 110, 110), "square")]  # a third prediction for two objects
    assert detection_captions(pred, gt_boxes, gt_labels) == [
        "circle IoU 0.50", "triangle IoU 0.50 label \u2260", "square unmatched"]
    # The matching is Vision-R1's (L1 + label + GIoU cost), not the best IoU: the far box stays unmatched even though
    # it carries the right label.
    assert detection_captions(pred[::-1], gt_boxes, gt_labels)[0] == "square unmatched"
    assert detection_captions([], gt_boxes, gt_labels) == []
    assert detection_captions(pred[:1], [], []) == ["circle unmatched"]
    # REC: the first box is the one scored (rec_iou_reward), labels are free text and not compared.
    assert detection_captions(pred[1:], [[20, 20, 30, 30]], ["the box on the right"], rec=True) == [
        "triangle IoU 0.50", "square unmatched"]
    ragged = Detection((0, 0, 10, 10), "a\nvery " + "long " * 20 + "label")
    assert detection_captions([ragged], [], []) == ["a very long long long long long long lo\u2026 unmatched"]


def test_predictions_are_mapped_with_scale():
    assert predicted_detections(GOOD, [2, 2]) == [Detection((8.0, 8.0, 24.0, 24.0), "circle"),
                                                 Detection((40.0, 32.0, 52.0, 48.0), "triangle")]
    assert predicted_detections("[2, 3, 4, 6]", [2, 3]) == []  # a bare box is only an answer for REC
    assert predicted_detections("[2, 3, 4, 6]", [2, 3], rec=True) == [Detection((4.0, 9.0, 8.0, 18.0), "")]
    for scale in ([0, 1], [1], "ab", 5, [1, "x"], [float("inf"), 1]):
        with pytest.raises(ValueError):
            predicted_detections(GOOD, scale)


def test_garbage_output_draws_the_truth_and_a_note(detection_run):
    view, group, samples = detection_run
    for sample in samples[1:]:
        image = np.asarray(render_detection(view, group, sample, {}))
        assert image.shape == (SIDE * K, SIDE * K, 3), sample.completion[:40]
        assert tuple(image[40 * K, 36 * K]) == GREEN and not _reds(image[40 * K])
        assert tuple(image[SIDE * K - 3, 2]) == NOTE  # "no boxes parsed"


def test_bad_records_and_boxes_far_outside_are_drawn_without_raising(tmp_path):
    far = ('[{"bbox_2d": [-1e90, -1e90, 1e90, 1e90], "label": "circle"}, '
           '{"bbox_2d": [900, 900, 1e300, 1e300], "label": "x"}]')
    fields = {"gt_boxes": GT_BOXES + [[1, 2, "x", 4], None], "gt_labels": ["circle"], "scale": [2.0, 2.0]}
    view, group, samples = _run(tmp_path, [far, GOOD], fields)
    image = np.asarray(render_detection(view, group, samples[0], {}))
    assert tuple(image[30 * K, 0]) == RED and tuple(image[0, 30 * K]) == RED  # clipped to the picture's border
    assert tuple(image[SIDE * K - 1, 30 * K]) == RED and tuple(image[30 * K, SIDE * K - 1]) == RED
    assert tuple(image[40 * K, 36 * K]) == GREEN  # the square, drawn though its label is missing
    for bad in ({"gt_boxes": "nope", "scale": "ab"}, {"scale": [0, 0]}, {"gt_boxes": [[1, 2, 3, 4]], "scale": 5}):
        group["fields"] = bad
        image = np.asarray(render_detection(view, group, samples[1], {}))
        assert tuple(image[SIDE * K - 3, 2]) == NOTE  # "bad scale in the record" (or nothing to draw)
    group["fields"] = None
    assert render_detection(view, group, samples[1], {}).size == (SIDE * K, SIDE * K)


def test_rec_falls_back_to_a_bare_box(tmp_path):
    fields = {"gt_box": [8.0, 8.0, 24.0, 24.0], "gt_boxes": [[8.0, 8.0, 24.0, 24.0]],
              "gt_labels": ["the circle at the top left"], "scale": [2.0, 2.0], "expression": "the circle"}
    view, group, samples = _run(tmp_path, ["<answer>[12, 4, 20, 12]</answer>", "no idea"], fields, task="rec")
    image = np.asarray(render_detection(view, group, samples[0], {}))
    assert tuple(image[16 * K, 8 * K]) == GREEN and tuple(image[16 * K, 24 * K]) == RED  # x 24..40 original
    assert min(_reds(image[16 * K])) == 24 * K
    assert tuple(np.asarray(render_detection(view, group, samples[1], {}))[SIDE * K - 3, 2]) == NOTE


def test_renderer_is_chosen_for_both_tasks_and_by_fields(detection_run):
    view, group, samples = detection_run
    assert "detection" in RENDERERS and RENDERERS.capability("detection", "legend").startswith("green: ground-truth")
    assert renderer_for("detection", group) == "detection" and renderer_for("rec", group) == "detection"
    assert renderer_for("not_installed", group) == "detection"  # a record with gt_boxes
    assert renderer_for("not_installed", {"fields": {"gt_box": [1, 2, 3, 4]}}) == "gui"
    picture, _, completion, _, notes = Viewer(view.root).sample_view(view.rollouts(1), samples[0])
    assert picture is not None and completion == GOOD and "IoU of its Hungarian match" in notes


def test_a_record_made_by_the_detection_task_renders_its_answer_exactly(tmp_path):
    from mmrl.eval.detection_format import DetectionRecord
    from tasks.detection import CocoDetection, DetectionData

    Image.new("RGB", (SIDE, SIDE), (200, 200, 200)).save(tmp_path / "img.png")
    record = DetectionRecord(3, str(tmp_path / "img.png"), SIDE, SIDE, GT_BOXES, GT_LABELS, "instances.json")
    ctx = LoadContext(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28, cache_dir=str(tmp_path), coords="0-1000")
    sample, = CocoDetection().samples_from_records(([record], GT_LABELS), DetectionData(), ctx)
    fields = json.loads(json.dumps(sample.fields))  # as the rollout file stores them
    pred = predicted_detections(sample.answer, fields["scale"])
    assert sorted(d.box for d in pred) == [pytest.approx(tuple(b), abs=0.05) for b in GT_BOXES]  # 0-1000 rounding
    assert sorted(detection_captions(pred, fields["gt_boxes"], fields["gt_labels"])) == [
        "circle IoU 1.00", "square IoU 1.00"]
