"""Temporal grounding: interval parsing (every accepted form and adversarial outputs), clamping, tIoU and the
TRL-style rewards against hand-computed numbers."""
import functools
import math

import pytest

from rewards.temporal import (
    clamp_interval,
    format_interval,
    format_reward,
    iou_reward,
    parse_interval,
    soft_iou_reward,
    temporal_iou,
)


@pytest.mark.parametrize(
    "text",
    [
        "12.5 to 20.1",
        "12.5 - 20.1",
        "12.5-20.1",
        "12.5 – 20.1",
        "12.5s to 20.1s",
        "12.5 s - 20.1 s",
        "from 12.5 to 20.1 seconds",
        "The person opens the door from 12.5 seconds to 20.1 seconds.",
        "between 12.5 and 20.1",
        "12.5 until 20.1",
        "[12.5, 20.1]",
        "(12.5, 20.1)",
        "[12.5s, 20.1s]",
        '{"start_time": 12.5, "end_time": 20.1}',
        '{"end_time": 20.1, "start_time": 12.5}',
        "{start: 12.5, end: 20.1}",
        "start=12.5, end=20.1",
        "{'Start': '12.5', 'End': '20.1'}",
        "<answer>12.5 to 20.1</answer>",
        "<think>It starts at 3 and ends at 9.</think> <answer>\n[12.5, 20.1]\n</answer>",
        [{"role": "assistant", "content": "<answer>12.5 to 20.1</answer>"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "12.5 "}, {"type": "text", "text": "to 20.1"}]}],
    ],
)
def test_parse_interval_accepted_forms(text):
    assert parse_interval(text) == (12.5, 20.1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20 to 10", (20.0, 10.0)),  # reversed: returned as written
        ("-3 to 5", (-3.0, 5.0)),  # negative start
        ("5 - -3", (5.0, -3.0)),
        ("0 to 99999999999", (0.0, 99999999999.0)),  # finite: the caller clamps
        ("1e1 to 2e1", (10.0, 20.0)),
        ("7 to 9", (7.0, 9.0)),  # integers
        ("<answer>1 to 2</answer> then <answer>3 to 4</answer>", (3.0, 4.0)),  # the last answer wins
        ("<answer>1 to 2</answer> <answer>3 to 4", (1.0, 2.0)),  # unclosed: the last complete one
        ("<answer>5 to 6", (5.0, 6.0)),  # no complete answer: the whole text
        ("<answer><answer>1 to 2</answer>", (1.0, 2.0)),  # nested junk: the innermost
        ("<ANSWER>1 to 2</ANSWER>", (1.0, 2.0)),  # tags case-insensitive
        ("first 1 to 2, later 3 to 4", (1.0, 2.0)),  # the first interval in the region
        ("from 12.5 to 20.1: the person", (12.5, 20.1)),
        ("time:12 to 20", (12.0, 20.0)),  # a colon after a word is no clock time
        ("video_3 to 7 seconds", None),  # "3" is part of a word, "7 seconds" alone is no interval
        ('{"start": 4, "end": 6} or 1 to 2', (4.0, 6.0)),
    ],
)
def test_parse_interval_values(text, expected):
    assert parse_interval(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I cannot tell.",
        "<answer>never</answer> 1 to 2",  # a found answer is never searched past
        "at 12.5 seconds",  # one number
        "12.5, 20.1",  # a bare comma pair is not an interval
        "[1, 2, 3]",
        "from 0:12 to 0:20",  # clock times are not read as numbers
        "12.5 to 20.1abc",  # a number is never cut short (to 20 or 20.)
        "1e400 to 5",  # overflows to inf
        "nan to 5",
        "3 to inf",
        "[nan, 2]",
        '{"start": 1, "start": 2}',  # the same key twice
        None,
        42,
        ["not", "messages"],
        [{"role": "assistant", "content": None}],
    ],
)
def test_parse_interval_rejects(text):
    assert parse_interval(text) is None


