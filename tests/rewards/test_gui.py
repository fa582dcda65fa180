"""GUI-grounding reward math against hand-computed numbers, and the TRL-style completion-level wrappers."""
import math

import pytest

from rewards.gui import (
    box_iou,
    click_in_box,
    click_reward,
    coverage_reward,
    format_reward,
    gaussian_coverage,
    gaussian_point,
    iou_reward,
    point_reward,
    to_original,
)

GT = [0, 0, 100, 50]  # centre (50, 25), w = 100, h = 50; alpha = 0.5 -> sigma_x = 50, sigma_y = 25


def test_gaussian_point_hand_values():
    assert gaussian_point((50, 25), GT) == 1.0  # centre
    # (75, 25): dx = 25, (25/50)^2 = 0.25 -> exp(-0.5 * 0.25) = exp(-0.125)
    assert gaussian_point((75, 25), GT) == pytest.approx(math.exp(-0.125))
    # (60, 35): (10/50)^2 + (10/25)^2 = 0.04 + 0.16 = 0.2 -> exp(-0.1)
    assert gaussian_point((60, 35), GT) == pytest.approx(math.exp(-0.1))
    # right edge (100, 25): (50/50)^2 = 1 -> exp(-0.5)
    assert gaussian_point((100, 25), GT) == pytest.approx(math.exp(-0.5))
    # alpha = 1: sigma_x = 100; (75, 25): (25/100)^2 = 0.0625 -> exp(-0.03125)
    assert gaussian_point((75, 25), GT, alpha=1.0) == pytest.approx(math.exp(-0.03125))
    # corners given in reverse order describe the same box
    assert gaussian_point((75, 25), [100, 50, 0, 0]) == pytest.approx(math.exp(-0.125))


def test_gaussian_point_degenerate_box_uses_sigma_floor():
    assert gaussian_point((10, 10), [10, 10, 10, 10]) == 1.0
    assert gaussian_point((11, 10), [10, 10, 10, 10]) == 0.0  # exp(-0.5 * 1 / 1e-12) underflows
    # a horizontal line [0, 10, 100, 10]: x behaves normally, y is a Dirac
    # (75, 10): (25/50)^2 = 0.25 -> exp(-0.125)
    assert gaussian_point((75, 10), [0, 10, 100, 10]) == pytest.approx(math.exp(-0.125))


def test_gaussian_coverage_identical_and_shifted():
    assert gaussian_coverage(GT, GT) == pytest.approx(1.0)
    # shift by (20, 10), same size: Sigma_p = Sigma_g = Sigma_bar = diag(2500, 625), log term = 0
    # D = 1/8 * (20^2/2500 + 10^2/625) = 1/8 * (0.16 + 0.16) = 0.04
    assert gaussian_coverage([20, 10, 120, 60], GT) == pytest.approx(math.exp(-0.04))


def test_gaussian_coverage_different_size():
    # pred [-50, -25, 150, 75]: same centre (50, 25), w = 200, h = 100 -> Sigma_p = diag(100^2, 50^2)
    # Sigma_bar = diag((10000 + 2500)/2, (2500 + 625)/2) = diag(6250, 1562.5); det = 9765625
    # sqrt(det Sp * det Sg) = sqrt(25e6 * 1562500) = 6.25e6; ratio = 1.5625
    # D = 1/2 ln 1.5625 -> exp(-D) = 1.5625^(-1/2) = 1/1.25 = 0.8
    assert gaussian_coverage([-50, -25, 150, 75], GT) == pytest.approx(0.8)
    # the same box moved to centre (100, 50): dmu = (50, 25)
    # 1/8 * (50^2/6250 + 25^2/1562.5) = 1/8 * (0.4 + 0.4) = 0.1 -> exp(-0.1) * 0.8
    assert gaussian_coverage([0, 0, 200, 100], GT) == pytest.approx(0.8 * math.exp(-0.1))
    # symmetric in its arguments
    assert gaussian_coverage(GT, [0, 0, 200, 100]) == pytest.approx(0.8 * math.exp(-0.1))


def test_gaussian_coverage_degenerate_boxes():
    assert gaussian_coverage([5, 5, 5, 5], [5, 5, 5, 5]) == pytest.approx(1.0)
    assert gaussian_coverage([5, 5, 5, 5], GT) < 1e-3


def test_click_in_box_edges():
    box = [10, 20, 30, 40]
    assert click_in_box((10, 20), box) == 1.0
    assert click_in_box((30, 40), box) == 1.0
    assert click_in_box((20, 30), box) == 1.0
    assert click_in_box((30.001, 40), box) == 0.0
    assert click_in_box((9.999, 25), box) == 0.0
    assert click_in_box((20, 40.5), box) == 0.0


def test_box_iou_hand_values():
    # inter = 5 * 5 = 25; union = 100 + 100 - 25 = 175 -> 1/7
    assert box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(1 / 7)
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert box_iou([3, 3, 3, 3], [3, 3, 3, 3]) == 0.0  # zero union
    # inner box 2x2 inside 10x10: 4 / 100
    assert box_iou([0, 0, 10, 10], [2, 2, 4, 4]) == pytest.approx(0.04)


