"""Detection and REC rewards (Vision-R1, DIP-R1, VLM-R1) against hand-computed numbers: geometry, Hungarian and
count matching, the progressive thresholds, the completion-level rewards, and adversarial model output.

Hand-value conventions used throughout:
* two 10x10 boxes with y in [0, 10] whose x1 differ by d < 10: inter = (10 - d)*10, union = 200 - inter,
  hull = (10 + d)*10 = union, so IoU = GIoU = (10 - d)/(10 + d), and the L1 distance is 2d;
* a box [0, 0, 10, h] nested in GT = [0, 0, 10, 10]: IoU = 10h/100 = h/10.
"""
import json
import math
import time

import pytest

from rewards.detection import (
    COORD_LIMIT,
    MAX_FAILED_OBJECTS,
    STAGES,
    SWITCH_STEP,
    Detection,
    count_matches,
    detection_precision,
    detection_recall,
    dip_accuracy_reward,
    dip_format_reward,
    dual_format_reward,
    giou,
    hungarian_match,
    iou_matrix,
    parse_detections,
    parse_single_box,
    precision_reward,
    rec_correct,
    rec_iou_reward,
    recall_reward,
    stage_thresholds,
    threshold_map,
    weighted_precision_recall,
)
from rewards.gui import box_iou

GT = [0, 0, 10, 10]
NAN = float("nan")
INF = float("inf")


def det(box, label="a", score=None):
    return Detection(tuple(float(v) for v in box), label, score)


