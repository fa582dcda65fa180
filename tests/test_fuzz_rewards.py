"""Property-based fuzzing (Hypothesis) of every parser and completion-level reward of the text tasks (issue 23).

Model output is untrusted, so for each reward (GUI grounding, temporal grounding, detection and REC, caption QA with
a scripted and the rule judge, the caption length guard) and each parser, on grammar-aware generated completions:
it never raises, returns one finite value per completion within its documented range, is deterministic (two calls
agree), and is fast: every reward is also timed on 200 KB completions built by repeating adversarial pieces, at most
1 s per completion (catastrophic regex backtracking or a quadratic scan shows up there as seconds).

The generated text mixes numbers in every form (huge and tiny exponents, ``-0``, ``nan``, ``inf``, ``1_000``,
non-ASCII digits, ints with hundreds of digits), brackets and boxes, answer/think/look tags, JSON fragments (valid
detections with extreme coordinates among them), code fences, unicode and control characters. A batch of
``BATCH`` completions per example (``DRAWN`` drawn ones and concatenations of pairs of them) and ``EXAMPLES``
examples give ``BATCH * EXAMPLES`` (>= 10,000) completions for every reward and parser; ``derandomize`` makes the
run the same in every CI job (about a minute on one core).

Non-string completions (``None``, ints, lists, TRL's conversational messages) are fed to the rewards built on
``rewards.parsing.score_each`` and to the caption QA reward, whose contracts accept any item; ``length_reward``
(``tasks/caption_qa.py``) is fuzzed on strings only: the trainer always passes strings, and a reward that raises
is counted as failed by ``mmrl.rollout.scoring`` rather than ending the run.

CAD's rewards run the completion's script in the sandbox, so only what needs no sandbox is fuzzed: the code
extraction (``extract_code``) and the scores of a (untrusted, JSON) measurement.
"""
from __future__ import annotations

import json
import math
import time
from functools import partial

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards import cad, detection, gui, temporal
from rewards.caption_qa import LETTERS, CaptionQAReward, parse_letter
from rewards.parsing import (
    answer_region,
    completion_text,
    is_exact_box,
    is_exact_point,
    parse_box,
    parse_point,
)
from tasks.caption_qa import length_reward
from tasks.synthetic_scenes import RuleJudge

BATCH = 50
EXAMPLES = 200
assert BATCH * EXAMPLES >= 10_000  # the minimum number of completions per reward
HUGE = 200_000
"""Length in characters of the timed adversarial completions."""
SECONDS_PER_COMPLETION = 1.0

SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=SLOW_DATA)

# -- the grammar ------------------------------------------------------------------------------------------------------
ODD_NUMBERS = ["-0", "+0", "0", "-0.0", "nan", "NaN", "-nan", "inf", "-inf", "+Infinity", "infinity", "1e308",
               "1e309", "-1e309", "1e-400", "4.9e-324", "1e99999", "1E+5", "1_000", "0x1F", ".5", "5.", "-.5e-3",
               "1.2.3", "1e", "e5", "--1", "+-1", "1" * 400, "0" * 300 + "7", "١٢٣", "５", "½", "²", "1,5", "3:14",
               "12.5s", "7 sec", "9 seconds"]
numbers = st.one_of(
    st.sampled_from(ODD_NUMBERS),
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-2000, max_value=2000).map(lambda x: f"{x:.2f}"),
    st.builds(lambda m, e: f"{m}e{e}", st.integers(-999, 999), st.integers(-100_000, 100_000)),
)
WORDS = ["[", "]", "(", ")", "{", "}", ",", ", ", ":", ";", ".", "-", "–", "—", "~", '"', "'", "\n", "\t", " ",
         "to", "until", "and", "from", "start", "end", "start_time", "end_time", '"start_time":', "end=", "x", "y",
         "x=", "y=", '"x":', '"y":', "bbox_2d", '"bbox_2d":', '"label":', '"score":', "s", "sec", "seconds", "A", "B",
         "I", "A red", "Answer:", "(C)", "**D**", "I'm", "```", "```json\n", "```python\n", "<answer>", "</answer>",
         "<think>", "</think>", "<look>", "</look>", "<ANSWER>", "</Answer>", "<answer", "answer>", "\\frac{a}{b}",
         "row", "circle", "red", "two", "shapes", "\x00", "\x1b[31m", "\r\n", "\u202e", "\ufeff", "\ud7ff", "💥",
         "show_object(", "import cadquery as cq"]
