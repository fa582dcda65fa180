"""A CLIP tokenizer written locally, for the tiny text encoders of diffusion pipelines and CLIP-based rewards.

CLIP's tokenizer is a lower-casing BPE over words with an end-of-word marker ``</w>``. With model hubs
unreachable, the tiny checkpoints use a character-level version of it: every printable ASCII character, alone
and as a word ending, and no merges. ``CLIPTokenizer`` / ``CLIPTokenizerFast.from_pretrained`` load the folder
exactly as they load OpenAI's files (``vocab.json``, ``merges.txt``).
"""
from __future__ import annotations

import json
import string
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def clip_vocab() -> dict[str, int]:
    """Character-level CLIP vocabulary: each printable, non-space, lower-case ASCII character ``c`` as ``c`` and
    ``c</w>``, then the start and end tokens (CLIP puts them last as well)."""
    chars = sorted(set(string.printable.lower()) - set(string.whitespace))
    tokens = chars + [c + "</w>" for c in chars] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def write_clip_tokenizer(out_dir: str | Path, max_length: int = 77):
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` into ``out_dir`` and return the loaded
    ``CLIPTokenizer`` (its ``len()`` is the text encoder's vocabulary size; the pad token is the end token)."""
    from transformers import CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(clip_vocab()))
    (out / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), pad_token=EOS,
                              model_max_length=max_length)
    tokenizer.save_pretrained(out)
    return tokenizer
