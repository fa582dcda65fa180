"""Captioning by QA (CapRL, Xing et al. 2025, "CapRL: Stimulating Dense Image Caption Capabilities via
Reinforcement Learning", arXiv 2509.22647): a caption is good when a text-only judge can answer multiple-choice
questions about the image from the caption alone.

The reward of caption ``c`` of an image with questions ``Q`` (CapRL's recipe)::

    r(c) = 1/K * sum_{k=1..K} 1[ judge(c, q_k, pi_k(q_k) + CANNOT_ANSWER) = correct option of q_k ]

where ``q_1..q_K`` are drawn from ``Q`` with replacement (``K = 8``), ``pi_k`` is a uniformly random permutation
of ``q_k``'s choices, after which the option ``CANNOT_ANSWER`` is added, and the judge's answer is the first
option letter in its text (``parse_letter``); choosing ``CANNOT_ANSWER`` and an answer without a letter count as
wrong. An image without questions scores 0. CapRL's judge samples at temperature 0.6 with at most 10 new tokens
(``mmrl.judges``).

Evaluation (``CaptionQAReward.accuracy``, Prism-style: the captioner and the judge are decoupled) asks every
question of each image once, with shuffled options, and reports the fraction answered correctly.

The draws are seeded by (run seed, step, image key, the completion's place among that image's completions of the
call) (``question_rng``), so a step reproduces and the rollout inspector can draw the same questions again;
each distinct (caption, question, options) is asked once per call, in one judge call for the whole batch, and
its parsed answer is cached (``CaptionQAReward``). Model output never makes the reward raise: a judge that
raises or returns the wrong number of answers scores those questions 0 and is counted in ``judge_failures``.
"""
from __future__ import annotations

import json
import random
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from mmrl.errors import ConfigError, DataError
from mmrl.eval.records import bad_field, get_field, get_str, short_repr

CANNOT_ANSWER = "Can not answer based on the caption"
"""The option added after each question's shuffled choices; choosing it counts as wrong."""
LETTERS = "ABCDEFGHI"
"""Option letters; a question has at most 8 choices, so with ``CANNOT_ANSWER`` at most 9 options."""
MAX_CHOICES = len(LETTERS) - 1
"""Most choices a question may have (the last letter is kept for ``CANNOT_ANSWER``)."""


@dataclass(frozen=True)
class MCQ:
    """One multiple-choice question about an image."""

    question: str
    choices: tuple[str, ...]
    """2 to 8 distinct option texts, in the data's order."""
    answer: int
    """Index of the correct choice in ``choices``."""


@dataclass(frozen=True)
class Query:
    """What a judge sees of one question: the caption, the question and the options in the order asked
    (shuffled choices, then ``CANNOT_ANSWER``). It never holds the correct answer."""

    caption: str
    question: str
    options: tuple[str, ...]


# -- questions as data -------------------------------------------------------------------------------------------

