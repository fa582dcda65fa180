"""QA curation for captioning by QA: ``mmrl curate caption_qa`` (CapRL's recipe, arXiv 2509.22647).

CapRL keeps only questions that need the image: a VLM writes ``--questions`` (5) multiple-choice questions per
image; each question is then answered by the VLM ``--rotations`` times with its options shuffled (seeded), once
with the image and once without it (text only); it is kept when

    accuracy with the image  > --with-image-min     (0.75)
    accuracy without it      < --without-image-max  (0.25)

so a question a text model can guess, or one the VLM cannot answer even when it sees the image, is dropped.
``--data`` is JSON lines with at least ``{"id", "image"}`` (rows of the caption-QA layout work too: their own
``qa`` is replaced); ``--out`` gets rows ``{"id", "image", "qa": [kept questions]}`` (images without a kept
question are left out) and ``--report`` one row per written question with both accuracies and the decision.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mmrl.errors import ConfigError, DataError
from mmrl.eval.records import get_file, id_rows
from mmrl.store import atomic_write_text
from mmrl.types import Sample
from rewards.caption_qa import LETTERS, MCQ, mcq_to_dict, parse_letter

WRITE_PROMPT = (
    "Write {n} multiple-choice questions about this image that can only be answered by looking at it. "
    "Give each question four options and its answer, in exactly this format:\n"
    "Question: <question>\nA. <option>\nB. <option>\nC. <option>\nD. <option>\nAnswer: <letter>")
ANSWER_PROMPT = "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
ANSWER_TOKENS = 16
"""Length cap of an answer (a letter, perhaps with a few words around it)."""

_BLOCK = re.compile(r"Question\s*\d*\s*[:.]\s*(?P<question>[^\n]+)\n(?P<body>(?:[^\n]*\n?){2,9}?)"
                    r"\s*Answer\s*[:.]\s*\**\(?(?P<answer>[A-H])\b")
_OPTION = re.compile(r"^\s*\(?([A-H])[.):]\s*(.+?)\s*$")


@dataclass
class ImageRow:
    id: str
    image: str
    """Absolute path."""


def load_images(path: str | Path) -> list[ImageRow]:
    """``{"id", "image"}`` rows of a JSONL (other fields ignored); ``DataError`` naming the file, line and key."""
    path = Path(path)
    return [ImageRow(rid, str(get_file(raw, "image", path.parent, where)))
            for where, rid, raw in id_rows(path, "image list")]


def parse_mcqs(text: str) -> list[MCQ]:
    """The well-formed questions in a VLM's answer to ``WRITE_PROMPT``: a ``Question:`` line, 2-8 lettered options
    A, B, C... in order, and an ``Answer:`` letter naming one of them; anything else is skipped, never raised on."""
    if not isinstance(text, str):
        return []
    found = []
    for block in _BLOCK.finditer(text[:100_000]):
        options = [m.groups() for m in map(_OPTION.match, block["body"].splitlines()) if m]
        letters = "".join(letter for letter, _ in options)
        choices = tuple(choice for _, choice in options)
        answer = LETTERS.find(block["answer"])
        if (2 <= len(options) <= 8 and letters == LETTERS[:len(options)] and answer < len(options)
                and len(set(choices)) == len(choices)):
            found.append(MCQ(block["question"].strip(), choices, answer))
    return found


def answer_prompts(mcq: MCQ, rotations: int, rng: random.Random) -> list[tuple[str, int]]:
    """``rotations`` prompts of ``mcq`` with its options shuffled, each with the index of the right option."""
    prompts = []
    for _ in range(rotations):
        order = list(range(len(mcq.choices)))
        rng.shuffle(order)
        options = "\n".join(f"{LETTERS[i]}. {mcq.choices[j]}" for i, j in enumerate(order))
        prompts.append((ANSWER_PROMPT.format(question=mcq.question, options=options), order.index(mcq.answer)))
    return prompts


def accuracy(answers: list[str], correct: list[int], n_options: int) -> float:
    """Share of ``answers`` whose first option letter (``parse_letter``) is the right one."""
    return sum(parse_letter(a, n_options) == c for a, c in zip(answers, correct)) / max(len(correct), 1)


def keep(with_image: float, without_image: float, with_min: float, without_max: float) -> bool:
    """CapRL's filter: answerable with the image, not without it."""
    return with_image > with_min and without_image < without_max


