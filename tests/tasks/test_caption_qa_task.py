"""The caption_qa task with the rule judge on real synthetic scenes (files written in the task's format): rewards,
grading, the length guard, the data errors, ``mmrl eval caption_qa`` (mean and best-of-N) and the curation
filter."""
from __future__ import annotations

import json
import random

import pytest

from mmrl.cli import main
from mmrl.curate import ImageRow, answer_prompts, curate, keep, parse_mcqs
from mmrl.errors import DataError
from mmrl.eval.caption_qa import load_caption_qa
from mmrl.task import opened
from mmrl.types import LoadContext
from rewards.caption_qa import LETTERS, MCQ
from tasks import synthetic_scenes
from tasks.caption_qa import length_reward

CTX = LoadContext(3136, 12544, "/nonexistent")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    return synthetic_scenes.generate(folder, 12, seed=3)


@pytest.fixture(scope="module")
def task(scenes):
    with opened("caption_qa", {"judge": "rule", "k": 8}) as (task, cfg):
        yield task, cfg, task.samples_from_records(load_caption_qa(scenes), cfg, CTX)


def reward_fields(samples, group: int = 1, step: int = 1):
    rows = [s for s in samples for _ in range(group)]
    return {"qa": [s.fields["qa"] for s in rows], "qa_key": [s.fields["qa_key"] for s in rows], "step": [step] * len(rows)}


def test_reference_captions_score_one_and_empty_captions_zero(task):
    t, cfg, samples = task
    qa = t.reward_functions(cfg)["qa"]
    assert qa([s.answer for s in samples], **reward_fields(samples)) == [1.0] * len(samples)
    assert qa([""] * len(samples), **reward_fields(samples)) == [0.0] * len(samples)
    graded = t.score_batch([s.answer for s in samples] + [""], samples + samples[:1])
    assert [g["qa_accuracy"] for g in graded] == [1.0] * len(samples) + [0.0]
    assert graded[0]["words"] == len(samples[0].answer.split())


SCENE = "4 shapes. Row 1: small red circle, small blue square, empty, empty. Row 2: empty, empty, large red circle, small red triangle."
QUESTIONS = [  # hand-written for SCENE: (question, choices, answer)
    ("How many shapes are there?", ["4", "2", "3", "6"], "A"),
    ("What colour is the square?", ["red", "blue", "green"], "B"),
    ("What shape is the blue one?", ["star", "square", "circle"], "B"),
    ("What size is the blue square?", ["large", "small"], "B"),
    ("What is left of the blue square?", ["the blue circle", "the red circle", "nothing"], "B"),
    ("What colour is the triangle?", ["cyan", "red", "blue"], "B"),
    ("What size is the red triangle?", ["large", "small"], "B"),
    ("What is left of the red triangle?", ["the red circle", "the red square", "nothing"], "A"),
]


def test_a_caption_missing_one_object_loses_exactly_its_questions(task, scenes, tmp_path):
    """Four of the eight questions are about the blue square; blurring it in the caption loses exactly those."""
    t, cfg, _ = task
    row = {"id": "x", "image": str(scenes.parent / json.loads(scenes.read_text().splitlines()[0])["image"]),
           "caption": SCENE, "qa": [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]}
    (tmp_path / "one.jsonl").write_text(json.dumps(row) + "\n")
    sample = t.samples_from_records(load_caption_qa(tmp_path / "one.jsonl"), cfg, CTX)[0]
    damaged = SCENE.replace("small blue square", "blurry thing")
    scores = t.score_batch([SCENE, damaged, SCENE.replace("blue square", "green square")], [sample] * 3)
    assert [s["qa_accuracy"] for s in scores] == [1.0, 0.5, 0.5]


def test_length_guard_by_hand():
    captions = ["one two three", "w " * 50, "w " * 80, "w " * 200]
    assert length_reward(captions, max_words=40) == [0.0, -0.25, -1.0, -1.0]


