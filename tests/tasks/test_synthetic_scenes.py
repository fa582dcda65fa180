"""Tests for tasks.synthetic_scenes: determinism, the JSONL rows, answers true of the scene graph, pixels, settings
errors, and the rule judge (ground-truth captions, omissions, wrong facts, half-trained and hostile captions)."""
from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from mmrl.errors import ConfigError
from rewards.caption_qa import CANNOT_ANSWER, LETTERS, Query
from tasks.synthetic_scenes import (BACKGROUND, COLOURS, JSONL_NAME, SHAPES, SIZES, RuleJudge, Scene, SceneSettings,
                                    caption, check_params, generate, make_example, read_caption, shape_box)

SETTINGS = (
    SceneSettings(),
    SceneSettings(rows=1, cols=4, max_objects=4),
    SceneSettings(rows=3, cols=3, max_objects=9, colours=tuple(COLOURS), shapes=SHAPES, sizes=tuple(SIZES)),
    SceneSettings(rows=2, cols=4, max_objects=8, colours=("red", "blue"), shapes=("circle", "square")),
)
"""Layouts and vocabularies the judge tests sweep (default, one row, everything, crowded with few values)."""


def _files(root):
    """Relative path -> bytes of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _examples(n_per_setting=80, seed=11):
    """``(settings, example)`` over ``SETTINGS``: a few hundred scenes."""
    return [(s, make_example(seed + k, i, s)) for k, s in enumerate(SETTINGS) for i in range(n_per_setting)]


def _cell_texts(scene):
    """Each row's cell texts, as the caption grammar writes them."""
    rows = [["empty"] * scene.cols for _ in range(scene.rows)]
    for o in scene.objects:
        rows[o.row][o.col] = f"{o.size} {o.colour} {o.shape}"
    return rows


def _write(n, rows):
    """A caption in the grammar from a stated count and row cell texts."""
    return " ".join([f"{n} shape{'' if n == 1 else 's'}.", *(f"Row {r + 1}: {', '.join(row)}." for r, row in
                                                               enumerate(rows))])


def _truth(scene, question):
    """``(answer, referent)`` of a question, recomputed from the scene graph; asserts the question is determined."""
    objects = scene.objects
    if question == "How many shapes are there?":
        return str(len(objects)), None
    patterns = {
        r"What colour is the (\w+)\?": ("shape",),
        r"What shape is the (\w+) one\?": ("colour",),
        r"What size is the (\w+) (\w+)\?": ("colour", "shape"),
        r"What is left of the (\w+) (\w+)\?": ("colour", "shape"),
    }
    for pattern, keys in patterns.items():
        match = re.fullmatch(pattern, question)
        if match:
            found = [o for o in objects if all(getattr(o, k) == v for k, v in zip(keys, match.groups()))]
            assert len(found) == 1, question
            obj = found[0]
            if pattern.startswith("What colour"):
                return obj.colour, obj
            if pattern.startswith("What shape"):
                return obj.shape, obj
            if pattern.startswith("What size"):
                return obj.size, obj
            left = [o for o in objects if (o.row, o.col) == (obj.row, obj.col - 1)]
            return (f"the {left[0].colour} {left[0].shape}" if left else "nothing"), obj
    raise AssertionError(f"unknown question {question!r}")


def _expected_questions(scene):
    """Every question the scene determines, as the module docstring lists them."""
    objects = scene.objects
    out = {"How many shapes are there?"}
    for o in objects:
        if sum(p.shape == o.shape for p in objects) == 1:
            out.add(f"What colour is the {o.shape}?")
        if sum(p.colour == o.colour for p in objects) == 1:
            out.add(f"What shape is the {o.colour} one?")
        if sum((p.colour, p.shape) == (o.colour, o.shape) for p in objects) == 1:
            out |= {f"What size is the {o.colour} {o.shape}?", f"What is left of the {o.colour} {o.shape}?"}
    return out


def _ask(text, mcqs, rng):
    """Queries the way the reward builds them (choices shuffled, then ``CANNOT_ANSWER``) and each one's correct
    letter and ``CANNOT_ANSWER`` letter."""
    queries, correct = [], []
    for q in mcqs:
        order = [int(i) for i in rng.permutation(len(q.choices))]
        queries.append(Query(text, q.question, tuple(q.choices[i] for i in order) + (CANNOT_ANSWER,)))
        correct.append(LETTERS[order.index(q.answer)])
    return queries, correct


def _cannot(query):
    return LETTERS[len(query.options) - 1]


# -- generation ----------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_files(tmp_path):
    generate(tmp_path / "a", 12, 7)
    generate(tmp_path / "b", 12, seed=7)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(files_a) == 13
    assert files_a == files_b