def test_parse_interval_linear_on_long_junk():
    assert parse_interval("1" + " " * 200_000 + "x") is None
    assert parse_interval("<answer>" * 10_000 + "2 to 3" + "</answer>" * 10_000) == (2.0, 3.0)


def test_clamp_interval():
    assert clamp_interval((-3.0, 5.0), 30.0) == (0.0, 5.0)
    assert clamp_interval((25.0, 99999999999.0), 30.0) == (25.0, 30.0)
    assert clamp_interval((40.0, 50.0), 30.0) == (30.0, 30.0)  # past the end: zero length, IoU 0
    assert clamp_interval((5.0, 5.0), 30.0) == (5.0, 5.0)
    assert clamp_interval((20.0, 10.0), 30.0) is None  # reversed: invalid, not swapped
    assert clamp_interval((math.nan, 1.0), 30.0) is None
    for unknown in (None, 0, -1.0):  # no usable duration: clamp below only
        assert clamp_interval((-2.0, 1e9), unknown) == (0.0, 1e9)


def test_temporal_iou_hand_values():
    assert temporal_iou((2, 6), (4, 8)) == pytest.approx(2 / 6)  # inter 2, union 4 + 4 - 2 = 6
    assert temporal_iou((0, 10), (2, 4)) == pytest.approx(0.2)  # inside: 2 / 10
    assert temporal_iou((0, 10), (0, 10)) == 1.0
    assert temporal_iou((0, 5), (5, 10)) == 0.0  # touching
    assert temporal_iou((0, 5), (7, 10)) == 0.0  # disjoint
    assert temporal_iou((3, 3), (3, 3)) == 0.0  # zero union
    assert temporal_iou((3, 3), (0, 10)) == 0.0  # degenerate
    assert temporal_iou((6, 2), (2, 6)) == 0.0  # reversed is invalid
    assert temporal_iou((0, math.inf), (0, 10)) == 0.0
    assert temporal_iou((math.nan, 4), (0, 10)) == 0.0
    assert temporal_iou((4, 8), (2, 6)) == temporal_iou((2, 6), (4, 8))


def test_iou_reward():
    completions = [
        "<think>...</think><answer>4 to 8</answer>",  # (4, 8) vs (2, 6): 2/6
        "no idea",  # 0
        "<answer>8 to 4</answer>",  # reversed: 0
        "<answer>-5 to 6</answer>",  # clamped to (0, 6) vs (2, 6): 4/6
        "<answer>2 to 1e400</answer>",  # not finite: 0
        "<answer>2 to 99999999999</answer>",  # clamped to (2, 10) vs (2, 6): 4/8
        "<answer>2 to 99999999999</answer>",  # no duration: (2, 99999999999) vs (2, 6): 4/99999999997
        [{"role": "assistant", "content": "[2, 6]"}],  # exact: 1
        None,  # 0
    ]
    duration = [10.0] * 6 + [None, 10.0, 10.0]
    out = iou_reward(completions, gt_interval=[[2, 6]] * 9, duration=duration, prompts=["ignored"] * 9)
    assert out == pytest.approx([2 / 6, 0.0, 0.0, 4 / 6, 0.0, 0.5, 4 / 99999999997, 1.0, 0.0])


def test_iou_reward_malformed_fields_score_zero():
    completions = ["2 to 6"] * 4
    gt = [[2, 6], None, [2], "ab"]
    assert iou_reward(completions, gt_interval=gt, duration=[10] * 4) == [1.0, 0.0, 0.0, 0.0]
    assert iou_reward(completions, gt_interval=[[2, 6]], duration=[10]) == [1.0, 0.0, 0.0, 0.0]  # short fields


