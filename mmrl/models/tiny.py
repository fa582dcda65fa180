"""Tiny Qwen2-VL / Qwen2.5-VL checkpoints written locally, loadable with ``from_pretrained``.

Model hubs are unreachable on the development machines, so tests and the tiny default run use checkpoints made
here: random weights, a byte-level BPE tokenizer trained on a small local corpus that carries Qwen's special
tokens, Qwen's image processor, and a Qwen-style chat template. The folder loads through exactly the calls users
make on real checkpoints: ``AutoProcessor.from_pretrained`` and ``AutoModelForImageTextToText.from_pretrained``.

Digits are split one per token (``pre_tokenizers.Digits(individual_digits=True)``), as in Qwen's own tokenizer,
so a coordinate such as ``(57, 83)`` is a short, regular token sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mmrl.errors import ConfigError

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
"""Qwen2-VL's special tokens, in Qwen's order; they get the first ids of the tiny vocabulary."""

VISION_PLACEHOLDERS = ("<|image_pad|>", "<|video_pad|>", "<|vision_pad|>", "<|vision_start|>", "<|vision_end|>")
"""Tokens a completion must never contain: the processor alone places them (see ``mmrl.rollout``)."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-VL's chat layout (system default, ``<|im_start|>role\\n ... <|im_end|>\\n``, vision placeholders)."""


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny model. ``text_hidden`` must equal the vision tower's output width."""

    vocab_size: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    rope_theta: float = 10.0
    """Rotary base of the text model. Qwen2.5-VL's M-RoPE gives the width axis the lowest frequencies; with
    Qwen's 1e6 (or 1e4) and a 32-dim head those rotate by < 0.003 rad per image column, so a tiny model cannot
    tell columns apart from rotary phase. At 10 the width section turns 0.12-0.24 rad per column. (Measured
    here: the 56x56 default localises with it; at 112x112 neither 1e4 nor 10 left chance within 1,500 SFT
    steps, so it is a precaution, not a proven win.)"""


SIZES = {
    "tiny": TinySpec(512, 128, 4, 4, 2, 256, 128, 2, 4, 256),
    "small": TinySpec(1024, 256, 6, 8, 4, 768, 256, 4, 8, 768),
}
FAMILIES = ("qwen2_5_vl", "qwen2_vl")


def _corpus() -> list[str]:
    """Text the tokenizer learns merges from: chat scaffolding, task phrasing, common words."""
    words = (
        "click the button icon word text label menu search settings save open close cancel submit home back "
        "next login logout profile help edit delete add new file view window tab red orange yellow green blue "
        "purple pink brown black white gray circle square triangle star outline position corresponding to "
        "instruction output should be only answer think start end seconds video image frame object box point "
        "where is located describe what happens when a person in this you are helpful assistant system user"
    ).split()
    lines = [" ".join(words[i : i + 7]) for i in range(0, len(words), 3)]
    lines += [f"({x}, {y}) [{x},{y},{x + 9},{y + 9}]" for x in range(0, 100, 7) for y in range(0, 100, 11)]
    lines += ["<answer>12.5 to 20.1</answer>", '{"start_time": 3.0, "end_time": 7.5}', "Outline the position."]
    return lines * 4


def build_tokenizer(vocab_size: int):
    """Train a byte-level BPE tokenizer (digits split individually) with Qwen's special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=32768,
    )


def _mrope_section(head_dim: int) -> list[int]:
    """Split ``head_dim / 2`` rotary frequencies over (time, height, width) in Qwen's 1:1.5:1.5 proportion."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def build_config(family: str, spec: TinySpec, tokenizer):
    """The model config for ``family`` at ``spec`` sizes, with special-token ids read from ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = spec.text_hidden // spec.text_heads
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta, "mrope_section": _mrope_section(head_dim)},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    if family == "qwen2_5_vl":
        vision = dict(
            depth=spec.vision_layers,
            hidden_size=spec.vision_hidden,
            intermediate_size=spec.vision_intermediate,
            num_heads=spec.vision_heads,
            out_hidden_size=spec.text_hidden,
            window_size=112,
            fullatt_block_indexes=[spec.vision_layers - 1],
            tokens_per_second=2,
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    if family == "qwen2_vl":
        vision = dict(
            depth=spec.vision_layers,
            embed_dim=spec.vision_hidden,
            hidden_size=spec.text_hidden,
            mlp_ratio=spec.vision_intermediate // spec.vision_hidden,
            num_heads=spec.vision_heads,
        )
        return Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    raise ConfigError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")


def validate_config(config) -> None:
    """Raise ``ConfigError`` on settings that make transformers fail later with an obscure message.

    A vision output width that differs from the text width makes transformers report "Image features and image
    tokens do not match, tokens: N, features: N" (equal numbers); say what is actually wrong instead.
    """
    text, vision = config.text_config, config.vision_config
    out = getattr(vision, "out_hidden_size", None) or vision.hidden_size
    if out != text.hidden_size:
        raise ConfigError(
            f"vision output width {out} != text hidden_size {text.hidden_size}: the merger's output feeds the "
            "text model's embedding, so they must be equal"
        )
    head_dim = text.hidden_size // text.num_attention_heads
    section = text.rope_parameters.get("mrope_section", [])
    if sum(section) != head_dim // 2:
        raise ConfigError(f"mrope_section {section} must sum to head_dim/2 = {head_dim // 2}")
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        if not 0 <= getattr(config, name) < text.vocab_size:
            raise ConfigError(f"{name}={getattr(config, name)} is outside the vocabulary (size {text.vocab_size})")


def build_processor(tokenizer, family: str):
    """Qwen's image and video processors around ``tokenizer``, with the chat template attached."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    pixels = dict(min_pixels=56 * 56, max_pixels=28 * 28 * 256)
    cls = Qwen2_5_VLProcessor if family == "qwen2_5_vl" else Qwen2VLProcessor
    return cls(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def make_tiny(out_dir: str | Path, family: str = "qwen2_5_vl", size: str = "tiny", seed: int = 0,
              rope_theta: float | None = None) -> Path:
    """Write a complete tiny checkpoint (config, safetensors, tokenizer, processor, chat template) to ``out_dir``;
    ``rope_theta`` replaces the size's rotary base (see ``TinySpec.rope_theta``)."""
    from transformers import AutoModelForImageTextToText

    if size not in SIZES:
        raise ConfigError(f"unknown tiny size {size!r}; valid: {', '.join(SIZES)}")
    out = Path(out_dir)
    spec = SIZES[size] if rope_theta is None else replace(SIZES[size], rope_theta=rope_theta)
    tokenizer = build_tokenizer(spec.vocab_size)
    config = build_config(family, spec, tokenizer)
    validate_config(config)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    build_processor(tokenizer, family).save_pretrained(out)
    return out