def test_different_seeds_differ(tmp_path):
    a = generate(tmp_path / "a", 8, 1)
    b = generate(tmp_path / "b", 8, 2)
    assert a.read_bytes() != b.read_bytes()
    assert _files(tmp_path / "a" / "images") != _files(tmp_path / "b" / "images")


def test_more_images_extend_fewer(tmp_path):
    short = generate(tmp_path / "a", 3, 5).read_text()
    long = generate(tmp_path / "b", 6, 5).read_text()
    assert long.startswith(short) and long != short


def test_rows_are_caprl_qa_layout(tmp_path):
    path = generate(tmp_path, 30, 3)
    assert path == tmp_path / JSONL_NAME
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 30
    for i, row in enumerate(rows):
        assert list(row) == ["id", "image", "caption", "qa"]
        assert row["image"] == f"images/{row['id']}.png"
        with Image.open(path.parent / row["image"]) as image:
            assert image.size == (112, 56) and image.mode == "RGB"
        example = make_example(3, i)
        assert row == example.record(row["id"])
        assert row["caption"] == caption(example.scene)
        assert row["qa"][0]["question"] == "How many shapes are there?"
        for qa in row["qa"]:
            choices = qa["choices"]
            assert len(set(choices)) == len(choices)
            assert qa["answer"] in LETTERS[:len(choices)]
            assert 4 <= len(choices) <= 6
            if qa["question"].startswith("What is left"):
                assert "nothing" in choices


def test_default_layout_is_one_token_per_cell_and_unresized():
    from mmrl.vision import smart_resize

    s = SceneSettings()
    height, width = s.rows * s.cell, s.cols * s.cell
    assert (width, height) == (112, 56) and width * height >= 56 * 56
    assert smart_resize(height, width) == (height, width)


def test_caption_follows_the_grammar():
    for _, example in _examples(n_per_setting=30):
        scene = example.scene
        assert example.caption == _write(len(scene.objects), _cell_texts(scene))


def test_recorded_answers_are_true_of_the_scene():
    for _, example in _examples():
        scene = example.scene
        assert [o for o in scene.objects] == sorted(scene.objects, key=lambda o: (o.row, o.col))
        assert {q.question for q in example.questions} == _expected_questions(scene)
        for q in example.questions:
            answer, _ = _truth(scene, q.question)
            assert q.choices[q.answer] == answer, (q, scene)
            assert 2 <= len(q.choices) <= 8 and len(set(q.choices)) == len(q.choices)


def test_shapes_are_drawn_in_their_colour_on_the_background():
    for settings, example in _examples(n_per_setting=25):
        pixels = np.asarray(example.image).astype(int)
        assert pixels.shape == (settings.rows * settings.cell, settings.cols * settings.cell, 3)
        drawn = np.zeros(pixels.shape[:2], dtype=bool)
        for obj in example.scene.objects:
            colour = np.array(COLOURS[obj.colour])
            cy, cx = obj.row * settings.cell + settings.cell // 2, obj.col * settings.cell + settings.cell // 2
            assert (pixels[cy, cx] == colour).all(), obj
            if obj.size == "large":
                assert (pixels[cy - 2:cy + 3, cx - 2:cx + 3] == colour).all(), obj
            x0, y0, x1, y1 = shape_box(obj, settings.cell)
            inside = pixels[y0:y1 + 1, x0:x1 + 1]
            assert ((inside == colour).all(-1) | (inside == BACKGROUND).all(-1)).all(), obj
            drawn[y0:y1 + 1, x0:x1 + 1] = True
        assert (pixels[~drawn] == BACKGROUND).all()


@pytest.mark.parametrize("params, key", [
    ({"rows": 0}, "rows"),
    ({"cols": 0}, "cols"),
    ({"rows": "2"}, "rows"),
    ({"rows": 1, "cols": 300}, "cols"),
    ({"cell": 10}, "cell"),
    ({"max_objects": 0}, "max_objects"),
    ({"max_objects": 9}, "max_objects"),
    ({"colours": ("red", "teal")}, "colours"),
    ({"colours": "red"}, "colours"),
    ({"colours": ("red", "red")}, "colours"),
    ({"shapes": ["hexagon"]}, "shapes"),
    ({"shapes": []}, "shapes"),
    ({"sizes": ("huge",)}, "sizes"),
    ({"colour": ("red",)}, "colour"),
])
def test_bad_settings_name_the_key(tmp_path, params, key):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        generate(tmp_path, 1, 0, **params)
    with pytest.raises(ConfigError, match=rf"^data\.synthetic\.params\.{key}:"):
        check_params(params, "data.synthetic.params")


def test_bad_n_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"^n:"):
        generate(tmp_path, -1, 0)


