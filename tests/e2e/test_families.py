"""Every model family end to end through the CLI on its tiny checkpoint (CPU, seconds each): GUI grounding for
qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_5 and smolvlm (the generic adapter, with its one-line notice), temporal
grounding for qwen3_vl; the prompts ask for the family's coordinate convention; a checkpoint that is not
image-text-to-text is refused with one error naming its model type."""
from __future__ import annotations

import json
import re

import pytest

from mmrl.cli import main
from mmrl.errors import ConfigError
from mmrl.plugins import MODEL_FAMILIES

pytestmark = pytest.mark.slow

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "smolvlm"]
NOTICE = "shared-prefix log-probs off"


def run_cli(args: list[str], capsys) -> str:
    main(args)
    return capsys.readouterr().out


@pytest.fixture()
def short(tiny_cache, tmp_path):
    """Overrides that keep a run to seconds: 3 RL steps after 5 SFT steps, as the issue's command, on less data."""
    return [f"output_dir={tmp_path / 'run'}", f"model.cache_dir={tiny_cache}", "progress=false",
            "grpo.steps=3", "sft.steps=5", "sft.batch_size=4", "grpo.prompts_per_step=2", "grpo.group_size=4",
            "grpo.max_new_tokens=6", "grpo.micro_batch_size=8", "eval.max_new_tokens=6"]


@pytest.mark.parametrize("family", FAMILIES)
def test_gui_grounding_trains_on_every_family(family, short, tmp_path, capsys):
    out = run_cli(["train", "gui_grounding", f"model.tiny_family={family}", "data.synthetic.n_train=16",
                   "data.synthetic.n_eval=4", *short], capsys)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["after"]["n"] == 4 and 0 <= summary["after"]["accuracy"] <= 1
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    shared = family in MODEL_FAMILIES and MODEL_FAMILIES.capability(family, "shared_prefix")
    assert (NOTICE in out) is not shared, out
    group = json.loads((tmp_path / "run" / "rollouts" / "step_000001.jsonl").read_text().splitlines()[0])
    coords = MODEL_FAMILIES.capability(family if family in MODEL_FAMILIES else "generic", "coords")
    assert ("from 0 to 1000" in group["prompt"]) is (coords == "0-1000"), group["prompt"]
    # the tiny config's 56x56 screenshots: 0-1000 units are 0.056 px; Qwen2.5-VL sees them as they are (56 = 2 x 28)
    sx, sy = group["fields"]["scale"]
    assert (sx, sy) == pytest.approx((0.056, 0.056) if coords == "0-1000" else (1.0, 1.0))
    x1, y1, x2, y2 = group["fields"]["gt_box"]
    assert tuple(int(v) for v in re.findall(r"\d+", group["answer"])) == (round((x1 + x2) / 2 / sx),
                                                                          round((y1 + y2) / 2 / sy))

def test_temporal_grounding_trains_on_qwen3_vl(tiny_cache, tmp_path, capsys):
    out = run_cli(["train", "temporal_grounding", "model.tiny_family=qwen3_vl", f"output_dir={tmp_path / 'run'}",
                   f"model.cache_dir={tiny_cache}", "progress=false", "grpo.steps=3", "sft.steps=5",
                   "sft.batch_size=4", "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.max_new_tokens=8",
                   "grpo.micro_batch_size=8", "eval.max_new_tokens=8", "data.synthetic.n_train=6",
                   "data.synthetic.n_eval=2"], capsys)
    assert NOTICE not in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["after"]["n"] == 2 and 0 <= summary["after"]["miou"] <= 1


def test_a_text_only_checkpoint_is_refused_naming_its_model_type(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmrl.config import ModelConfig
    from mmrl.models.load import load_policy

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "llama")
    with pytest.raises(ConfigError, match=r"model type 'llama' is not an image-text-to-text model"):
        load_policy(ModelConfig(path=str(tmp_path / "llama")))