CONTROL = st.characters(min_codepoint=0, max_codepoint=0x1F)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**400, max_value=10**400) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["bbox_2d", "label", "score", "x"]),
                                                                inner, max_size=3),
    max_leaves=8,
)
coordinate = st.one_of(st.integers(min_value=-10**400, max_value=10**400), st.floats(),
                       st.floats(min_value=-50, max_value=200))
detection_json = st.lists(
    st.fixed_dictionaries({"bbox_2d": st.lists(coordinate, min_size=3, max_size=5),
                           "label": st.sampled_from(["a", "b", 3])}, optional={"score": coordinate}),
    max_size=4,
).map(lambda items: json.dumps(items))  # json.dumps writes NaN, Infinity and huge ints
fragment = st.one_of(
    numbers, numbers, numbers, st.sampled_from(WORDS), st.sampled_from(WORDS), st.text(max_size=6), CONTROL,
    json_values.map(lambda v: json.dumps(v)), detection_json,
    st.builds("({}, {})".format, numbers, numbers),
    st.builds("[{}, {}, {}, {}]".format, numbers, numbers, numbers, numbers),
    st.builds("({}, {}), ({}, {})".format, numbers, numbers, numbers, numbers),
    st.builds("{} to {}".format, numbers, numbers),
    st.builds('{{"start_time": {}, "end_time": {}}}'.format, numbers, numbers),
)
text_completions = st.lists(fragment, max_size=16).map("".join)
"""Token soup: fragments of every grammar the parsers know, joined without separators."""
templated = st.one_of(
    st.builds("<think>{}</think><answer>{}</answer>".format, text_completions, text_completions),
    st.builds("<think>{}</think>\n<look>{}</look>\n<answer>{}</answer>".format,
              text_completions, text_completions, text_completions),
    st.builds("<answer>```json\n{}\n```</answer>".format, detection_json),
    st.builds("{}```python\n{}\n```{}".format, text_completions, text_completions, text_completions),
)
"""Nearly well-formed answers, so that the scoring code past the parsers runs on extreme numbers too."""
strings = st.one_of(
    text_completions, text_completions, templated,
    st.builds(lambda s, n: (s * n)[:5_000], text_completions, st.integers(1, 500)),  # long, repetitive
)
completion_items = st.one_of(
    strings, strings, strings, strings, st.none(), st.integers(), st.lists(st.integers(), max_size=3),
    strings.map(lambda s: [{"role": "assistant", "content": s}]),
    strings.map(lambda s: [{"role": "assistant", "content": [{"type": "text", "text": s}, {"type": "image"}]}]),
)
"""What a reward may receive as one completion: mostly text, sometimes not a string at all."""
DRAWN = 10
"""Completions drawn per example; the batch adds ``BATCH - DRAWN`` concatenations of pairs of them (drawing all
``BATCH`` would exceed the data Hypothesis draws per example)."""
PAIRS = [(i, (i + k) % DRAWN) for k in range(1, (BATCH - DRAWN) // DRAWN + 1) for i in range(DRAWN)]
assert DRAWN + len(PAIRS) == BATCH


@st.composite
def item_batches(draw) -> list:
    """``BATCH`` completions: ``DRAWN`` drawn ones (any items) and the texts of pairs of them joined."""
    drawn = draw(st.lists(completion_items, min_size=DRAWN, max_size=DRAWN))
    return drawn + [completion_text(drawn[i]) + completion_text(drawn[j]) for i, j in PAIRS]


# -- valid per-sample fields ---------------------------------------------------------------------------------------
GT_BOX = [[10.0, 20.0, 110.0, 70.0]]
SCALE = [[1.5, 0.75]]
GT_BOXES = [[[10.0, 20.0, 110.0, 70.0], [0.0, 0.0, 5.0, 5.0]]]
QA = [[{"question": "What colour is the circle?", "choices": ["red", "green", "blue"], "answer": "A"},
       {"question": "How many shapes are there?", "choices": ["1", "2", "3", "4"], "answer": 1},
       {"question": "What is left of the red circle?", "choices": ["nothing", "the blue star"], "answer": "nothing"}]]


class ScriptedJudge:
    """Answers with the letter of the first option that occurs in the caption, else the last option's letter."""

    def answer(self, queries):
        return [LETTERS[next((i for i, o in enumerate(q.options) if o in q.caption), len(q.options) - 1)]
                for q in queries]


def fields(n: int, **columns: list) -> dict[str, list]:
    """Every column (one item) repeated for a batch of ``n`` completions."""
    return {k: v * n for k, v in columns.items()}


def caption_qa(judge, completions, **kw):
    """The caption QA reward with a fresh cache (so that a second call asks the judge again)."""
    return CaptionQAReward(judge, k=4)(completions, **fields(len(completions), qa=QA, qa_key=["img"]), **kw)


SOFT = temporal.tempsamp_transform(torch.tensor([0.0, 1.0], dtype=torch.float64), 0.8, 1.0).tolist()
REWARDS = {  # name: (reward of a list of completions, documented range, accepts non-string items)
    "gui.point": (lambda c: gui.point_reward(c, **fields(len(c), gt_box=GT_BOX, scale=SCALE)), (0, 1), True),
    "gui.coverage": (lambda c: gui.coverage_reward(c, **fields(len(c), gt_box=GT_BOX, scale=SCALE)), (0, 1), True),
    "gui.click": (lambda c: gui.click_reward(c, **fields(len(c), gt_box=GT_BOX, scale=SCALE)), (0, 1), True),
    "gui.iou": (lambda c: gui.iou_reward(c, **fields(len(c), gt_box=GT_BOX, scale=SCALE)), (0, 1), True),
    "gui.format.point": (lambda c: gui.format_reward(c, **fields(len(c), answer_format=["point"])), (0, 1), True),
    "gui.format.box": (lambda c: gui.format_reward(c, **fields(len(c), answer_format=["box"])), (0, 1), True),
    "temporal.iou": (lambda c: temporal.iou_reward(c, **fields(len(c), gt_interval=[[2.0, 7.5]], duration=[30.0])),
                     (0, 1), True),
    "temporal.soft_iou": (lambda c: temporal.soft_iou_reward(
        c, **fields(len(c), gt_interval=[[2.0, 7.5]], duration=[30.0])), tuple(SOFT), True),
    "temporal.format": (lambda c: temporal.format_reward(c, **fields(len(c), think=[None])), (0, 1), True),
    "temporal.format.think": (lambda c: temporal.format_reward(c, **fields(len(c), think=[True])), (0, 1), True),
    "detection.precision": (lambda c: detection.precision_reward(
        c, **fields(len(c), gt_boxes=GT_BOXES, gt_labels=[["a", "b"]], scale=SCALE, step=[2000])), (0, 1), True),
    "detection.recall": (lambda c: detection.recall_reward(
        c, **fields(len(c), gt_boxes=GT_BOXES, gt_labels=[["a", "b"]], scale=SCALE)), (0, 1), True),
    "detection.format": (lambda c: detection.dual_format_reward(c, **fields(len(c), gt_boxes=GT_BOXES)), (0, 1), True),
    "detection.format.empty": (lambda c: detection.dual_format_reward(c, **fields(len(c), gt_boxes=[[]])), (0, 1),
                               True),
    "detection.dip_accuracy": (lambda c: detection.dip_accuracy_reward(
        c, **fields(len(c), gt_boxes=GT_BOXES, gt_labels=[["a", "b"]], scale=SCALE)), (0, 1), True),
    "detection.dip_format": (detection.dip_format_reward, (0, 1), True),
    "rec.iou": (lambda c: detection.rec_iou_reward(c, **fields(len(c), gt_box=GT_BOX, scale=SCALE)), (0, 1), True),
    "caption_qa.scripted": (partial(caption_qa, ScriptedJudge()), (0, 1), True),
    "caption_qa.rule": (partial(caption_qa, RuleJudge()), (0, 1), True),
    "caption_qa.length": (partial(length_reward, max_words=20), (-1, 0), False),
}


def check_reward(name: str, completions: list) -> None:
    """The reward ``name`` on ``completions``: one finite value each within its range, the same twice, in time."""
    reward, (lo, hi), _ = REWARDS[name]
    started = time.perf_counter()
    first = reward(completions)
    elapsed = time.perf_counter() - started
    assert elapsed < SECONDS_PER_COMPLETION * len(completions), f"{name}: {elapsed:.2f} s"
    assert isinstance(first, list) and len(first) == len(completions), name
    for value, completion in zip(first, completions):
        assert isinstance(value, (int, float)) and math.isfinite(value), (name, value, completion)
        assert lo <= value <= hi, (name, value, completion)
    assert reward(completions) == first, name


# -- the rewards ------------------------------------------------------------------------------------------------------
@FUZZ
@given(item_batches())
def test_rewards_on_any_items(completions):
    for name, (_, _, any_item) in REWARDS.items():
        check_reward(name, completions if any_item else [completion_text(c) for c in completions])


@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=SLOW_DATA)
@given(st.lists(st.one_of(fragment, st.sampled_from(WORDS)), min_size=1, max_size=6).map("".join).filter(bool))
def test_rewards_are_fast_on_200_kb(piece):
    """One 200 KB completion (``piece`` repeated) per reward call: no reward may take a second on it."""
    huge = (piece * (HUGE // len(piece) + 1))[:HUGE]
    for name in REWARDS:
        check_reward(name, [huge])


ADVERSARIAL = ['{"a":', '{"a":[' + "1," * 50, "[{", "1,", "(1,", "[1", "1e", "1.", "<answer>", "<think>", "```",
               "```\n", "x=1,", "start=1,", "1 to ", "1s to 1s ", "0:1", " ", "1 ,", "nan,", "A ", "<answer>(1, 2",
               "<think>a</think><look>b", "\\frac{a}{b}", "{" * 3 + '"k":']


def test_rewards_are_fast_on_known_adversarial_200_kb():
    """The pieces that once were or could be slow (nested JSON objects took seconds in ``parse_detections``)."""
    for piece in ADVERSARIAL:
        huge = (piece * (HUGE // len(piece) + 1))[:HUGE]
        for name in REWARDS:
            check_reward(name, [huge])


# -- the parsers ------------------------------------------------------------------------------------------------------
def finite(values) -> bool:
    """Whether every value is a finite float."""
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


@FUZZ
@given(item_batches())
def test_parsers_on_any_items(items):
    for item in items:
        text = completion_text(item)
        assert isinstance(text, str)
        region = answer_region(text)
        assert isinstance(region, str) and region in text
        point = parse_point(item)
        assert point is None or (len(point) == 2 and finite(point)), (item, point)
        box = parse_box(item)
        assert box is None or (len(box) == 4 and finite(box) and box[0] <= box[2] and box[1] <= box[3]), (item, box)
        assert is_exact_point(item) in (True, False) and is_exact_box(item) in (True, False)
        if is_exact_point(item):
            assert parse_point(item) is not None, item
        interval = temporal.parse_interval(item)
        assert interval is None or (len(interval) == 2 and finite(interval)), (item, interval)
        found, well_formed = detection.parse_detections(item)
        assert well_formed in (True, False)
        for d in found:
            assert finite(d.box) and d.box[0] <= d.box[2] and d.box[1] <= d.box[3], (item, d)
            assert all(abs(v) <= detection.COORD_LIMIT for v in d.box) and isinstance(d.label, str)
            assert d.score is None or math.isfinite(d.score)
        single = detection.parse_single_box(item)
        assert single is None or (len(single) == 4 and finite(single)), (item, single)
        code = cad.extract_code(item)
        assert code is None or (isinstance(item, str) and code in item), (item, code)
        for n in (1, 4, 9, 12):
            letter = parse_letter(item, n)
            assert letter is None or 0 <= letter < min(n, len(LETTERS)), (item, n, letter)
        again = (parse_point(item), parse_box(item), temporal.parse_interval(item), detection.parse_detections(item),
                 cad.extract_code(item))
        assert again == (point, box, interval, (found, well_formed), code), item


measurements = st.one_of(st.none(), json_values, st.dictionaries(st.sampled_from(["iou", "chamfer", "volume"]),
                                                                 json_values | coordinate, max_size=3))


@FUZZ
@given(st.lists(measurements, min_size=10, max_size=10))
def test_cad_scores_of_untrusted_measurements(batch):
    """CAD's rewards read a JSON measurement written by the sandboxed child (untrusted): each score is in [0, 1]
    (an int of 400 digits made them raise OverflowError)."""
    for m in batch:
        for score in (cad.executability, cad.iou_score, cad.chamfer_score, partial(cad.chamfer_score, scale=1e-300)):
            value = score(m)
            assert isinstance(value, float) and 0 <= value <= 1, (score, m, value)


def test_the_fuzzed_question_data_is_valid():
    """The caption QA fields above are valid question data (else every caption_qa check would score 0 trivially)."""
    assert caption_qa(ScriptedJudge(), ["red 2 nothing", "blue"]) == [1.0, 0.0]