def test_lists_from_yaml_are_accepted():
    assert check_params({"colours": ["red", "blue"]}).colours == ("red", "blue")


# -- the rule judge ------------------------------------------------------------------------------------------
def test_judge_is_registered_without_hyperparameters():
    pytest.importorskip("mmrl.judges", reason="QA_JUDGES' builtin module mmrl.judges is not in the tree yet")
    from mmrl.plugins import QA_JUDGES

    assert QA_JUDGES.get("rule") is RuleJudge
    assert QA_JUDGES.hyperparameters("rule") == {}


def test_judge_answers_every_question_from_the_ground_truth_caption():
    rng, judge, asked = np.random.default_rng(0), RuleJudge(), 0
    for _, example in _examples():
        queries, correct = _ask(example.caption, example.questions, rng)
        assert judge.answer(queries) == correct, example.caption
        asked += len(queries)
    assert asked > 2000
    judge.close()


def test_judge_cannot_answer_from_an_empty_caption():
    rng, judge = np.random.default_rng(1), RuleJudge()
    for _, example in _examples(n_per_setting=20):
        queries, _ = _ask("", example.questions, rng)
        assert judge.answer(queries) == [_cannot(q) for q in queries]


@pytest.mark.parametrize("mode", ["unreadable", "deleted"])
def test_omitted_object_cannot_be_answered_and_the_rest_stays_right(mode):
    """The omitted object's cell is unreadable text, or gone from its row sentence (the count stays stated). Its
    questions lose their answer, and so does "left of" its right neighbour when the cell is unreadable; when the cell
    is gone the rest of its row shifts left, so "left of" the objects after it is not checked. Everything else is
    still right."""
    rng, judge, checked = np.random.default_rng(2), RuleJudge(), 0
    for _, example in _examples():
        scene = example.scene
        if len(scene.objects) < 2:
            continue
        gone = scene.objects[int(rng.integers(len(scene.objects)))]
        rows = _cell_texts(scene)
        if mode == "unreadable":
            rows[gone.row][gone.col] = "something"
        else:
            del rows[gone.row][gone.col]
        queries, correct = _ask(_write(len(scene.objects), rows), example.questions, rng)
        for query, right, got in zip(queries, correct, judge.answer(queries)):
            answer, referent = _truth(scene, query.question)
            after = (referent is not None and referent.row == gone.row and referent.col > gone.col
                     and query.question.startswith("What is left"))
            if referent == gone or (after and mode == "unreadable" and referent.col == gone.col + 1):
                assert got == _cannot(query), query
            elif after and mode == "deleted":
                continue
            else:
                assert got == right, query
                checked += 1
    assert checked > 300


def test_wrong_colour_gives_the_wrong_answer():
    rng, judge, tried = np.random.default_rng(3), RuleJudge(), 0
    for _, example in _examples():
        scene = example.scene
        used = {o.colour for o in scene.objects}
        for q in example.questions:
            match = re.fullmatch(r"What colour is the (\w+)\?", q.question)
            wrong = [c for c in q.choices if c not in used]
            if not match or not wrong:
                continue
            obj = next(o for o in scene.objects if o.shape == match.group(1))
            rows = _cell_texts(scene)
            rows[obj.row][obj.col] = f"{obj.size} {wrong[0]} {obj.shape}"
            (query,), (right,) = _ask(_write(len(scene.objects), rows), [q], rng)
            got = judge.answer([query])[0]
            assert got != right
            assert query.options[LETTERS.index(got)] == wrong[0]
            tried += 1
    assert tried > 50


def _facts_query(text, question, options):
    return RuleJudge().answer([Query(text, question, tuple(options) + (CANNOT_ANSWER,))])[0]


