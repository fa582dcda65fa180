"""Parsers of untrusted model text: every accepted form, and adversarial strings that must give None."""
import pytest

from rewards.parsing import answer_region, completion_text, is_exact_box, is_exact_point, parse_box, parse_point


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(10, 20)", (10.0, 20.0)),
        ("[10,20]", (10.0, 20.0)),
        ("10, 20", (10.0, 20.0)),
        ("(12.5, 7)", (12.5, 7.0)),
        ('{"x": 10, "y": 20.5}', (10.0, 20.5)),
        ("pyautogui.click(x=3, y=4)", (3.0, 4.0)),
        ("(1.5e2, 2E1)", (150.0, 20.0)),
        ("(-5, +6.5)", (-5.0, 6.5)),
        # a box gives its centre: ((0+100)/2, (0+50)/2)
        ("[0, 0, 100, 50]", (50.0, 25.0)),
        ("(0, 0, 100, 50)", (50.0, 25.0)),
        # Qwen box: ((10+30)/2, (20+40)/2)
        ("<|box_start|>(10,20),(30,40)<|box_end|>", (20.0, 30.0)),
        ("I will click (7, 8) now", (7.0, 8.0)),
    ],
)
def test_parse_point_forms(text, expected):
    assert parse_point(text) == expected


def test_parse_point_prefers_last_complete_answer():
    assert parse_point("<answer>(1,2)</answer> wait <answer>(3,4)</answer>") == (3.0, 4.0)
    assert parse_point("think (9, 9) <answer>(3,4)</answer>") == (3.0, 4.0)
    assert parse_point("<ANSWER>(9,9)</Answer>") == (9.0, 9.0)
    # nested tags: the innermost answer before the last closing tag
    assert parse_point("<answer>a<answer>(1,2)</answer>(3,4)</answer>") == (1.0, 2.0)
    # an unclosed answer is not an answer: the first group of the whole text counts
    assert parse_point("(5,6) <answer>(1,2)") == (5.0, 6.0)
    # an answer without coordinates is None, even if the reasoning had some
    assert parse_point("(5,6) <answer>none</answer>") is None


def test_parse_point_first_group_wins_and_odd_groups_are_skipped():
    assert parse_point("(1, 2) and (3, 4)") == (1.0, 2.0)
    assert parse_point("step [1] then [1, 2, 3] then (7, 8)") == (7.0, 8.0)
    # 'x1, y1' are words, not numbers
    assert parse_point("format x1, y1: (5, 6)") == (5.0, 6.0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "no numbers here",
        "42",
        "(nan, 5)",
        "(NaN, NaN)",
        "(inf, 3)",
        "[1, 2, -infinity, 4]",
        "(1e400, 5)",  # overflows to inf
        "(" + "9" * 5000 + ", 1)",  # overflows to inf
        "（１２，３４）",  # full-width digits and comma are not accepted
        "<answer></answer>",
        None,
        12,
        ["(1, 2)"],
    ],
)
def test_parse_point_rejects(text):
    assert parse_point(text) is None


def test_parse_point_unicode_around_numbers():
    assert parse_point("点击 (12, 34) ✓ — ok") == (12.0, 34.0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[1, 2, 3, 4]", [1.0, 2.0, 3.0, 4.0]),
        ("(1, 2, 3, 4)", [1.0, 2.0, 3.0, 4.0]),
        ("(1,2),(3,4)", [1.0, 2.0, 3.0, 4.0]),
        ("(1, 2) (3, 4)", [1.0, 2.0, 3.0, 4.0]),
        ("1, 2, 3, 4", [1.0, 2.0, 3.0, 4.0]),  # a bare run of four numbers is a box too
        ('{"bbox_2d": [4, 3, 2, 1], "label": "x"}', [2.0, 1.0, 4.0, 3.0]),  # reordered
        ("[30.5, 40, 10, 20.25]", [10.0, 20.25, 30.5, 40.0]),
        ("point (5, 5) then box [1, 2, 3, 4]", [1.0, 2.0, 3.0, 4.0]),  # points are skipped
        ("<answer>[9,9,9,9]</answer><answer>[1,2,3,4]</answer>", [1.0, 2.0, 3.0, 4.0]),
    ],
)
def test_parse_box_forms(text, expected):
    assert parse_box(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "(1, 2)", "(1, 2) and (3, 4)", "[1, 2, 3]", "[1, 2, nan, 4]", "[1, 2, 3, 1e999]", None, "[1,2,3"],
)
def test_parse_box_rejects(text):
    assert parse_box(text) is None


def test_parsers_are_fast_on_long_adversarial_input():
    # one long comma run (not a 2- or 4-group) and a huge unclosed bracket must neither hang nor raise
    assert parse_point("1, " * 20000) is None
    assert parse_point("[" + "1" * 100000) is None
    assert parse_box("<answer>" * 10000 + "</answer>" * 10000) is None


def test_answer_region():
    assert answer_region("a <answer> b </answer> c") == " b "
    assert answer_region("no tags") == "no tags"
    assert answer_region("stray </answer> tag") == "stray </answer> tag"


def test_completion_text_accepts_trl_conversational_format():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "(1, 2)"}]) == "(1, 2)"
    parts = [{"type": "text", "text": "(1, "}, {"type": "image"}, {"type": "text", "text": "2)"}]
    assert completion_text([{"role": "assistant", "content": parts}]) == "(1, 2)"
    assert completion_text(None) == ""
    assert completion_text([]) == ""
    assert completion_text({"content": "x"}) == ""


@pytest.mark.parametrize(
    "text, point, box",
    [
        ("(12, 34)", True, False),
        ("  (12.5,34)\n", True, False),
        ("[1,2,3,4]", False, True),
        (" [1.5, 2, 3, 4.0] ", False, True),
        ("(1, 2) (3, 4)", False, False),
        ("[1, 2]", False, False),
        ("(1, 2, 3, 4)", False, False),
        ("<answer>(1, 2)</answer>", False, False),
        ("Click (1, 2)", False, False),
        ("(-1, 2)", False, False),
        ("(nan, 2)", False, False),
        ("[1e999, 2, 3, 4]", False, False),
        ("[" + "9" * 400 + ", 2, 3, 4]", False, False),  # float('9'*400) is inf
        ("", False, False),
        (None, False, False),
    ],
)
def test_exact_formats(text, point, box):
    assert is_exact_point(text) is point
    assert is_exact_box(text) is box
