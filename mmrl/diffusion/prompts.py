"""Prompt sources of the diffusion trainer and sampler: a text file, a JSON-lines file, or an inline list."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mmrl.errors import DataError, read_text


def read_prompt_file(path: str | Path) -> list[dict]:
    """Records ``{"prompt": ..., ...}`` from ``path``: ``.jsonl`` files give one JSON object per line with a
    ``prompt`` field (GenEval's ``evaluation_metadata.jsonl`` as is; other fields are kept), any other file one
    prompt per non-empty line. Errors name the file and line."""
    p = Path(path).expanduser()
    lines = read_text(p, "prompt").splitlines()
    if p.suffix != ".jsonl":
        records = [{"prompt": line.strip()} for line in lines if line.strip()]
    else:
        records = [_json_record(p, i, line) for i, line in enumerate(lines, 1) if line.strip()]
    if not records:
        raise DataError(f"{p}: no prompts")
    return records


def _json_record(path: Path, lineno: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:  # an integer of > 4300 digits; brackets nested thousands deep
        raise DataError(f"{path}:{lineno}: malformed JSON ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise DataError(f"{path}:{lineno}: expected an object with a string 'prompt' field")
    return record


def load_prompts(file: str | None, inline: list[str]) -> list[str]:
    """The prompts of ``file`` when given, else ``inline`` (which must not be empty)."""
    prompts = [r["prompt"] for r in read_prompt_file(file)] if file else list(inline)
    if not prompts:
        raise DataError("no prompts: set prompts.file or prompts.list")
    return prompts


def draw_prompts(prompts: list[str], n: int, generator: torch.Generator) -> list[str]:
    """``n`` prompts drawn uniformly with replacement (seeded)."""
    return [prompts[i] for i in torch.randint(len(prompts), (n,), generator=generator).tolist()]
