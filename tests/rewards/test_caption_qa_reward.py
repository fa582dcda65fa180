"""CapRL's captioning-by-QA reward with a scripted judge: option shuffling, draws with replacement, seeding, one
batched judge call, the cache, judge failures, letter parsing and the question data's errors."""
from __future__ import annotations

import random
import time
import warnings
from collections import Counter

import pytest

from mmrl.errors import DataError
from rewards.caption_qa import (
    CANNOT_ANSWER,
    LETTERS,
    MCQ,
    CaptionQAReward,
    Query,
    draw_queries,
    judge_prompt,
    mcq_from_dict,
    mcq_to_dict,
    parse_letter,
    question_rng,
    shuffled_options,
)

COLOUR = MCQ("What colour is the circle?", ("red", "green", "blue", "yellow"), 0)
SHAPE = MCQ("What shape is shown?", ("square", "circle"), 1)


class ScriptedJudge:
    """Answers by rule: the letter of the first option that occurs in the caption, else the letter of
    ``CANNOT_ANSWER``; records every call."""

    def __init__(self):
        self.calls: list[list[Query]] = []

    def answer(self, queries):
        self.calls.append(list(queries))
        return [LETTERS[next((i for i, o in enumerate(q.options) if o in q.caption), len(q.options) - 1)]
                for q in queries]

    def close(self):
        pass