def short(value):
    """A readable test id for a long parameter."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def dets(*items):
    """A completion: the JSON list of ``(box, label)`` items."""
    return json.dumps([{"bbox_2d": list(box), "label": label} for box, label in items])


# -- geometry --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b", "iou", "g"),
    [
        # overlapping: inter = 5*5 = 25, union = 100 + 100 - 25 = 175, hull = 15*15 = 225
        # IoU = 25/175 = 1/7; GIoU = 1/7 - (225 - 175)/225 = 1/7 - 2/9 = -5/63
        ([0, 0, 10, 10], [5, 5, 15, 15], 1 / 7, -5 / 63),
        # side by side, disjoint: union = 200, hull = 30*10 = 300; GIoU = 0 - (300 - 200)/300 = -1/3
        ([0, 0, 10, 10], [20, 0, 30, 10], 0.0, -1 / 3),
        # far apart diagonally: union = 1 + 1 = 2, hull = 10*10 = 100; GIoU = 0 - 98/100 = -0.98
        ([0, 0, 1, 1], [9, 9, 10, 10], 0.0, -0.98),
        # nested: inter = 2*2 = 4, union = hull = 100; IoU = GIoU = 4/100
        ([0, 0, 10, 10], [2, 2, 4, 4], 0.04, 0.04),
        # touching edges: inter = 0, union = hull = 200; IoU = GIoU = 0
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0, 0.0),
        # identical: IoU = 100/100, hull = union -> GIoU = 1
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0, 1.0),
        # shifted by d = 2.5 along x: inter = 7.5*10 = 75, union = 125 = hull; IoU = GIoU = 75/125 = 0.6
        ([0, 0, 10, 10], [2.5, 0, 12.5, 10], 0.6, 0.6),
        # zero-area identical points: union = 0 and hull = 0 -> both terms 0
        ([3, 3, 3, 3], [3, 3, 3, 3], 0.0, 0.0),
        # zero-area identical lines: union = 0, hull = 10*0 = 0 -> 0
        ([0, 0, 10, 0], [0, 0, 10, 0], 0.0, 0.0),
        # zero-area point inside a box: inter = 0, union = hull = 100 -> 0
        ([5, 5, 5, 5], [0, 0, 10, 10], 0.0, 0.0),
        # zero-area point outside: union = 100, hull = 20*20 = 400; GIoU = 0 - 300/400 = -0.75
        ([20, 20, 20, 20], [0, 0, 10, 10], 0.0, -0.75),
    ],
)
def test_iou_and_giou_hand_values(a, b, iou, g):
    for x, y in ((a, b), (b, a)):  # both are symmetric
        assert box_iou(x, y) == pytest.approx(iou)
        assert giou(x, y) == pytest.approx(g)


def test_iou_matrix_values_and_shapes():
    pred = [[0, 0, 10, 10], [2, 2, 4, 4]]
    gt = [[5, 5, 15, 15], [0, 0, 10, 10]]
    # row 0: 1/7 (25/175) and 1 (identical); row 1: [2, 4] and [5, 15] do not overlap -> 0, nested 4/100
    assert iou_matrix(pred, gt).ravel().tolist() == pytest.approx([1 / 7, 1.0, 0.0, 0.04])
    assert iou_matrix([], gt).shape == (0, 2)
    assert iou_matrix(pred, []).shape == (2, 0)
    # overflowing areas: (1e200)^2 = inf, union = inf + inf - inf = NaN -> 0, not NaN (and not 1)
    huge = [0, 0, 1e200, 1e200]
    assert iou_matrix([huge], [huge]).tolist() == [[0.0]]


# -- threshold map and schedule --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("u", "lo", "hi", "expected"),
    [
        # f(u) = 0 if u < lo, 1 if u > hi, else u; first stage lo = .5, hi = .75
        (0.0, 0.5, 0.75, 0.0),
        (0.4999, 0.5, 0.75, 0.0),  # just below lo -> 0
        (0.5, 0.5, 0.75, 0.5),  # u = lo is kept: f = u = .5
        (0.6, 0.5, 0.75, 0.6),
        (0.75, 0.5, 0.75, 0.75),  # u = hi is kept: f = u = .75
        (0.7501, 0.5, 0.75, 1.0),  # just above hi -> 1
        (1.0, 0.5, 0.75, 1.0),
        # second stage lo = .75, hi = .9
        (0.7499, 0.75, 0.9, 0.0),
        (0.75, 0.75, 0.9, 0.75),
        (0.8, 0.75, 0.9, 0.8),
        (0.9, 0.75, 0.9, 0.9),
        (0.9001, 0.75, 0.9, 1.0),
    ],
)
def test_threshold_map_edges(u, lo, hi, expected):
    assert threshold_map(u, lo, hi) == expected


def test_stage_thresholds():
    first, second = (0.5, 0.75, 0.5), (0.75, 0.9, 0.75)
    assert STAGES == (first, second) and SWITCH_STEP == 1500
    assert stage_thresholds(None) == first  # outside training
    assert stage_thresholds(None, 1000, switch_fraction=0.5) == first
    assert stage_thresholds(0) == first
    assert stage_thresholds(1499) == first
    assert stage_thresholds(1500) == second  # from the switch step on
    assert stage_thresholds(10**6) == second
    assert stage_thresholds(9, switch_step=10) == first
    assert stage_thresholds(10, switch_step=10) == second
    # switch = switch_fraction * total_steps = 0.5 * 1000 = 500 (instead of 1500)
    assert stage_thresholds(499, 1000, switch_fraction=0.5) == first
    assert stage_thresholds(500, 1000, switch_fraction=0.5) == second
    assert stage_thresholds(600, 1000, switch_fraction=0.5) == second
    # a fraction without total_steps (None or 0) falls back to switch_step = 1500
    assert stage_thresholds(600, None, switch_fraction=0.5) == first
    assert stage_thresholds(600, 0, switch_fraction=0.5) == first
    assert stage_thresholds(1500, None, switch_fraction=0.5) == second
    # total_steps without a fraction: switch_step still decides
    assert stage_thresholds(600, 1000) == first


# -- matching --------------------------------------------------------------------------------------------------------
def test_hungarian_is_optimal_where_greedy_is_not():
    # 10x10 boxes along x (see the module docstring): g0 x1 = 0, g1 x1 = 4; p0 x1 = 1, p1 x1 = -4
    gt = [[0, 0, 10, 10], [4, 0, 14, 10]]
    pred = [det([1, 0, 11, 10]), det([-4, 0, 6, 10])]
    # C = L1 + 1[label !=] - GIoU, L1 = 2d, GIoU = (10 - d)/(10 + d):
    # C00 (d=1) = 2 - 9/11 ~ 1.18   C01 (d=3) = 6 - 7/13 ~ 5.46
    # C10 (d=4) = 8 - 6/14 ~ 7.57   C11 (d=8) = 16 - 2/18 ~ 15.89
    # greedy takes the cheapest C00 first, then C11: total ~ 17.07; optimal C01 + C10 ~ 13.03
    assert sorted(hungarian_match(pred, gt, ["a", "a"])) == [(0, 1), (1, 0)]
    # precision = (f(7/13) + f(3/7))/M = (7/13 + 0)/2 (M = 2 pairs) = 7/26 (7/13 ~ .54 in [.5, .75], 3/7 ~ .43 < .5)
    # (greedy pairs would give (f(9/11) + f(1/9))/2 = (1 + 0)/2)
    assert detection_precision(pred, gt, ["a", "a"]) == pytest.approx(7 / 26)
    # recall = #(IoU >= .5)/G = #{7/13}/2 = 1/2
    assert detection_recall(pred, gt, ["a", "a"]) == pytest.approx(0.5)
    # second stage: f(7/13) = 0 (< .75) -> 0/2; no IoU >= .75 -> 0/2
    assert detection_precision(pred, gt, ["a", "a"], 0.75, 0.9) == 0.0
    assert detection_recall(pred, gt, ["a", "a"], 0.75) == 0.0


def test_hungarian_class_term_decides():
    # g0 = [0, 0, 10, 10] "cat", g1 shifted by d = .25 "dog"; the predictions carry the swapped labels
    gt, labels = [[0, 0, 10, 10], [0.25, 0, 10.25, 10]], ["cat", "dog"]
    pred = [det([0, 0, 10, 10], "dog"), det([0.25, 0, 10.25, 10], "cat")]
    # C00 = C11 = 0 + 1 - 1 = 0; C01 = C10 = L1 + 0 - GIoU = 2*.25 - 9.75/10.25 = 0.5 - 39/41
    # identity: 0 + 0 = 0; swap: 2*(0.5 - 39/41) = -37/41 < 0 -> swap
    assert sorted(hungarian_match(pred, gt, labels)) == [(0, 1), (1, 0)]
    # without the label term (all labels equal): identity = -1 - 1 = -2 < swap = 1 - 78/41 -> identity
    same = [det(p.box, "cat") for p in pred]
    assert sorted(hungarian_match(same, gt, ["cat", "cat"])) == [(0, 0), (1, 1)]
    # swapped pairs have equal labels, IoU 39/41 ~ .95 > hi (.75 and .9): precision = (1 + 1)/2, recall = 2/2
    assert detection_precision(pred, gt, labels) == 1.0
    assert detection_precision(pred, gt, labels, 0.75, 0.9) == 1.0
    assert detection_recall(pred, gt, labels, 0.75) == 1.0


def test_label_mismatch_scores_zero():
    # one pair, identical boxes, different labels: matched (the only choice), contributes IoU 0
    pred, gt = [det(GT, "dog")], [GT]
    assert hungarian_match(pred, gt, ["cat"]) == [(0, 0)]
    assert detection_precision(pred, gt, ["cat"]) == 0.0  # f(0)/1
    assert detection_recall(pred, gt, ["cat"]) == 0.0  # 0/1
    assert count_matches(pred, gt, ["cat"]) == 0  # same label only
    # geometry outweighs the label term: cat at g0 / dog at g1 = [20, 0, 30, 10], predicted with swapped labels
    gt2, labels2 = [GT, [20, 0, 30, 10]], ["cat", "dog"]
    pred2 = [det(GT, "dog"), det([20, 0, 30, 10], "cat")]
    # C00 = C11 = 0 + 1 - 1 = 0; C01 = C10 = 40 + 0 - (-1/3) -> identity (cost 0) beats swap (~80.7)
    assert sorted(hungarian_match(pred2, gt2, labels2)) == [(0, 0), (1, 1)]
    assert detection_precision(pred2, gt2, labels2) == 0.0  # (0 + 0)/2: both pairs' labels differ
    assert detection_recall(pred2, gt2, labels2) == 0.0  # 0/2
    # the count matching pairs by label instead: p0-g1 and p1-g0 have IoU 0 -> no hit
    assert count_matches(pred2, gt2, labels2) == 0


def test_hungarian_edge_sizes():
    assert hungarian_match([], [GT], ["a"]) == []
    assert hungarian_match([det(GT)], [], []) == []
    # 3 predictions, 1 GT: min(P, G) = 1 pair, the cheapest (identical box, cost 0 - 1 = -1)
    pred = [det([50, 50, 60, 60]), det(GT), det([1, 0, 11, 10])]
    assert hungarian_match(pred, [GT], ["a"]) == [(1, 0)]
    # boxes and labels of different lengths are a malformed field: refused, never matched against garbage
    with pytest.raises(ValueError):
        hungarian_match([det(GT)], [GT, [100, 100, 110, 110]], ["a"])


def test_count_matches_is_maximum_matching():
    gt = [[0, 0, 10, 10], [4, 0, 14, 10]]
    # p0 x1 = 1: IoU g0 = 9/11 ~ .82, IoU g1 (d=3) = 7/13 ~ .54; p1 x1 = -3: IoU g0 (d=3) = 7/13, g1 (d=7) = 3/17
    pred = [det([1, 0, 11, 10]), det([-3, 0, 7, 10])]
    # valid (IoU >= .5, same label): p0-g0, p0-g1, p1-g0. Greedy by best IoU takes p0-g0 and strands p1 -> 1;
    # the maximum matching p0-g1, p1-g0 -> 2
    assert count_matches(pred, gt, ["a", "a"]) == 2
    # threshold .6: only p0-g0 (9/11) is valid -> 1
    assert count_matches(pred, gt, ["a", "a"], threshold=0.6) == 1
    # p1 labelled "b": only p0's pairs are valid -> 1
    assert count_matches([pred[0], det(pred[1].box, "b")], gt, ["a", "a"]) == 1
    # IoU exactly at the threshold counts: [0, 0, 10, 5] in GT -> IoU 50/100 = .5 >= .5
    assert count_matches([det([0, 0, 10, 5])], [GT], ["a"]) == 1
    assert count_matches([det([0, 0, 10, 5])], [GT], ["a"], threshold=0.51) == 0
    assert count_matches([], [GT], ["a"]) == 0
    assert count_matches([det(GT)], [], []) == 0
    # DIP-R1: w*TP/P + (1 - w)*TP/G = .5*2/2 + .5*2/2 = 1
    assert weighted_precision_recall(pred, gt, ["a", "a"]) == pytest.approx(1.0)
    # a third (duplicate) prediction: TP stays 2 (G = 2) -> .5*2/3 + .5*2/2 = 5/6
    assert weighted_precision_recall(pred + [pred[0]], gt, ["a", "a"]) == pytest.approx(5 / 6)


# -- Vision-R1 precision / recall ------------------------------------------------------------------------------------
THREE_GT = [[0, 0, 10, 10], [100, 0, 110, 10], [200, 0, 210, 10]]
# nested [x, 0, x + 10, h] in each: IoU = h/10 = .6, .8, .95
THREE_PRED = [det([0, 0, 10, 6]), det([100, 0, 110, 8]), det([200, 0, 210, 9.5])]


def test_precision_recall_both_stages():
    labels = ["a"] * 3
    # first stage (lo, hi) = (.5, .75): Σ f / P = (.6 + 1 + 1)/3 = 13/15
    assert detection_precision(THREE_PRED, THREE_GT, labels) == pytest.approx(13 / 15)
    # second stage (.75, .9): (0 + .8 + 1)/3 = 0.6
    assert detection_precision(THREE_PRED, THREE_GT, labels, 0.75, 0.9) == pytest.approx(0.6)
    # recall, hit .5: #{.6, .8, .95}/3 = 1; hit .75: #{.8, .95}/3 = 2/3
    assert detection_recall(THREE_PRED, THREE_GT, labels) == 1.0
    assert detection_recall(THREE_PRED, THREE_GT, labels, 0.75) == pytest.approx(2 / 3)
    # recall hit is inclusive: IoU exactly .75 ([0, 0, 10, 7.5] -> 75/100) hits at .75
    assert detection_recall([det([0, 0, 10, 7.5])], [GT], ["a"], 0.75) == 1.0
    assert detection_recall([det([0, 0, 10, 7.4])], [GT], ["a"], 0.75) == 0.0  # .74 < .75


def test_duplicates_do_not_lower_vision_r1_rewards_but_lower_dip_r1():
    one, two = [det(GT)], [det(GT), det(GT)]
    assert detection_precision(one, [GT], ["a"]) == 1.0  # f(1)/1
    # only one of the duplicates is matched (M = min(P, G) = 1): f(1)/M = 1/1, as in the reference code
    assert detection_precision(two, [GT], ["a"]) == 1.0
    assert detection_recall(two, [GT], ["a"]) == 1.0  # 1 hit / G = 1/1, as without the duplicate
    # DIP-R1: TP = 1 -> .5*1/2 + .5*1/1 = .75
    assert weighted_precision_recall(two, [GT], ["a"]) == pytest.approx(0.75)


def test_empty_cases():
    # nothing predicted, nothing there: perfect
    assert detection_precision([], [], []) == 1.0
    assert detection_recall([], [], []) == 1.0
    assert weighted_precision_recall([], [], []) == 1.0  # .5*1 + .5*1
    # nothing predicted on an image with objects
    assert detection_precision([], [GT], ["a"]) == 0.0
    assert detection_recall([], [GT], ["a"]) == 0.0  # 0/1
    assert weighted_precision_recall([], [GT], ["a"]) == 0.0  # .5*0 + .5*0/1
    # boxes on an empty image
    assert detection_precision([det(GT)], [], []) == 0.0  # no pair on an image without objects
    assert detection_recall([det(GT)], [], []) == 0.0
    assert weighted_precision_recall([det(GT)], [], []) == 0.0  # .5*0/1 + .5*0


def test_huge_and_non_finite_boxes_match_as_worst_choice():
    # a clamped huge box (1e100 = COORD_LIMIT) and an exact one for one GT: the exact one is matched
    huge = det([0, 0, COORD_LIMIT, COORD_LIMIT])
    assert hungarian_match([huge, det(GT)], [GT], ["a"]) == [(1, 0)]
    # precision = f(1)/M = 1/1: the huge box is the unmatched one (M = min(P, G) = 1 pair)
    assert detection_precision([huge, det(GT)], [GT], ["a"]) == 1.0
    # alone it is still matched (its cost 2e100 - 20 - GIoU is clipped to COST_CAP); IoU = 100/1e200 -> f = 0
    assert hungarian_match([huge], [GT], ["a"]) == [(0, 0)]
    assert detection_precision([huge], [GT], ["a"]) == 0.0
    # inf and NaN coordinates (e.g. after an overflowing scale): costs inf / NaN are clipped, the solver still
    # runs (scipy refuses inf-only or NaN matrices), and the finite box wins
    for bad in (det([0, 0, INF, INF]), det([NAN, 0, 10, 10])):
        assert hungarian_match([bad], [GT], ["a"]) == [(0, 0)]
        assert hungarian_match([bad, det(GT)], [GT], ["a"]) == [(1, 0)]
        assert detection_precision([bad], [GT], ["a"]) == 0.0  # IoU inter/inf = 0 or NaN union -> 0
        assert detection_recall([bad], [GT], ["a"]) == 0.0
        assert count_matches([bad], [GT], ["a"]) == 0
        assert math.isfinite(giou(bad.box, GT))


# -- parsing ---------------------------------------------------------------------------------------------------------
ONE = '[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]'
CAT = Detection((1.0, 2.0, 3.0, 4.0), "cat")


@pytest.mark.parametrize(
    "text",
    [
        ONE,  # bare JSON
        "```json\n" + ONE + "\n```",  # fenced
        "```\n" + ONE + "\n```",  # fence without a language
        "Here you go:\n```json\n" + ONE + "\n```\nDone.",
        "```json\n" + ONE,  # unclosed fence
        ONE + "\n```",  # a stray fence after the JSON
        '{"bbox_2d": [1, 2, 3, 4], "label": "cat"}',  # a single object is a list of one
        '[{"bbox_2d": [1, 2, 3, 4], "label": "  cat "}]',  # the label is stripped
        '[\n  {\n    "bbox_2d": [1.0, 2.0, 3.0, 4.0],\n    "label": "cat"\n  }\n]',
        "<think>maybe [{\"bbox_2d\": [0, 0, 9, 9], \"label\": \"dog\"}]</think><answer>" + ONE + "</answer>",
        '<answer>[{"bbox_2d": [0, 0, 9, 9], "label": "dog"}]</answer> ... <answer>' + ONE + "</answer>",  # last
        "<answer>" + ONE + '</answer> <answer>[{"bbox_2d": [0, 0, 9, 9], "label": "dog"}]',  # unclosed: ignored
        "<answer>```json\n" + ONE + "\n```</answer>",
    ],
    ids=short,
)
def test_parse_detections_accepted_forms(text):
    assert parse_detections(text) == ([CAT], True)


@pytest.mark.parametrize(
    "text",
    [
        ONE + " That is all [see above].",  # trailing text after the JSON value
        "```python\nprint('no json')\n```\n" + ONE,  # a fence without JSON: the rest of the text
        "The objects [listed below]: " + ONE,  # a bracket that is not JSON before the list
        "<answer>Found: " + ONE + "</answer>",
        "```json\n" + ONE + " and more\n```",  # text beside the JSON inside its fence
    ],
    ids=short,
)
def test_parse_detections_text_around_the_json_keeps_the_boxes_but_not_the_format(text):
    # the boxes are read; Vision-R1's format check parses the whole output as JSON, so the format is not rewarded
    assert parse_detections(text) == ([CAT], False)
    assert dual_format_reward([text], gt_boxes=[[[1, 2, 3, 4]]]) == [0.0]


def test_parse_detections_score_and_edges():
    scored = '[{"bbox_2d": [1, 2, 3, 4], "label": "cat", "score": 0.9}]'
    assert parse_detections(scored) == ([Detection((1.0, 2.0, 3.0, 4.0), "cat", 0.9)], True)
    assert parse_detections("[]") == ([], True)  # the answer for an empty image
    assert parse_detections("```json\n[]\n```") == ([], True)
    # zero-area boxes (x1 == x2) are well ordered and kept
    assert parse_detections('[{"bbox_2d": [5, 5, 5, 9], "label": "a"}]') == ([det([5, 5, 5, 9])], True)
    # negative coordinates are finite and ordered: kept
    assert parse_detections('[{"bbox_2d": [-4, -3, 2, 1], "label": "a"}]') == ([det([-4, -3, 2, 1])], True)


@pytest.mark.parametrize(
    "text",
    [
        None,
        42,
        ["[]"],
        b"[]",
        "",
        "no boxes here",
        "[1, 2, 3, 4]",  # a list of numbers
        "[[1, 2, 3, 4]]",
        '{"objects": [{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]}',  # an object that is not a detection
        "[" * 1100,  # deeper than the decoder's recursion limit, unclosed
        '{"a": ' * 1100,
        "```json\n```",
    ],
    ids=short,
)
def test_parse_detections_rejects(text):
    assert parse_detections(text) == ([], False)


@pytest.mark.parametrize(
    "bad",
    [
        '{"bbox_2d": [1, 2, 3, 4]}',  # no label
        '{"label": "a"}',  # no box
        '{"bbox_2d": [1, 2, 3, 4], "label": 5}',  # label not a str
        '{"bbox_2d": [1, 2, 3, 4], "label": null}',
        '{"bbox_2d": [1, 2, 3], "label": "a"}',  # 3 numbers
        '{"bbox_2d": [1, 2, 3, 4, 5], "label": "a"}',
        '{"bbox_2d": "1, 2, 3, 4", "label": "a"}',
        '{"bbox_2d": ["1", 2, 3, 4], "label": "a"}',  # a number as a string
        '{"bbox_2d": [true, 2, 3, 4], "label": "a"}',  # a bool is not a number
        '{"bbox_2d": [30, 2, 10, 4], "label": "a"}',  # x2 < x1
        '{"bbox_2d": [1, 40, 3, 4], "label": "a"}',  # y2 < y1
        '{"bbox_2d": [NaN, 2, 3, 4], "label": "a"}',  # the NaN literal
        '{"bbox_2d": [1, 2, Infinity, 4], "label": "a"}',
        '{"bbox_2d": [1, 2, 1e400, 4], "label": "a"}',  # overflows to inf
        '{"bbox_2d": [1, 2, 1' + "0" * 400 + ', 4], "label": "a"}',  # an int too large for a float
        '{"bbox_2d": [1, 2, 3, 4], "label": "a", "score": "high"}',
        '{"bbox_2d": [1, 2, 3, 4], "label": "a", "score": NaN}',
        '{"bbox_2d": [1, 2, 3, 4], "label": "a", "score": true}',
        "7",
        '"cat"',
    ],
    ids=short,
)
def test_parse_detections_drops_invalid_items(bad):
    assert parse_detections("[" + bad + "]") == ([], False)
    # next to a valid item: the valid one is kept, the output is not well formed
    assert parse_detections("[" + ONE[1:-1] + ", " + bad + "]") == ([CAT], False)
    # (a list that does not start with an object is passed over: the object inside it is read, with text around it)
    assert parse_detections("[" + bad + ", " + ONE[1:-1] + "]") == ([CAT], False)


def test_parse_detections_clamps_huge_coordinates():
    found, ok = parse_detections('[{"bbox_2d": [-1e300, 0, 1e300, 5], "label": "a"}]')
    assert ok and found == [det([-COORD_LIMIT, 0, COORD_LIMIT, 5])]  # ±1e300 -> ±1e100


# -- completion-level rewards ----------------------------------------------------------------------------------------
def test_rewards_map_answer_units_to_original_pixels():
    text = dets(([0, 0, 5, 20], "a"))
    gt_boxes, gt_labels = [[GT], [GT]], [["a"], ["a"]]
    # scale [2, .5]: [0*2, 0*.5, 5*2, 20*.5] = [0, 0, 10, 10] = GT -> IoU 1
    # scale [1, 1]: [0, 0, 5, 20] vs GT: inter 5*10 = 50, union 100 + 100 - 50 = 150 -> IoU 1/3
    scale = [[2, 0.5], [1, 1]]
    fields = dict(gt_boxes=gt_boxes, gt_labels=gt_labels, scale=scale)
    assert precision_reward([text, text], **fields) == [1.0, 0.0]  # f(1)/1 = 1; f(1/3) = 0 (< .5)
    assert recall_reward([text, text], **fields) == [1.0, 0.0]  # 1 >= .5; 1/3 < .5
    assert dip_accuracy_reward([text, text], **fields) == [1.0, 0.0]  # .5*1/1 + .5*1/1; TP = 0
    # REC: IoU 1 and 1/3
    assert rec_iou_reward([text, text], gt_box=[GT, GT], scale=scale) == pytest.approx([1.0, 1 / 3])


def test_precision_recall_rewards_switch_stage_with_step():
    # [0, 0, 10, 8] in GT: IoU .8 -> first stage f = 1 (> .75), second stage f = .8 (in [.75, .9])
    # [0, 0, 10, 6] in GT: IoU .6 -> hit at .5, not at .75
    p8, p6 = dets(([0, 0, 10, 8], "a")), dets(([0, 0, 10, 6], "a"))
    steps = [None, 0, 1499, 1500, 10**6]
    n = len(steps)
    fields = dict(gt_boxes=[[GT]] * n, gt_labels=[["a"]] * n, scale=[[1, 1]] * n, step=steps)
    assert precision_reward([p8] * n, **fields) == pytest.approx([1.0, 1.0, 1.0, 0.8, 0.8])
    assert recall_reward([p6] * n, **fields) == [1.0, 1.0, 1.0, 0.0, 0.0]
    # first stage precision of IoU .6: f(.6) = .6; second: 0 (< .75)
    assert precision_reward([p6] * n, **fields) == pytest.approx([0.6, 0.6, 0.6, 0.0, 0.0])
    # switch = switch_fraction * total_steps = .5 * 1000 = 500
    two = dict(gt_boxes=[[GT]] * 2, gt_labels=[["a"]] * 2, scale=[[1, 1]] * 2)
    frac = dict(step=[499, 500], total_steps=[1000, 1000], switch_fraction=0.5)
    assert precision_reward([p8, p8], **two, **frac) == pytest.approx([1.0, 0.8])
    assert recall_reward([p6, p6], **two, **frac) == [1.0, 0.0]
    # switch_step bound by the caller
    assert precision_reward([p8, p8], **two, step=[9, 10], switch_step=10) == pytest.approx([1.0, 0.8])
    # no step field (evaluation): the first stage
    assert precision_reward([p8, p6], **two) == pytest.approx([1.0, 0.6])


def test_rewards_duplicates_and_empty_cases():
    exact = dets((GT, "a"))
    dup = dets((GT, "a"), (GT, "a"))
    completions = [exact, dup, "[]", "[]", exact, "```json\n[]\n```"]
    gt_boxes = [[GT], [GT], [], [GT], [], []]
    n = len(completions)
    fields = dict(gt_boxes=gt_boxes, gt_labels=[["a"] * len(g) for g in gt_boxes], scale=[[1, 1]] * n)
    # exact: 1/1; duplicate: f(1)/M = 1/1; [] on empty: 1; [] on objects: 0; boxes on empty: 0; fenced []: 1
    assert precision_reward(completions, **fields) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    # recall: 1/1; duplicate 1/1 (unchanged); 1; 0/1; 0; 1
    assert recall_reward(completions, **fields) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    # dual format: well formed and (empty == no objects)
    assert dual_format_reward(completions, **fields) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    # DIP-R1 .5*TP/P + .5*TP/G: 1; .5*1/2 + .5*1/1 = .75; 1 (both empty); 0; 0; 1
    assert dip_accuracy_reward(completions, **fields) == [1.0, 0.75, 1.0, 0.0, 0.0, 1.0]


def test_rewards_label_mismatch_and_partial_output():
    wrong_label = dets((GT, "dog"))
    # a valid item and an invalid one (x2 < x1): the valid one is scored, the output is not well formed
    partial = '[{"bbox_2d": [0, 0, 10, 10], "label": "a"}, {"bbox_2d": [10, 0, 0, 10], "label": "a"}]'
    far = dets(([50, 50, 60, 60], "a"))  # well formed, wrong place
    completions = [wrong_label, partial, far]
    fields = dict(gt_boxes=[[GT]] * 3, gt_labels=[["a"]] * 3, scale=[[1, 1]] * 3)
    # wrong label: IoU 1 counts 0; partial: the one kept box is exact, P = 1 -> 1/1; far: IoU 0 -> 0
    assert precision_reward(completions, **fields) == [0.0, 1.0, 0.0]
    assert recall_reward(completions, **fields) == [0.0, 1.0, 0.0]
    assert dip_accuracy_reward(completions, **fields) == [0.0, 1.0, 0.0]
    # format: the mismatched label is well formed; partial is not; far is well formed (format only)
    assert dual_format_reward(completions, **fields) == [1.0, 0.0, 1.0]


def test_dual_format_reward():
    completions = [
        "[]",  # empty image answered with [] -> 1
        "[]",  # objects present -> 0
        dets(([99, 99, 100, 100], "z")),  # any well-formed non-empty list on an image with objects -> 1
        dets((GT, "a")),  # boxes on an empty image -> 0
        "no objects",  # not JSON -> 0 even on an empty image
        "[1, 2, 3, 4]",  # not detections -> 0
        '{"bbox_2d": [0, 0, 10, 10], "label": "a"}',  # a single object -> 1
        None,
    ]
    gt_boxes = [[], [GT], [GT], [], [], [GT], [GT], [GT]]
    assert dual_format_reward(completions, gt_boxes=gt_boxes) == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_dip_accuracy_reward_weight_and_threshold():
    dup = dets((GT, "a"), (GT, "a"))  # TP = 1, P = 2, G = 1
    p6 = dets(([0, 0, 10, 6], "a"))  # IoU .6
    fields = dict(gt_boxes=[[GT]] * 2, gt_labels=[["a"]] * 2, scale=[[1, 1]] * 2)
    # w = 1: TP/P = 1/2; w = 0: TP/G = 1/1; w = .25: .25*1/2 + .75*1 = .875
    assert dip_accuracy_reward([dup, p6], **fields, weight=1.0) == [0.5, 1.0]
    assert dip_accuracy_reward([dup, p6], **fields, weight=0.0) == [1.0, 1.0]
    assert dip_accuracy_reward([dup], **{k: v[:1] for k, v in fields.items()}, weight=0.25) == [0.875]
    # tau = .7: IoU .6 is not a TP -> 0; tau = .6: .6 >= .6 -> 1
    assert dip_accuracy_reward([dup, p6], **fields, threshold=0.7) == [0.75, 0.0]
    assert dip_accuracy_reward([dup, p6], **fields, threshold=0.6) == [0.75, 1.0]
    for bad in (dict(weight=1.5), dict(weight=-0.1), dict(threshold=0.0), dict(threshold=1.5)):
        with pytest.raises(ValueError):
            dip_accuracy_reward([dup], **{k: v[:1] for k, v in fields.items()}, **bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>a</think><look>b</look><answer>c</answer>", 1.0),
        ("  <think>\nreason\n</think>\n<look>observe</look>\n\n<answer>[]</answer>\n", 1.0),
        ("<think>a</think><answer>c</answer>", 0.0),  # no look
        ("<look>b</look><think>a</think><answer>c</answer>", 0.0),  # wrong order
        ("<think></think><look>b</look><answer>c</answer>", 0.0),  # empty part
        ("<think>a</think><look>b</look><answer></answer>", 0.0),
        ("<think>a</think><look>b</look><answer>c</answer> trailing", 0.0),
        ("prefix <think>a</think><look>b</look><answer>c</answer>", 0.0),
        ("<think>a</think><look>b</look><answer>c</answer><answer>d</answer>", 0.0),  # two answers
        ("<think>a</think><look>b</look><think>x</think><look>y</look><answer>c</answer>", 0.0),  # repeated
        ("<think>a</think><look>b<answer>c</answer></look><answer>c</answer>", 0.0),  # nested tag
        ("<THINK>a</THINK><LOOK>b</LOOK><ANSWER>c</ANSWER>", 0.0),  # tags are lower-case
        (None, 0.0),
        ([{"role": "assistant", "content": "<think>a</think><look>b</look><answer>c</answer>"}], 1.0),
    ],
)
def test_dip_format_reward(text, expected):
    assert dip_format_reward([text]) == [expected]


def test_rec_iou_reward_and_single_box():
    gt = [5, 5, 15, 15]
    completions = [
        dets((GT, "x")),  # IoU(GT, gt) = 25/175 = 1/7
        "[0, 0, 10, 10]",  # a bare box: 1/7
        "<answer>[5, 5, 15, 15]</answer>",  # 1
        dets(([2.5, 10, 7.5, 30], "x")),  # scale [2, .5] -> [5, 5, 15, 15]: 1
        dets((GT, "x"), (gt, "x")),  # the first box only: 1/7
        '[{"bbox_2d": [5, 5, 15, 15]}]',  # no label: not a detection, parse_box finds the box -> 1
        "(10, 10)",  # a point is no box -> 0
        "no box",  # 0
        '[{"bbox_2d": [NaN, 5, 15, 15], "label": "x"}]',  # dropped; parse_box rejects nan -> 0
        '[{"bbox_2d": [5, 5, 1e400, 15], "label": "x"}]',  # inf: dropped and rejected -> 0
    ]
    scale = [[1, 1]] * 3 + [[2, 0.5]] + [[1, 1]] * 6
    out = rec_iou_reward(completions, gt_box=[gt] * len(completions), scale=scale)
    assert out == pytest.approx([1 / 7, 1 / 7, 1.0, 1.0, 1 / 7, 1.0, 0.0, 0.0, 0.0, 0.0])
    # 1e300 is clamped to 1e100: [5, 5, 1e100, 15] vs gt: inter = 10*10 = 100, union = 10*(1e100 - 5) + 100 - 100
    # -> IoU = 100/1e101 ~ 1e-99: tiny, finite, no error
    (tiny,) = rec_iou_reward(['[{"bbox_2d": [5, 5, 1e300, 15], "label": "x"}]'], gt_box=[gt], scale=[[1, 1]])
    assert tiny == pytest.approx(1e-99, rel=1e-9) and not rec_correct(tiny)
    assert parse_single_box(dets((GT, "x"))) == [0.0, 0.0, 10.0, 10.0]
    assert parse_single_box("[30, 40, 10, 20]") == [10.0, 20.0, 30.0, 40.0]  # a bare box is reordered
    assert parse_single_box(None) is None
    assert parse_single_box("nothing") is None


@pytest.mark.parametrize(
    ("iou", "correct"), [(0.0, False), (1 / 7, False), (0.5, False), (0.5000001, True), (1.0, True)]
)
def test_rec_correct_is_strict(iou, correct):
    assert rec_correct(iou) is correct  # IoU > 0.5, strictly


def test_huge_numbers_in_completions():
    huge = '[{"bbox_2d": [0, 0, 1e300, 1e300], "label": "a"}]'  # clamped to [0, 0, 1e100, 1e100]
    inf = '[{"bbox_2d": [0, 0, 1e400, 10], "label": "a"}]'  # inf: dropped
    nan = '[{"bbox_2d": [NaN, 0, 10, 10], "label": "a"}]'  # dropped
    exact_and_huge = '[{"bbox_2d": [0, 0, 10, 10], "label": "a"}, {"bbox_2d": [0, 0, 1e300, 1e300], "label": "a"}]'
    # [0, 0, 1e300, 10] at scale [1e300, 1]: x2 clamped to 1e100, then 1e100 * 1e300 = inf after the mapping
    overflow = '[{"bbox_2d": [0, 0, 1e300, 10], "label": "a"}]'
    completions = [huge, inf, nan, exact_and_huge, overflow]
    n = len(completions)
    fields = dict(gt_boxes=[[GT]] * n, gt_labels=[["a"]] * n, scale=[[1, 1]] * (n - 1) + [[1e300, 1]])
    # huge: IoU = 100/1e200 -> f = 0; inf/nan: no box -> 0; exact + huge: the exact box is the one pair, f(1)/1;
    # overflow: IoU 0
    assert precision_reward(completions, **fields) == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert recall_reward(completions, **fields) == [0.0, 0.0, 0.0, 1.0, 0.0]  # exact + huge: 1/1
    # DIP: TP = 0, except exact + huge: .5*1/2 + .5*1/1 = .75
    assert dip_accuracy_reward(completions, **fields) == [0.0, 0.0, 0.0, 0.75, 0.0]
    # format: the clamped boxes are well formed, the dropped ones are not
    assert dual_format_reward(completions, **fields) == [1.0, 0.0, 0.0, 1.0, 1.0]


# -- robustness ------------------------------------------------------------------------------------------------------
GARBAGE = [
    None,
    42,
    3.5,
    {"bbox_2d": [0, 0, 10, 10], "label": "a"},  # a dict is not a completion
    [],
    [{"role": "assistant"}],
    [{"role": "assistant", "content": None}],
    "",
    "   ",
    "no boxes here",
    "[",
    "{",
    "[" * 1100,
    '{"a": ' * 200,
    "```",
    "```json\n",
    "<answer></answer>",
    "<answer>",
    '{"bbox_2d": "0, 0, 10, 10", "label": "a"}',
    '[{"bbox_2d": [NaN, 0, 10, 10], "label": "a"}]',
    '[{"bbox_2d": [0, 0, Infinity, 10], "label": "a"}]',
    '[{"bbox_2d": [0, 0, -Infinity, 10], "label": "a"}]',
    '[{"bbox_2d": [0, 0, 1e400, 10], "label": "a"}]',
    '[{"bbox_2d": [10, 0, 0, 10], "label": "a"}]',
    '[{"bbox_2d": [0, 0, 10, 10], "label": null}]',
    '[{"bbox_2d": [0, 0, 10], "label": "a"}]',
    '[{"bbox_2d": [true, 0, 10, 10], "label": "a"}]',
    '[{"bbox_2d": [0, 0, 10, 10], "label": "a", "score": NaN}]',
    "\x00\ud800\uffff",
]


def test_rewards_never_raise_nor_return_non_finite_on_garbage():
    n = len(GARBAGE)
    fields = dict(gt_boxes=[[GT]] * n, gt_labels=[["a"]] * n, scale=[[1, 1]] * n, step=[2000] * n)
    # no garbage item holds a valid detection: every Vision-R1 / DIP-R1 score on an image with objects is 0
    for fn in (precision_reward, recall_reward, dual_format_reward, dip_accuracy_reward, dip_format_reward):
        out = fn(GARBAGE, **fields)
        assert len(out) == n and all(math.isfinite(v) for v in out)
        assert out == [0.0] * n, fn.__name__
    # REC falls back to bare boxes (e.g. the reversed bbox_2d is reordered), so some items score; all finite
    rec = rec_iou_reward(GARBAGE, gt_box=[GT] * n, scale=[[1, 1]] * n)
    assert len(rec) == n and all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in rec)
    for text in GARBAGE:
        found, ok = parse_detections(text)
        assert found == [] and ok is False


@pytest.mark.parametrize("piece", ['{"a":', "\\frac{a}{b}"])
def test_brace_heavy_200_kb_text_parses_fast(piece):
    """Found by fuzzing (tests/test_fuzz_rewards.py): 200 KB of nested objects or of LaTeX groups took 1-2 s in
    parse_detections, one failed decode per brace; braces that start no object are now passed over and the search
    gives up after MAX_FAILED_OBJECTS objects that do not decode."""
    text = piece * (200_000 // len(piece))
    started = time.perf_counter()
    assert parse_detections(text) == ([], False)
    assert time.perf_counter() - started < 0.5


def test_json_search_gives_up_after_max_failed_objects():
    answer = dets((GT, "a"))
    assert parse_detections("\\frac{a}{b} " * 100 + answer)[0] != []  # LaTeX groups are not objects
    assert parse_detections('{"a" ' * (MAX_FAILED_OBJECTS - 1) + answer)[0] != []
    assert parse_detections('{"a" ' * MAX_FAILED_OBJECTS + answer)[0] == []


def test_conversational_completions():
    good = dets((GT, "a"))
    completions = [
        [{"role": "assistant", "content": good}],
        [{"role": "user", "content": "find"}, {"role": "assistant", "content": [{"type": "text", "text": good}]}],
    ]
    fields = dict(gt_boxes=[[GT]] * 2, gt_labels=[["a"]] * 2, scale=[[1, 1]] * 2)
    assert precision_reward(completions, **fields) == [1.0, 1.0]  # f(1)/1
    assert recall_reward(completions, **fields) == [1.0, 1.0]
    assert dual_format_reward(completions, **fields) == [1.0, 1.0]
    assert dip_accuracy_reward(completions, **fields) == [1.0, 1.0]
    assert rec_iou_reward(completions, gt_box=[GT] * 2, scale=[[1, 1]] * 2) == [1.0, 1.0]


def test_malformed_fields_score_zero():
    good = dets((GT, "a"))
    completions = [good] * 6
    # items 1-5: no scale, bad scale, labels shorter than boxes, no boxes list, a 3-number GT box
    gt_boxes = [[GT], [GT], [GT], [GT, [20, 0, 30, 10]], None, [[0, 0, 10]]]
    gt_labels = [["a"], ["a"], ["a"], ["a"], ["a"], ["a"]]
    scale = [[1, 1], None, [0, 1], [1, 1], [1, 1], [1, 1]]
    fields = dict(gt_boxes=gt_boxes, gt_labels=gt_labels, scale=scale)
    expected = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # the first is exact: 1
    for fn in (precision_reward, recall_reward, dip_accuracy_reward):
        assert fn(completions, **fields) == expected, fn.__name__
    # fields shorter than completions: the extra completion scores 0
    assert precision_reward([good, good], gt_boxes=[[GT]], gt_labels=[["a"]], scale=[[1, 1]]) == [1.0, 0.0]
    assert rec_iou_reward([good, good], gt_box=[GT, None], scale=[[1, 1], [1, 1]]) == [1.0, 0.0]