def test_data_errors_name_the_file_line_and_key(tmp_path, scenes):
    rows = scenes.read_text().splitlines()
    bad = json.loads(rows[0])
    bad["qa"][0]["answer"] = "Z"
    cases = {
        "missing image": {**json.loads(rows[0]), "image": "images/nope.png"},
        "bad answer": bad,
        "no qa": {k: v for k, v in json.loads(rows[0]).items() if k != "qa"},
    }
    for name, row in cases.items():
        path = scenes.parent / f"bad-{name.replace(' ', '_')}.jsonl"
        path.write_text(rows[1] + "\n" + json.dumps(row) + "\n")
        with pytest.raises(DataError, match=f"{path.name}:2"):
            load_caption_qa(path)
    (scenes.parent / "broken.jsonl").write_text(rows[1] + "\n{not json\n")
    with pytest.raises(DataError, match="broken.jsonl:2"):
        load_caption_qa(scenes.parent / "broken.jsonl")


def test_eval_cli_mean_and_best_of_n(tmp_path, scenes, capsys):
    records = load_caption_qa(scenes)
    predictions = tmp_path / "captions.jsonl"
    lines = []
    for r in records:
        lines.append({"id": r.id, "sample": 0, "output": r.caption})
        lines.append({"id": r.id, "sample": 1, "output": ""})
    lines.append({"id": "not-a-scene", "output": "x"})
    predictions.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "metrics.json"
    main(["eval", "caption_qa", "--data", str(scenes), "--predictions", str(predictions), "--output", str(out),
          "--per-sample", str(tmp_path / "rows.jsonl")])
    metrics = json.loads(out.read_text())
    assert metrics["qa_accuracy"] == pytest.approx(0.5) and metrics["qa_accuracy_best_of_n"] == pytest.approx(1.0)
    assert (metrics["n"], metrics["samples"], metrics["missing"], metrics["unmatched"]) == (len(records), 2, 0, 1)
    rows = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(records) and {r["accuracy"] for r in rows} == {0.0, 1.0}
    assert "qa_accuracy_best_of_n" in capsys.readouterr().out


WRITTEN = """Here are the questions.
Question: What colour is the circle?
A. red
B. blue
C. green
D. yellow
Answer: B

Question 2: How many shapes are there?
A. 1
B. 2
Answer: A

Question: Broken, options out of order?
B. one
A. two
Answer: A

Question: Answer names no option
A. x
B. y
Answer: D
"""


def test_parse_mcqs_keeps_only_well_formed_questions():
    assert parse_mcqs(WRITTEN) == [MCQ("What colour is the circle?", ("red", "blue", "green", "yellow"), 1),
                                   MCQ("How many shapes are there?", ("1", "2"), 0)]
    assert parse_mcqs("") == [] and parse_mcqs(None) == [] and parse_mcqs("Question: " * 50_000) == []


def test_curation_keeps_questions_that_need_the_image():
    """A VLM that answers right with the image for the first question only, and without the image always right
    for the second (a text-guessable question): only the first survives."""
    mcqs = parse_mcqs(WRITTEN)

    def answer(samples):
        out = []
        for s in samples:
            question = s.prompt.split("\n")[0]
            options = [line[3:] for line in s.prompt.split("\n")[1:-1]]
            mcq = next(m for m in mcqs if m.question == question)
            right = LETTERS[options.index(mcq.choices[mcq.answer])]
            wrong = LETTERS[(options.index(mcq.choices[mcq.answer]) + 1) % len(options)]
            sees = bool(s.images)
            out.append(right if (sees and mcq is mcqs[0]) or mcq is mcqs[1] else wrong)
        return out

    kept, report = curate([ImageRow("a", "a.png")], lambda samples: [WRITTEN] * len(samples), answer, rotations=4)
    assert kept == [{"id": "a", "image": "a.png", "qa": [{"question": "What colour is the circle?",
                                                          "choices": ["red", "blue", "green", "yellow"],
                                                          "answer": "B"}]}]
    assert [(r["with_image"], r["without_image"], r["kept"]) for r in report] == [(1.0, 0.0, True), (1.0, 1.0, False)]
    assert keep(0.76, 0.24, 0.75, 0.25) and not keep(0.75, 0.0, 0.75, 0.25) and not keep(1.0, 0.25, 0.75, 0.25)


def test_answer_prompts_track_the_right_option():
    mcq = MCQ("Which?", ("a", "b", "c", "d"), 2)
    for prompt, right in answer_prompts(mcq, 20, random.Random(0)):
        line = prompt.split("\n")[1 + right]
        assert line == f"{LETTERS[right]}. c"