class FlakyJudge(ScriptedJudge):
    """Fails (by ``mode``) on its first call, then answers like ``ScriptedJudge``."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def answer(self, queries):
        if len(self.calls) == 0:
            self.calls.append(list(queries))
            if self.mode == "raise":
                raise RuntimeError("judge out of memory")
            if self.mode == "short":
                return ["A"] * (len(queries) - 1)
            return None
        return super().answer(queries)


def reward_of(judge, captions, qa, keys=None, step=None, **kw):
    fn = CaptionQAReward(judge, **kw)
    keys = keys or [f"img{i}" for i in range(len(captions))]
    return fn, fn(captions, qa=qa, qa_key=keys, step=step)


# -- shuffling and drawing ---------------------------------------------------------------------------------------

def test_shuffle_is_a_uniform_permutation_tracking_the_correct_choice():
    seen = Counter()
    for s in range(400):
        options, correct = shuffled_options(COLOUR, random.Random(s))
        assert sorted(options[:-1]) == sorted(COLOUR.choices)
        assert options[-1] == CANNOT_ANSWER
        assert options[correct] == COLOUR.choices[COLOUR.answer]
        seen.update((text, pos) for pos, text in enumerate(options[:-1]))
    assert set(seen) == {(t, p) for t in COLOUR.choices for p in range(4)}  # every choice at every position
    assert min(seen.values()) > 60  # 400 / 4 = 100 expected per cell


def test_choosing_cannot_answer_is_wrong():
    class Cannot(ScriptedJudge):
        def answer(self, queries):
            self.calls.append(list(queries))
            return [LETTERS[len(q.options) - 1] for q in queries]

    _, rewards = reward_of(Cannot(), ["a red circle"], [[COLOUR, SHAPE]])
    assert rewards == [0.0]


def test_draws_with_replacement_follow_the_seeded_rng():
    rng, mirror = question_rng(3, 7, "img", 0), question_rng(3, 7, "img", 0)
    drawn = draw_queries("cap", [COLOUR, SHAPE], 8, rng)
    assert len(drawn) == 8
    counts = Counter(q.question for q, _ in drawn)
    assert max(counts.values()) > 1  # 8 draws from 2 questions repeat one
    expected = Counter()
    for _ in range(8):
        mcq = [COLOUR, SHAPE][mirror.randrange(2)]
        shuffled_options(mcq, mirror)
        expected[mcq.question] += 1
    assert counts == expected
    assert draw_queries("cap", [], 8, random.Random(0)) == []


def test_question_rng_is_a_function_of_its_inputs():
    assert question_rng(0, 5, "k", 1).random() == question_rng(0, 5, "k", 1).random()
    values = {question_rng(*args).random() for args in
              [(0, 5, "k", 1), (1, 5, "k", 1), (0, 6, "k", 1), (0, None, "k", 1), (0, 5, "j", 1), (0, 5, "k", 2)]}
    assert len(values) == 6


def test_judge_prompt_letters_the_options_and_asks_for_a_letter():
    prompt = judge_prompt(Query("A red circle.", "What colour?", ("blue", "red", CANNOT_ANSWER)))
    assert "A red circle." in prompt and "What colour?" in prompt
    assert "A. blue\nB. red\nC. Can not answer based on the caption" in prompt
    assert "letter" in prompt


# -- the reward --------------------------------------------------------------------------------------------------

def test_reward_is_the_fraction_of_questions_answered_correctly():
    # the caption names "red" (COLOUR's answer) and "square" (a wrong SHAPE choice, picked when SHAPE is asked)
    judge = ScriptedJudge()
    fn, rewards = reward_of(judge, ["  a red square  ", "nothing here", "a red circle"],
                            [[COLOUR, SHAPE], [COLOUR], []], step=[4, 4, 4], k=8, seed=1)
    drawn = draw_queries("a red square", [COLOUR, SHAPE], 8, question_rng(1, 4, "img0", 0))
    n_colour = sum(q.question == COLOUR.question for q, _ in drawn)
    assert 0 < n_colour < 8
    assert rewards == [n_colour / 8, 0.0, 0.0]  # the image without questions scores 0
    assert all(q.caption in ("a red square", "nothing here") for q in judge.calls[0])  # stripped captions


def test_reward_hand_computed_with_a_dict_judge_and_mcq_dicts():
    rows = [{"question": "How many dogs?", "choices": ["one", "two", "three"], "answer": "B"}]

    class DictJudge(ScriptedJudge):
        def answer(self, queries):
            self.calls.append(list(queries))
            return [f"{LETTERS[q.options.index('two')]}." for q in queries]  # always right

    fn, rewards = reward_of(DictJudge(), ["two dogs"], [rows], k=4)
    assert rewards == [1.0]
    assert fn.calls == 1 and fn.judge_failures == 0 and fn.unparsable == 0


def test_same_seed_and_step_reproduce_and_another_step_draws_anew():
    args = (["a red square", "a blue circle"], [[COLOUR, SHAPE], [COLOUR, SHAPE]])
    judges = [ScriptedJudge() for _ in range(3)]
    first = reward_of(judges[0], *args, step=[2, 2], seed=5)[1]
    again = reward_of(judges[1], *args, step=[2, 2], seed=5)[1]
    assert first == again and judges[0].calls == judges[1].calls
    reward_of(judges[2], *args, step=[3, 3], seed=5)
    assert judges[2].calls != judges[0].calls


def test_one_judge_call_per_reward_call_with_each_distinct_query_once():
    judge = ScriptedJudge()
    captions = ["a red square"] * 3
    fn, _ = reward_of(judge, captions, [[COLOUR, SHAPE]] * 3, keys=["img"] * 3, k=8)
    assert len(judge.calls) == 1 == fn.calls
    asked = judge.calls[0]
    assert len(asked) == len(set(asked))
    expected = {q for i in range(3) for q, _ in draw_queries("a red square", [COLOUR, SHAPE], 8,
                                                              question_rng(0, None, "img", i))}
    assert set(asked) == expected
    assert len(expected) < 24  # 24 draws, but SHAPE has only 2 option orders: its repeats were merged


def test_cache_hits_do_not_reach_the_judge():
    judge = ScriptedJudge()
    fn = CaptionQAReward(judge, k=8)
    first = fn(["a red square"], qa=[[COLOUR, SHAPE]], qa_key=["img"], step=[0])
    second = fn(["a red square"], qa=[[COLOUR, SHAPE]], qa_key=["img"], step=[0])
    assert first == second and len(judge.calls) == 1 and fn.calls == 1
    # a new step draws partly new queries: only those are asked
    fn(["a red square"], qa=[[COLOUR, SHAPE]], qa_key=["img"], step=[1])
    assert len(judge.calls) == 2
    assert not set(judge.calls[1]) & set(judge.calls[0])
    tiny = CaptionQAReward(ScriptedJudge(), k=8, cache_size=1)
    for _ in range(2):
        tiny(["a red square"], qa=[[COLOUR, SHAPE]], qa_key=["img"], step=[0])
    assert len(tiny._cache) == 1 and tiny.calls == 2  # bounded: the second call misses


@pytest.mark.parametrize("mode", ["raise", "short", "none"])
def test_failing_judge_scores_zero_is_counted_warns_and_recovers(mode):
    judge = FlakyJudge(mode)
    fn = CaptionQAReward(judge, k=4)
    call = dict(qa=[[COLOUR]], qa_key=["img"], step=[0])
    with pytest.warns(UserWarning, match="caption_qa judge failed") as record:
        assert fn(["a red circle"], **call) == [0.0]
    if mode == "raise":
        assert "judge out of memory" in str(record[0].message)
    asked = len(judge.calls[0])
    assert fn.judge_failures == asked > 0
    assert fn(["a red circle"], **call) == [1.0]  # failures were not cached: asked again, answered
    assert fn.calls == 2 and fn.judge_failures == asked
    judge.calls.clear()  # it fails again: only counted, no second warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fn(["a red circle"], qa=[[COLOUR]], qa_key=["img"], step=[9]) == [0.0]
    assert fn.judge_failures == asked + len(judge.calls[0])


def test_garbage_answer_values():
    """Non-str items and letterless text are wrong; a letter still counts."""
    class Mixed(ScriptedJudge):
        def answer(self, queries):
            self.calls.append(list(queries))
            right = [LETTERS[q.options.index("red")] if "red" in q.options else "A" for q in queries]
            return [[None, "no idea", 7, right[i]][i % 4] for i in range(len(queries))]

    judge = Mixed()
    fn = CaptionQAReward(judge, k=8, seed=2)
    with pytest.warns(UserWarning, match="not str"):
        (value,) = fn(["a red circle"], qa=[[COLOUR]], qa_key=["img"])
    asked = judge.calls[0]
    drawn = draw_queries("a red circle", [COLOUR], 8, question_rng(2, None, "img", 0))
    position = {q: i for i, q in enumerate(asked)}
    assert value == sum(position[q] % 4 == 3 for q, _ in drawn) / 8
    assert fn.judge_failures == sum(i % 4 in (0, 2) for i in range(len(asked)))
    assert fn.unparsable == sum(i % 4 == 1 for i in range(len(asked)))


def test_reward_never_raises_on_model_output():
    fn = CaptionQAReward(ScriptedJudge(), k=2)
    weird = ["", None, "\x00\x1b[31m" * 1000, "红色的圆 red", "x" * 200_000]
    values = fn(weird, qa=[[COLOUR]] * 5, qa_key=[str(i) for i in range(5)])
    assert len(values) == 5 and all(0.0 <= v <= 1.0 for v in values)


def test_accuracy_asks_every_question_once_in_one_call():
    judge = ScriptedJudge()
    fn = CaptionQAReward(judge)
    scores = fn.accuracy(["a red square", "a blue circle", "nothing"], [[COLOUR, SHAPE], [COLOUR, SHAPE], []],
                         ["a", "b", "c"])
    assert scores == [0.5, 0.5, 0.0]
    assert len(judge.calls) == 1 and len(judge.calls[0]) == 4
    flaky = CaptionQAReward(FlakyJudge("raise"))
    with pytest.warns(UserWarning, match="judge failed"):
        assert flaky.accuracy(["a red circle"], [[COLOUR]], ["a"]) == [0.0]
    assert flaky.judge_failures == 1


# -- letters -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, n, expected", [
    ("B", 5, 1), ("B.", 5, 1), ("(C)", 5, 2), ("Answer: D", 5, 3), ("**A**", 5, 0), ("A", 5, 0), (" \n E\n", 5, 4),
    ("The answer is B.", 5, 1), ("'C'", 5, 2), ("B) red", 5, 1), ("A. blue", 5, 0), ("A: blue", 5, 0),
    ("A red circle", 5, None),  # the article
    ("A red circle, so C", 5, 2),
    ("I think B", 9, 1),  # the pronoun
    ("I'm sure it is D", 9, 3),
    ("I", 9, 8),
    ("a", 5, None), ("b.", 5, None),  # lower case never counts
    ("Answer", 5, None), ("ABC", 5, None), ("B2", 5, None), ("_B", 5, None), ("ÄB", 5, None),
    ("F", 5, None), ("F or B", 5, 1),  # beyond the options: skipped
    ("", 5, None), ("no letter here", 5, None), ("B", 0, None), ("B", 20, 1),
    ("红色 C 的", 5, 2), ("\x00B\x1b", 5, 1), ("—D—", 5, 3),
])
def test_parse_letter(text, n, expected):
    assert parse_letter(text, n) == expected


@pytest.mark.parametrize("value", [None, 3, b"B", ["B"]])
def test_parse_letter_of_non_str_is_none(value):
    assert parse_letter(value, 5) is None


def test_parse_letter_is_linear_on_adversarial_input():
    cases = ["A" * 200_000, "A " * 100_000, ("A a" * 70_000), "x" * 200_000 + " C", "\u2019" * 200_000,
             "".join(chr(c) for c in range(0x2000)) * 20, "(" * 200_000 + "B", "A'" * 100_000]
    started = time.perf_counter()
    results = [parse_letter(text, 9) for text in cases]
    assert time.perf_counter() - started < 2.0
    assert results[0] is None and results[3] == 2 and results[6] == 1


# -- question data -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer", ["B", "b", " B ", 1, "green"])
def test_mcq_from_dict_reads_every_answer_form(answer):
    mcq = mcq_from_dict({"question": " Colour? ", "choices": ["red", "green"], "answer": answer}, "f.json: row 0")
    assert mcq == MCQ("Colour?", ("red", "green"), 1)
    assert mcq_from_dict(mcq_to_dict(mcq), "x") == mcq
    assert mcq_to_dict(mcq) == {"question": "Colour?", "choices": ["red", "green"], "answer": "B"}


@pytest.mark.parametrize("row, key", [
    ({"choices": ["a", "b"], "answer": 0}, "question"),
    ({"question": 3, "choices": ["a", "b"], "answer": 0}, "question"),
    ({"question": " ", "choices": ["a", "b"], "answer": 0}, "question"),
    ({"question": "q", "answer": 0}, "choices"),
    ({"question": "q", "choices": "ab", "answer": 0}, "choices"),
    ({"question": "q", "choices": ["a", 2], "answer": 0}, "choices"),
    ({"question": "q", "choices": ["a"], "answer": 0}, "choices"),
    ({"question": "q", "choices": [str(i) for i in range(9)], "answer": 0}, "choices"),
    ({"question": "q", "choices": ["a", "a "], "answer": 0}, "choices"),
    ({"question": "q", "choices": ["a", CANNOT_ANSWER.lower()], "answer": 0}, "choices"),
    ({"question": "q", "choices": ["a", "b"]}, "answer"),
    ({"question": "q", "choices": ["a", "b"], "answer": "C"}, "answer"),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "answer"),
    ({"question": "q", "choices": ["a", "b"], "answer": True}, "answer"),
    ({"question": "q", "choices": ["a", "b"], "answer": "c"}, "answer"),
    ({"question": "q", "choices": ["a", "b"], "answer": None}, "answer"),
    ({"question": "q", "choices": ["B", "A"], "answer": "A"}, "answer"),  # letter A and text A disagree
])
def test_mcq_from_dict_errors_name_the_place_and_key(row, key):
    with pytest.raises(DataError, match=rf"^data/qa\.json: record 4: .*'{key}'"):
        mcq_from_dict(row, "data/qa.json: record 4")


def test_mcq_from_dict_rejects_a_non_object():
    with pytest.raises(DataError, match=r"^here: a question must be an object"):
        mcq_from_dict(["q", ["a", "b"], 0], "here")


def test_bad_question_data_in_the_reward_names_the_image():
    with pytest.raises(DataError, match=r"qa_key 'img7': question 1: .*'answer'"):
        CaptionQAReward(ScriptedJudge())(["c"], qa=[[COLOUR, {"question": "q", "choices": ["a", "b"]}]],
                                         qa_key=["img7"])