def curate(rows: list[ImageRow], write, answer, *, questions: int = 5, rotations: int = 4, with_min: float = 0.75,
           without_max: float = 0.25, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(kept rows, report rows)``. ``write(samples)`` and ``answer(samples)`` return the VLM's text for each
    ``mmrl.types.Sample`` (greedy decoding of the curating checkpoint, with a long and a short length cap). Three
    batched passes: write the questions, answer every rotation with the image, answer every rotation without it."""
    written = write([Sample(id=r.id, prompt=WRITE_PROMPT.format(n=questions), images=[r.image]) for r in rows])
    mcqs = [(r, q) for r, text in zip(rows, written) for q in parse_mcqs(text)[:questions]]
    rng = random.Random(seed)
    asked = [(r, q, answer_prompts(q, rotations, rng)) for r, q in mcqs]
    prompts = [(r, p) for r, _, ps in asked for p, _ in ps]
    with_image = answer([Sample(id=r.id, prompt=p, images=[r.image]) for r, p in prompts])
    without_image = answer([Sample(id=r.id, prompt=p) for r, p in prompts])
    kept: dict[str, dict[str, Any]] = {}
    report = []
    for n, (r, q, ps) in enumerate(asked):
        span = slice(n * rotations, (n + 1) * rotations)
        correct = [c for _, c in ps]
        acc_with = accuracy(with_image[span], correct, len(q.choices))
        acc_without = accuracy(without_image[span], correct, len(q.choices))
        decision = keep(acc_with, acc_without, with_min, without_max)
        report.append({"id": r.id, **mcq_to_dict(q), "with_image": acc_with, "without_image": acc_without,
                       "kept": decision})
        if decision:
            kept.setdefault(r.id, {"id": r.id, "image": r.image, "qa": []})["qa"].append(mcq_to_dict(q))
    return list(kept.values()), report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("CapRL QA curation: a VLM writes multiple-choice questions per image; a question is kept "
                          "when the VLM answers it with the image (accuracy > --with-image-min) but not without it "
                          "(accuracy < --without-image-max), each over --rotations shuffles of its options.")
    parser.add_argument("--data", required=True, help='JSON lines with {"id", "image"} (image relative to the file)')
    parser.add_argument("--model", required=True, help="the VLM checkpoint that writes and answers the questions")
    parser.add_argument("--out", required=True, help='write {"id", "image", "qa"} rows of the kept questions here')
    parser.add_argument("--report", help="write every written question with both accuracies and the decision here")
    parser.add_argument("--questions", type=int, default=5, help="questions written per image (default 5)")
    parser.add_argument("--rotations", type=int, default=4, help="option shuffles each question is asked with")
    parser.add_argument("--with-image-min", type=float, default=0.75, help="keep above this accuracy with the image")
    parser.add_argument("--without-image-max", type=float, default=0.25,
                        help="keep below this accuracy without the image")
    parser.add_argument("--seed", type=int, default=0, help="seed of the option shuffles")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="length cap of the written questions")


def run(args: argparse.Namespace) -> int:
    """``mmrl curate caption_qa``: write the kept questions and print how many survived."""
    from mmrl.config import AT_LEAST_1, PROBABILITY, ModelConfig, check_options
    from mmrl.data import media_cache
    from mmrl.evaluate import generate_outputs
    from mmrl.models.load import load_policy, model_family, placeholder_ids

    check_options(args, {"questions": AT_LEAST_1, "rotations": AT_LEAST_1, "batch_size": AT_LEAST_1,
                         "max_new_tokens": AT_LEAST_1, "with_image_min": PROBABILITY, "without_image_max": PROBABILITY})
    for option, file in (("--out", args.out), ("--report", args.report)):
        if file is not None and Path(file).is_dir():
            raise ConfigError(f"{option} {file}: is a folder, expected a file to write")
    rows = load_images(args.data)
    if not rows:
        raise DataError(f"{args.data}: no records")
    cfg = ModelConfig(path=args.model)
    model, processor, _ = load_policy(cfg)
    media = media_cache(cfg, model_family(cfg))

    def generate(samples: list[Sample], max_new_tokens: int) -> list[str]:
        return generate_outputs(model, processor, samples, media, batch_size=args.batch_size,
                                max_new_tokens=max_new_tokens, suppress_ids=placeholder_ids(processor.tokenizer),
                                desc="curate")

    kept, report = curate(rows, partial(generate, max_new_tokens=args.max_new_tokens),
                          partial(generate, max_new_tokens=ANSWER_TOKENS), questions=args.questions,
                          rotations=args.rotations, with_min=args.with_image_min,
                          without_max=args.without_image_max, seed=args.seed)
    out = Path(args.out)
    atomic_write_text(out, "".join(json.dumps({**row, "image": str(Path(row["image"]).resolve())}) + "\n"
                                   for row in kept))
    if args.report is not None:
        atomic_write_text(args.report, "".join(json.dumps(row) + "\n" for row in report))
    n_kept = sum(len(row["qa"]) for row in kept)
    print(f"{len(report)} questions written for {len(rows)} images, {n_kept} kept ({len(kept)} images) -> {out}")
    return 0