def test_to_original():
    assert to_original([10, 20], [2, 0.5]) == [20.0, 10.0]
    assert to_original([10, 20, 30, 40], [2, 0.5]) == [20.0, 10.0, 60.0, 20.0]
    for bad in ([0, 1], [1], [1, -2], [float("nan"), 1], "ab"):
        with pytest.raises((ValueError, TypeError)):
            to_original([1, 2], bad)


def test_point_reward_maps_to_original_and_scores_malformed_zero():
    completions = [
        "(75, 25)",  # exp(-0.125)
        "garbage",  # 0
        "[0, 0, 100, 50]",  # box centre (50, 25) -> 1
        None,  # 0
        "(25, 50)",  # seen pixels; scale [2, 0.5] -> (50, 25) -> 1
        [{"role": "assistant", "content": "<answer>(60, 35)</answer>"}],  # exp(-0.1)
    ]
    scale = [[1, 1]] * 4 + [[2, 0.5], [1, 1]]
    out = point_reward(completions, gt_box=[GT] * 6, scale=scale, prompts=["ignored"] * 6)
    assert out == pytest.approx([math.exp(-0.125), 0.0, 1.0, 0.0, 1.0, math.exp(-0.1)])


def test_rewards_never_raise_on_bad_fields():
    completions = ["[50, 0, 100, 50]"] * 5  # box centre (75, 25)
    gt_box = [GT, None, [0, 0, 1], GT, GT]
    scale = [[1, 1], [1, 1], [1, 1], "abc", None]
    # first item well-formed: point exp(-0.125); coverage: w = 50 vs 100, dmu = (25, 0) (hand value below);
    # click: inside -> 1; IoU: 2500 / 5000 = 0.5. Every malformed field item scores 0.
    # coverage: Sp = diag(625, 625), Sg = diag(2500, 625), Sbar = diag(1562.5, 625)
    # det ratio = x: 1562.5 / sqrt(625 * 2500) = 1.25 times y: 625 / sqrt(625 * 625) = 1
    # D = 1/8 * 25^2/1562.5 + 1/2 ln 1.25 = 0.05 + 1/2 ln 1.25
    coverage = math.exp(-0.05) / math.sqrt(1.25)
    expected = {point_reward: math.exp(-0.125), coverage_reward: coverage, click_reward: 1.0, iou_reward: 0.5}
    for fn, first in expected.items():
        assert fn(completions, gt_box=gt_box, scale=scale) == pytest.approx([first, 0.0, 0.0, 0.0, 0.0])
    # fields shorter than completions: the extra completion scores 0
    assert click_reward(["(1, 1)", "(1, 1)"], gt_box=[GT], scale=[[1, 1]]) == [1.0, 0.0]
    assert format_reward(["(1, 2)"], answer_format=[None]) == [0.0]


def test_alpha_is_validated_before_scoring():
    with pytest.raises(ValueError, match="alpha"):
        point_reward(["(1, 2)"], gt_box=[GT], scale=[[1, 1]], alpha=0)
    with pytest.raises(ValueError, match="alpha"):
        coverage_reward(["[1, 2, 3, 4]"], gt_box=[GT], scale=[[1, 1]], alpha=float("nan"))


def test_coverage_reward():
    completions = ["[20, 10, 120, 60]", "(50, 25)", "[10, 20, 60, 120]", "[0, 0, 100, nan]"]
    # 1: shifted box -> exp(-0.04); 2: a point has no box -> 0
    # 3: seen pixels with scale [2, 0.5] -> [20, 10, 120, 60] -> exp(-0.04); 4: non-finite -> 0
    scale = [[1, 1], [1, 1], [2, 0.5], [1, 1]]
    out = coverage_reward(completions, gt_box=[GT] * 4, scale=scale)
    assert out == pytest.approx([math.exp(-0.04), 0.0, math.exp(-0.04), 0.0])
    assert coverage_reward(["[0, 0, 100, 50]"], gt_box=[GT], scale=[[1, 1]], alpha=1.0) == pytest.approx([1.0])


def test_click_reward():
    box = [10, 20, 30, 40]
    completions = ["(10, 20)", "(31, 20)", "(5, 10)", "[0, 0, 10, 10]", "nothing"]
    # 3: (5, 10) * [2, 2] = (10, 20), the corner -> 1; 4: box centre (5, 5) * [2, 2] = (10, 10) -> outside
    scale = [[1, 1], [1, 1], [2, 2], [2, 2], [1, 1]]
    assert click_reward(completions, gt_box=[box] * 5, scale=scale) == [1.0, 0.0, 1.0, 0.0, 0.0]


def test_iou_reward():
    gt = [5, 5, 15, 15]
    completions = ["[0, 0, 10, 10]", "[10, 10, 30, 30]", "(10, 10)"]
    # 1: 1/7 (hand value above); 2: scale 0.5 -> [5, 5, 15, 15] -> 1; 3: a point -> 0
    out = iou_reward(completions, gt_box=[gt] * 3, scale=[[1, 1], [0.5, 0.5], [1, 1]])
    assert out == pytest.approx([1 / 7, 1.0, 0.0])


def test_format_reward():
    completions = [
        "(12, 34)", " (12.5,34) \n", "[1,2,3,4]", "(1,2) (3,4)", "<answer>(1,2)</answer>", "(1,2)", "(1,2)"
    ]
    formats = ["point", "point", "box", "point", "point", "box", "circle"]
    assert format_reward(completions, answer_format=formats) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
