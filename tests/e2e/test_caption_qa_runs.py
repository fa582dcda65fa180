"""Captioning by QA end to end on the tiny Qwen2.5-VL (CPU, seconds): the main job's shipped config shortened, the
rollout inspector redrawing a logged caption's questions with the judge's answers (they must add up to the logged
reward), ``mmrl eval caption_qa --model``, and a run whose judge breaks (it scores 0, counted, and training goes
on)."""
from __future__ import annotations

import json

import pytest

from mmrl.cli import main
from mmrl.demo.runs import RunView, Sample
from mmrl.plugins import QA_JUDGES, RENDERERS
from tasks import caption_qa

pytestmark = pytest.mark.slow

SHORT = ["progress=false", "data.synthetic.n_train=32", "data.synthetic.n_eval=6", "sft.steps=3", "sft.batch_size=4",
         "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.max_new_tokens=24",
         "grpo.micro_batch_size=8", "eval.max_new_tokens=24", "save_every=1"]


@pytest.fixture(scope="module")
def run_dir(tiny_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("caption") / "run"
    main(["train", "caption_qa", f"output_dir={out}", f"model.cache_dir={tiny_cache}", *SHORT])
    return out


def test_shipped_config_shortened_writes_before_and_after(run_dir, tiny_cache, tmp_path):
    summary = json.loads((run_dir / "summary.json").read_text())
    for phase in ("before", "after"):
        assert set(summary[phase]) == {"qa_accuracy", "words", "n"} and summary[phase]["n"] == 6
        assert 0.0 <= summary[phase]["qa_accuracy"] <= 1.0
    groups = [json.loads(x) for x in (run_dir / "rollouts" / "step_000002.jsonl").read_text().splitlines()]
    assert len(groups) == 2 and set(groups[0]["rewards"]) == {"qa", "length"}
    scenes = next((tiny_cache / "data").glob("caption_qa_synthetic-eval-*/scenes.jsonl"))
    main(["eval", "caption_qa", "--data", str(scenes), "--model", str(run_dir / "final"), "--samples", "2",
          "--max-new-tokens", "24", "--output", str(tmp_path / "metrics.json")])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n"] == 6 and metrics["samples"] == 2
    assert metrics["qa_accuracy"] <= metrics["qa_accuracy_best_of_n"]


def test_the_inspector_redraws_the_rewards_questions(run_dir, monkeypatch):
    """Each caption's picture lists the K questions its reward drew, with the judge's answers: their share of right
    ones is the reward. The 3-step cold start's captions are unreadable (all wrong, whatever is drawn), so the
    check uses the logged group's reference caption with its first object blurred: right on some questions and
    not others, so the share depends on which questions each completion drew."""
    from mmrl.task import opened

    view = RunView(run_dir)
    group = json.loads((run_dir / "rollouts" / "step_000002.jsonl").read_text().splitlines()[0])
    first = next(c for c in group["answer"].split(": ")[1].split(", ") if c != "empty").rstrip(".")
    captions = [group["answer"].replace(first, "blurry thing", 1)] * 4
    fields = {"qa": [group["fields"]["qa"]] * 4, "qa_key": [group["fields"]["qa_key"]] * 4, "step": [2] * 4}
    k = view.config()["data"]["k"]  # the run's K (the shipped config's)
    with opened("caption_qa", {"k": k}) as (task, cfg):
        rewards = task.reward_functions(cfg)["qa"](captions, **fields)
    rows_seen = []
    monkeypatch.setattr(caption_qa, "text_panel", lambda picture, caption, rows: rows_seen.append(rows) or picture)
    for index, caption in enumerate(captions):
        sample = Sample(group=0, index=index, total=None, advantage=None, rewards={}, completion=caption)
        RENDERERS.get("caption_qa")(view, group, sample, {})
        assert len(rows_seen[-1]) == k
        assert sum(ok for *_, ok in rows_seen[-1]) / k == pytest.approx(rewards[index])
    assert len(set(rewards)) > 1 or 0.0 < rewards[0] < 1.0
    logged = Sample(group=0, index=1, total=None, advantage=None, rewards={}, completion=group["completions"][1])
    RENDERERS.get("caption_qa")(view, group, logged, {})
    assert sum(ok for *_, ok in rows_seen[-1]) / k == pytest.approx(group["rewards"]["qa"][1])


class BrokenJudge:
    def answer(self, queries):
        raise RuntimeError("judge out of memory")

    def close(self):
        pass


def test_a_broken_judge_scores_zero_and_training_goes_on(tiny_cache, tmp_path):
    QA_JUDGES.register("broken_for_test", BrokenJudge)
    try:
        with pytest.warns(UserWarning, match="judge failed"):
            main(["train", "caption_qa", f"output_dir={tmp_path / 'run'}", f"model.cache_dir={tiny_cache}", *SHORT,
                  "data.judge=broken_for_test"])
    finally:
        QA_JUDGES.unregister("broken_for_test")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["after"]["qa_accuracy"] == 0.0
    groups = [json.loads(x) for x in (tmp_path / "run" / "rollouts" / "step_000002.jsonl").read_text().splitlines()]
    assert all(v == 0.0 for g in groups for v in g["rewards"]["qa"])


def test_curate_runs_a_real_checkpoint_through_all_three_passes(run_dir, tiny_cache, tmp_path, capsys):
    """The tiny model writes no well-formed question (the filter's logic is tested in
    tests/tasks/test_caption_qa_task.py); this runs the checkpoint through the command and its files."""
    scenes = next((tiny_cache / "data").glob("caption_qa_synthetic-eval-*/scenes.jsonl"))
    out, report = tmp_path / "kept.jsonl", tmp_path / "report.jsonl"
    main(["curate", "caption_qa", "--data", str(scenes), "--model", str(run_dir / "final"), "--out", str(out),
          "--report", str(report), "--max-new-tokens", "32", "--rotations", "2"])
    printed = capsys.readouterr().out
    assert "questions written for 6 images" in printed and out.is_file() and report.is_file()
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    rows = [json.loads(x) for x in report.read_text().splitlines()]
    assert sum(len(k["qa"]) for k in kept) == sum(r["kept"] for r in rows)