def mcq_from_dict(row: dict, where: str) -> MCQ:
    """The question in ``{"question": str, "choices": [str, ...], "answer": X}``, where ``X`` is the correct
    choice's letter (``"A"``..``"H"``, any case), its 0-based index, or its text. Texts are stripped of surrounding
    space. A ``DataError`` whose message starts with ``where`` names the key of a missing or wrong field: fewer than
    2 or more than 8 choices, duplicate or blank choices, a choice equal to ``CANNOT_ANSWER``, or an answer that
    matches no choice (or, as a letter and as a text, two different ones)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a question must be an object with 'question', 'choices' and 'answer', got "
                        f"{short_repr(row)}")
    question = get_str(row, "question", where).strip()
    if not question:
        raise bad_field(where, "question", "a non-empty string", row["question"])
    raw = get_field(row, "choices", where)
    if not (isinstance(raw, list) and all(isinstance(c, str) and c.strip() for c in raw)):
        raise bad_field(where, "choices", "a list of non-empty strings", raw)
    choices = tuple(c.strip() for c in raw)
    if not 2 <= len(choices) <= MAX_CHOICES:
        raise bad_field(where, "choices", f"2 to {MAX_CHOICES} choices", raw)
    if len(set(choices)) != len(choices):
        raise bad_field(where, "choices", "distinct choices", raw)
    if any(c.casefold() == CANNOT_ANSWER.casefold() for c in choices):
        raise bad_field(where, "choices", f"choices other than {CANNOT_ANSWER!r} (the judge's added option)", raw)
    return MCQ(question, choices, _answer_index(get_field(row, "answer", where), choices, where))


def _answer_index(value: Any, choices: tuple[str, ...], where: str) -> int:
    """The index ``value`` (letter, 0-based int or choice text) names in ``choices``."""
    expected = f"the letter (A-{LETTERS[len(choices) - 1]}), 0-based index or text of one of the {len(choices)} choices"
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(choices):
            return value
        raise bad_field(where, "answer", expected, value)
    if not isinstance(value, str):
        raise bad_field(where, "answer", expected, value)
    text = value.strip()
    named = set()
    if len(text) == 1 and text.upper() in LETTERS[: len(choices)]:
        named.add(LETTERS.index(text.upper()))
    if text in choices:
        named.add(choices.index(text))
    if len(named) != 1:
        raise bad_field(where, "answer", expected if not named else "one choice (as a letter and as a text it "
                        "names two different ones)", value)
    return named.pop()


def mcq_to_dict(mcq: MCQ) -> dict:
    """``mcq`` as JSON-able data in the form ``mcq_from_dict`` reads, the answer as its letter."""
    return {"question": mcq.question, "choices": list(mcq.choices), "answer": LETTERS[mcq.answer]}


def _caption(completion: Any) -> str:
    return completion.strip() if isinstance(completion, str) else ""


def _as_mcq(item: Any, where: str) -> MCQ:
    return item if isinstance(item, MCQ) else mcq_from_dict(item, where)


# -- asking ------------------------------------------------------------------------------------------------------

def question_rng(seed: int, step: int | None, key: str, index: int) -> random.Random:
    """The random source of one caption's questions: seeded by the string ``[seed, step, key, index]`` (a string
    seed is hashed with SHA-512, the same in every process, unlike ``hash()``), so the same run, step, image and
    completion draw the same questions and permutations."""
    return random.Random(json.dumps([seed, step, str(key), index]))


def shuffled_options(mcq: MCQ, rng: random.Random) -> tuple[tuple[str, ...], int]:
    """A uniformly random permutation of ``mcq``'s choices followed by ``CANNOT_ANSWER``, and the index of the
    correct choice in it."""
    order = list(range(len(mcq.choices)))
    rng.shuffle(order)
    return tuple(mcq.choices[j] for j in order) + (CANNOT_ANSWER,), order.index(mcq.answer)


def _ask(caption: str, mcq: MCQ, rng: random.Random) -> tuple[Query, int]:
    options, correct = shuffled_options(mcq, rng)
    return Query(caption, mcq.question, options), correct


def draw_queries(caption: str, mcqs: list[MCQ], k: int, rng: random.Random) -> list[tuple[Query, int]]:
    """``k`` questions drawn from ``mcqs`` with replacement, each with freshly shuffled options, as
    ``(query, index of the correct option)``; ``[]`` when ``mcqs`` is empty."""
    if not mcqs:
        return []
    return [_ask(caption, mcqs[rng.randrange(len(mcqs))], rng) for _ in range(k)]


def judge_prompt(query: Query) -> str:
    """The text an LLM judge gets: the caption, the question, the lettered options (``A. ...``) and the instruction
    to answer with the option's letter only, in the words of LLaVA's multiple-choice evaluation (on six probe
    questions SmolLM2-135M-Instruct answered all six with a letter in this wording, two in a free one)."""
    options = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(query.options))
    return ("You are given a description of an image. Answer the question using only the description.\n\n"
            f"Description: {query.caption}\n\n"
            f"Question: {query.question}\n"
            f"{options}\n\n"
            "Answer with the option's letter from the given choices directly.")


@lru_cache(maxsize=len(LETTERS))
def _letter_pattern(n_options: int) -> re.Pattern:
    # fixed-width look-arounds and one character class: the scan is linear in the text's length
    return re.compile(rf"(?<!\w)[{LETTERS[:n_options]}](?!\w|['\u2019]\w)")


def parse_letter(text: str, n_options: int) -> int | None:
    """The 0-based option the answer ``text`` names: its first standalone capital option letter (``A`` up to the
    ``n_options``-th letter), or None.

    Standalone: no letter, digit or ``_`` right before or after it, and no apostrophe plus letter after it
    (``I'm``), so ``B``, ``B.``, ``(C)``, ``Answer: D``, ``**A**`` and ``'E'`` name options, while the ``A`` of
    ``Answer`` does not. ``A`` and ``I`` are also English words: followed by one space and a lower-case letter
    (``A red circle``, ``I think B``) they are read as words and skipped, so ``A is correct`` parses as None (a
    judge told to reply with the letter only rarely writes that). Lower-case letters never count. Letters beyond
    ``n_options`` are skipped. A non-str ``text`` is None; the scan is one linear regex pass."""
    if not isinstance(text, str) or not isinstance(n_options, int) or n_options < 1:
        return None
    for match in _letter_pattern(min(n_options, len(LETTERS))).finditer(text):
        letter, end = match.group(), match.end()
        if letter in "AI" and text[end: end + 1].isspace() and text[end + 1: end + 2].islower():
            continue
        return LETTERS.index(letter)
    return None


@dataclass
class Reply:
    """The judge's parsed answers to one call's queries."""

    picks: list[int | None]
    """Index of the option chosen per query; None when its answer has no option letter or is missing."""
    failed: list[bool]
    """True where the judge gave no usable answer (the call raised or returned the wrong number of answers, or
    the item is not a str): such a pick is None and must not be cached."""
    reason: str | None
    """What went wrong, when anything ``failed``."""


def ask_judge(judge, queries: list[Query]) -> Reply:
    """``judge.answer(queries)`` in one call, parsed with ``parse_letter``; never raises."""
    n = len(queries)
    if not n:
        return Reply([], [], None)
    try:
        answers = judge.answer(list(queries))
    except Exception as exc:  # noqa: BLE001  (a judge's failure scores its questions 0, it does not end the run)
        return Reply([None] * n, [True] * n, f"{type(exc).__name__}: {exc}")
    if not isinstance(answers, (list, tuple)) or len(answers) != n:
        got = f"{len(answers)} answers" if isinstance(answers, (list, tuple)) else type(answers).__name__
        return Reply([None] * n, [True] * n, f"returned {got} for {n} questions, not a list of {n} str")
    failed = [not isinstance(a, str) for a in answers]
    picks = [parse_letter(a, len(q.options)) for a, q in zip(answers, queries)]
    bad = [a for a, f in zip(answers, failed) if f]
    reason = f"{len(bad)} answers are not str, e.g. {short_repr(bad[0])}" if bad else None
    return Reply(picks, failed, reason)


def _fractions(asked: list[list[tuple[Query, int]]], pick: dict[Query, int | None], per: list[int]) -> list[float]:
    """Per caption: the number of its queries whose pick is the correct option, over ``per`` (0 when nothing was
    asked)."""
    return [sum(pick.get(q) == correct for q, correct in queries) / d if d else 0.0
            for queries, d in zip(asked, per)]


# -- the reward and the evaluation -------------------------------------------------------------------------------

class CaptionQAReward:
    """CapRL's reward, ``fn(completions, *, qa, qa_key, step=None) -> list[float]`` (the module docstring gives the
    formula): per completion, ``k`` questions drawn with replacement from its image's questions ``qa[i]`` (MCQ
    dicts or ``MCQ``), seeded by ``question_rng(seed, step[i], qa_key[i], i)``, answered by ``judge`` (a
    ``mmrl.plugins.QA_JUDGES`` object) from the stripped completion alone.

    All of a call's queries that are not cached go to the judge in one ``judge.answer`` call, each distinct
    (caption, question, options) once; parsed answers are kept in an LRU cache of ``cache_size`` entries. When the
    judge fails (raises, returns the wrong number of answers, or an answer that is not a str), those questions
    score 0 and are not cached, ``judge_failures`` counts them, and the first failure is reported in a warning."""

    def __init__(self, judge, *, k: int = 8, seed: int = 0, cache_size: int = 100_000):
        if k < 1:
            raise ConfigError(f"caption_qa reward: k (questions per caption) must be at least 1, got {k}")
        if cache_size < 0:
            raise ConfigError(f"caption_qa reward: cache_size must be at least 0, got {cache_size}")
        self.judge = judge
        self.k = k
        self.seed = seed
        self.cache_size = cache_size
        self.calls = 0
        """Calls of ``judge.answer`` so far."""
        self.judge_failures = 0
        """Questions scored 0 because the judge gave no usable answer."""
        self.unparsable = 0
        """Questions whose answer (a str) named no option letter (scored 0, as in CapRL)."""
        self._cache: OrderedDict[Query, int | None] = OrderedDict()
        self._lock = threading.Lock()  # a call past the trainer's reward timeout may overlap the next one
        self._warned = False

    def __call__(self, completions: list[str], *, qa: list, qa_key: list, step: list | None = None,
                 **unused: Any) -> list[float]:
        steps = step if step is not None else [None] * len(completions)
        seen: dict[str, int] = {}
        asked = []
        for completion, items, key, at in zip(completions, qa, qa_key, steps, strict=True):
            index = seen[str(key)] = seen.get(str(key), -1) + 1  # the completion's place among its image's
            mcqs = [_as_mcq(item, f"qa_key {key!r}: question {j}") for j, item in enumerate(items or [])]
            asked.append(draw_queries(_caption(completion), mcqs, self.k, question_rng(self.seed, at, key, index)))
        pick = self._answers([q for queries in asked for q, _ in queries])
        return _fractions(asked, pick, [self.k] * len(asked))

    def accuracy(self, captions: list[str], mcq_lists: list[list[MCQ]], keys: list[str]) -> list[float]:
        """Evaluation (Prism-style: captioner and judge decoupled): per caption, the fraction of its image's
        questions the judge answers correctly from the caption alone (0 for an image without questions), every
        question asked once with its options shuffled by ``question_rng(seed, None, key, 0)``; uncached queries
        go to the judge in one call, and its failures count as wrong and in ``judge_failures``, as in training."""
        asked = [[_ask(_caption(caption), m, rng) for m in mcqs]
                 for caption, mcqs, rng in zip(captions, mcq_lists,
                                               (question_rng(self.seed, None, k, 0) for k in keys), strict=True)]
        pick = self._answers([q for queries in asked for q, _ in queries])
        return _fractions(asked, pick, [len(m) for m in mcq_lists])

    def _answers(self, queries: list[Query]) -> dict[Query, int | None]:
        """The parsed answer of each query: from the cache, else from one judge call for all the rest."""
        with self._lock:
            known = {q: self._cache[q] for q in queries if q in self._cache}
            for q in known:
                self._cache.move_to_end(q)
        todo = list(dict.fromkeys(q for q in queries if q not in known))
        if not todo:
            return known
        reply = ask_judge(self.judge, todo)
        with self._lock:
            self.calls += 1
            self.judge_failures += sum(reply.failed)
            self.unparsable += sum(p is None and not f for p, f in zip(reply.picks, reply.failed))
            for q, p, f in zip(todo, reply.picks, reply.failed):
                if not f:
                    self._remember(q, p)
        if reply.reason is not None:
            self._warn(reply.reason)
        return {**known, **dict(zip(todo, reply.picks))}

    def _remember(self, query: Query, pick: int | None) -> None:
        if self.cache_size:
            self._cache[query] = pick
            self._cache.move_to_end(query)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _warn(self, reason: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"caption_qa judge failed ({reason}); those questions score 0 and are counted in "
                          "judge_failures (further failures are only counted)", stacklevel=4)