def test_format_reward_think_modes():
    completions = [
        "<answer>12.5 to 20.1</answer>",
        "<think>the door opens late</think>\n<answer>12.5 to 20.1</answer>\n",
        "  <think></think><answer>[1, 2]</answer>  ",
    ]
    assert format_reward(completions, think=[None] * 3) == [1.0, 1.0, 1.0]
    assert format_reward(completions, think=[True] * 3) == [0.0, 1.0, 1.0]
    assert format_reward(completions, think=[False] * 3) == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "text",
    [
        "12.5 to 20.1",  # no tags
        "<answer>20.1 to 12.5</answer>",  # reversed
        "<answer>somewhere</answer>",  # nothing parses
        "<answer>nan to 2</answer>",
        "<answer>1 to 2</answer> extra",  # text after the answer
        "preamble <answer>1 to 2</answer>",  # text before
        "<answer>1 to 2</answer><answer>3 to 4</answer>",  # two answers
        "<think>a</think><think>b</think><answer>1 to 2</answer>",  # two think blocks
        "<answer>1 to 2</answer><think>late</think>",  # think after the answer
        "<think>a <answer>1 to 2</answer></think><answer>1 to 2</answer>",  # a tag inside think
        "<answer>1 to 2",  # unclosed
        "<Answer>1 to 2</Answer>",  # tags must be exact
        None,
    ],
)
def test_format_reward_rejects(text):
    assert format_reward([text], think=[None]) == [0.0]


def test_format_reward_malformed_field():
    assert format_reward(["<answer>1 to 2</answer>"] * 2, think=[None]) == [1.0, 0.0]


def test_soft_iou_reward_hand_values():
    tau = 0.8
    e = math.e
    completions = ["<answer>0 to 10</answer>", "<answer>0 to 5</answer>", "<answer>0 to 9</answer>", "junk"]
    # IoU with (0, 10): 1, 0.5, 0.9 and 0 (unparsable)
    expected = [
        tau + 0.01 * math.log(1.2),  # IoU 1 >= tau: tau + 0.01 ln(1 - 0.8 + 1)
        tau - (math.exp(0.3) - 1) / (e - 1),  # IoU 0.5 < tau: tau - (e^(0.8 - 0.5) - 1)/(e - 1)
        tau + 0.01 * math.log(1.1),  # IoU 0.9
        tau - (math.exp(0.8) - 1) / (e - 1),  # IoU 0: about 0.087, not 0
    ]
    out = soft_iou_reward(completions, gt_interval=[[0, 10]] * 4, duration=[10] * 4)
    assert out == pytest.approx(expected)
    assert isinstance(out, list) and all(isinstance(v, float) for v in out)
    # alpha = 2, IoU 0.5: tau - (e^(2 * 0.3) - 1)/(e^2 - 1)
    steep = functools.partial(soft_iou_reward, alpha=2.0)
    assert steep(completions[1:2], gt_interval=[[0, 10]], duration=[10]) == pytest.approx(
        [tau - (math.exp(0.6) - 1) / (math.exp(2) - 1)]
    )
    # tau = 0.5: IoU 0.5 is at the threshold: 0.5 + 0.01 ln(1) = 0.5
    assert soft_iou_reward(completions[1:2], [[0, 10]], [10], tau=0.5) == pytest.approx([0.5])


def test_soft_iou_reward_validates_hyperparameters():
    for kwargs in ({"alpha": 0}, {"alpha": -1.0}, {"alpha": math.inf}, {"tau": 1.5}, {"tau": math.nan}):
        with pytest.raises(ValueError, match="tau|alpha"):
            soft_iou_reward(["1 to 2"], gt_interval=[[1, 2]], duration=[5], **kwargs)


def test_format_interval_round_trips():
    assert format_interval(12.46, 20.1) == "12.5 to 20.1"
    assert format_interval(0, 3) == "0.0 to 3.0"
    assert parse_interval(f"<answer>{format_interval(3.25, 7.0)}</answer>") == (3.2, 7.0)  # 3.25 rounds to even
    assert format_reward([f"<answer>{format_interval(1, 2)}</answer>"], think=[False]) == [1.0]