@pytest.mark.parametrize("text, question, options, want", [
    # case, number words, missing sizes, extra words, trailing junk
    ("THREE SHAPES. ROW 1: SMALL RED CIRCLE, EMPTY, LARGE BLUE SQUARE.", "How many shapes are there?",
     ("2", "3", "4"), "3"),
    ("there are 3 objects: a red circle and then a blue square", "How many shapes are there?", ("2", "3"), "3"),
    ("Row 1: red circle, empty, large blue square. asdf qwer", "What size is the red circle?",
     ("small", "large"), CANNOT_ANSWER),
    ("Row 1: red circle, empty, large blue square. asdf qwer", "What size is the blue square?",
     ("small", "large"), "large"),
    ("Row 1: the small red circle, the empty cell, a large blue square", "What is left of the blue square?",
     ("nothing", "the red circle"), "nothing"),
    ("Row 1: small red circle, large blue square", "What is left of the blue square?",
     ("nothing", "the red circle"), "the red circle"),
    ("Row 1: small red circle, large blue square", "What is left of the red circle?",
     ("nothing", "the blue square"), "nothing"),
    ("Row 1: small red circle, ???, large blue square", "What is left of the blue square?",
     ("nothing", "the red circle"), "the red circle"),
    ("Row 1: small red circle, qwerty, large blue square", "What is left of the blue square?",
     ("nothing", "the red circle"), CANNOT_ANSWER),
    ("Row 1: small circle, large blue square", "What is left of the blue square?",
     ("nothing", "the red circle"), CANNOT_ANSWER),
    # no stated count: the number of mentions; several stated counts: ambiguous
    ("Row 1: small red circle, empty, large blue square.", "How many shapes are there?", ("1", "2", "3"), "2"),
    ("3 shapes. 4 shapes. Row 1: small red circle.", "How many shapes are there?", ("3", "4"), CANNOT_ANSWER),
    ("Row 1: small red circle, empty.", "How many shapes are there?", ("1", "2"), "1"),
    # repeated or contradictory mentions are ambiguous
    ("2 shapes. Row 1: small red circle, small red circle.", "What colour is the circle?", ("red", "blue"),
     CANNOT_ANSWER),
    ("1 shape. Row 1: small red blue circle.", "What colour is the circle?", ("red", "blue"), CANNOT_ANSWER),
    ("1 shape. Row 1: small red blue circle.", "What size is the red circle?", ("small", "large"),
     CANNOT_ANSWER),
    ("1 shape. Row 1: small red circle", "What shape is the red one?", ("circle", "square"), "circle"),
    ("1 shape. Row 1: small red", "What shape is the red one?", ("circle", "square"), CANNOT_ANSWER),
    # the answer must be among the options; the question must be one of the templates
    ("1 shape. Row 1: small purple circle.", "What colour is the circle?", ("red", "blue"), CANNOT_ANSWER),
    ("1 shape. Row 1: small red circle.", "Is the circle red?", ("yes", "no"), CANNOT_ANSWER),
    ("1 shape. Row 1: small red circle.", "What colour is the hexagon?", ("red", "blue"), CANNOT_ANSWER),
    ("1 shape. Row 1: small red circle.", "what  colour is the CIRCLE?", ("Blue", " Red "), " Red "),
])
def test_judge_reads_half_trained_captions(text, question, options, want):
    all_options = tuple(options) + (CANNOT_ANSWER,)
    assert _facts_query(text, question, options) == LETTERS[all_options.index(want)]


def test_judge_without_a_cannot_answer_option_gives_no_letter():
    judge = RuleJudge()
    assert judge.answer([Query("", "How many shapes are there?", ("1", "2"))]) == [""]


HOSTILE = [
    "",
    " \t\n ",
    "\x00\x01\x02\x7f\x1b[31m" * 35000,
    "🦊ÅßİﬁǅΣ\u202e\u200b\ud800 red circle " * 12000,
    "red " * 50000,
    "circle " * 30000,
    "row " * 50000,
    "row 1: " * 30000,
    "9" * 200000,
    "3 shapes " * 25000,
    ", " * 100000,
    "small red circle, " * 12000,
    "small " * 35000 + "circle",
    "nothing empty none blank " * 8000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_captions_never_raise(text):
    rng = np.random.default_rng(4)
    _, example = _examples(n_per_setting=1)[2]
    queries, _ = _ask(text, example.questions, rng)
    start = time.perf_counter()
    letters = RuleJudge().answer(queries)
    assert time.perf_counter() - start < 20  # linear: a quadratic read of 200 KB would take minutes
    assert [letter in LETTERS[:len(q.options)] for letter, q in zip(letters, queries)] == [True] * len(queries)


def test_random_bytes_never_raise():
    rng = np.random.default_rng(5)
    _, example = _examples(n_per_setting=1)[0]
    for _ in range(20):
        text = "".join(map(chr, rng.integers(0, 0x3000, size=10000)))
        queries, _ = _ask(text, example.questions, rng)
        assert len(RuleJudge().answer(queries)) == len(queries)


def test_read_caption_of_the_example_in_the_docstring():
    facts = read_caption("3 shapes. Row 1: small red circle, empty, large blue square, empty. Row 2: empty, empty, "
                         "small green triangle, empty.")
    assert facts.counts == {3}
    assert [len(r) for r in facts.rows] == [0, 4, 4]
    assert [(r, p, m.colour) for r, p, m in facts.mentions] == [(1, 0, "red"), (1, 2, "blue"), (2, 2, "green")]


def test_scene_at_is_none_outside_the_grid():
    example = make_example(0, 0)
    assert isinstance(example.scene, Scene)
    assert example.scene.at(0, -1) is None and example.scene.at(-1, 0) is None
