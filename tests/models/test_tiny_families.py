"""Tests for every family of mmrl.models.tiny: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5 and SmolVLM.

Each checkpoint goes through the files on disk and the Auto classes users call on real ones. The chat template and
processor must place exactly as many image (and video) placeholders as the vision tower produces features, which
the tests count on both sides; the special-token ids in the config must be the tokenizer's.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmrl.errors import ConfigError
from mmrl.models.load import placeholder_ids
from mmrl.models.tiny import FAMILIES, SIZES, build_config, build_tokenizer, make_tiny, validate_config

QWEN_IDS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
# family: (architecture, processor, config id fields -> token, eos token)
EXPECTED = {
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", QWEN_IDS, "<|im_end|>"),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", QWEN_IDS, "<|im_end|>"),
    "qwen3_5": ("Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor", QWEN_IDS, "<|im_end|>"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", QWEN_IDS, "<|im_end|>"),
    "smolvlm": ("SmolVLMForConditionalGeneration", "SmolVLMProcessor", {"image_token_id": "<image>"},
                "<end_of_utterance>"),
}
# family: {(width, height): image placeholders}. Qwen2: 14-px patches, 2x2 merge (factor 28); Qwen3: 16-px patches
# (factor 32), so 56, 64, 50 and 70 all round to 64 = 2x2 tokens, 96 to 3; SmolVLM squares every image to 64 px,
# 8-px patches, pixel shuffle 2: 16 tokens.
QWEN3_IMAGES = {(56, 56): 4, (64, 64): 4, (50, 70): 4, (96, 64): 6}
IMAGE_TOKENS = {
    "qwen2_5_vl": {(56, 56): 4, (112, 112): 16},
    "qwen2_vl": {(56, 56): 4, (112, 112): 16},
    "qwen3_5": QWEN3_IMAGES,
    "qwen3_vl": QWEN3_IMAGES,
    "smolvlm": {(56, 56): 16, (64, 64): 16, (50, 70): 16},
}
IMAGE_CASES = [
    pytest.param(family, size, id=f"{family}-{size[0]}x{size[1]}")
    for family in FAMILIES
    for size in IMAGE_TOKENS[family]
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(path, processor, model)`` of one tiny checkpoint per family, made and loaded once, lazily."""

    @functools.cache
    def get(family: str):
        path = make_tiny(tmp_path_factory.mktemp(family) / "ckpt", family=family)
        return path, AutoProcessor.from_pretrained(path), AutoModelForImageTextToText.from_pretrained(path).eval()

    return get


@pytest.fixture(scope="module")
def loaded(tiny):
    """``(processor, model)`` of a family's tiny checkpoint."""
    return lambda family: tiny(family)[1:]


def turn(kind: str = "image", text: str = "click the button"):
    return [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": text}]}]


def feature_rows(model, batch, kind: str = "image") -> int:
    """How many embeddings the vision tower (after its merger / connector) gives for the batch's images or video."""
    inner = model.model
    if kind == "image":
        keys = ("pixel_values", "image_grid_thw", "pixel_attention_mask")
        out = inner.get_image_features(**{k: batch[k] for k in keys if k in batch})
    else:
        out = inner.get_video_features(pixel_values_videos=batch["pixel_values_videos"],
                                       video_grid_thw=batch["video_grid_thw"])
    parts = out.pooler_output if isinstance(out.pooler_output, (list, tuple)) else [out.pooler_output]
    return sum(p.reshape(-1, p.shape[-1]).shape[0] for p in parts)


def forward_and_generate(model, batch, vocab: int) -> None:
    with torch.no_grad():
        logits = model(**batch).logits
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    prompt = batch["input_ids"]
    assert logits.shape == (1, prompt.shape[1], vocab)
    assert torch.isfinite(logits).all()
    assert 1 <= out.shape[1] - prompt.shape[1] <= 3
    assert torch.equal(out[:, : prompt.shape[1]], prompt)


# ---------------------------------------------------------------- checkpoint files and ids


def test_families():
    assert FAMILIES == ("qwen2_5_vl", "qwen2_vl", "qwen3_5", "qwen3_vl", "smolvlm")


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_loads_and_ids_match_the_tokenizer(tiny, family):
    architecture, processor_class, fields, eos = EXPECTED[family]
    path, processor, model = tiny(family)
    assert type(model).__name__ == architecture
    assert type(processor).__name__ == processor_class
    tok = processor.tokenizer
    cfg = json.loads((path / "config.json").read_text())
    gen = json.loads((path / "generation_config.json").read_text())
    assert cfg["text_config"]["vocab_size"] == len(tok)
    for field, token in fields.items():
        assert cfg[field] == tok.convert_tokens_to_ids(token), field
        assert tok(token, add_special_tokens=False)["input_ids"] == [cfg[field]]  # one token, not pieces
    eos_id, pad_id = tok.convert_tokens_to_ids(eos), tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.eos_token == eos and tok.eos_token_id == eos_id
    assert cfg["text_config"]["eos_token_id"] == gen["eos_token_id"] == eos_id
    assert tok.pad_token_id == pad_id == gen["pad_token_id"] == cfg["text_config"]["pad_token_id"]
    ids = [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", eos, "<|endoftext|>", *fields.values())]
    assert len(set(ids)) == len(ids) and all(0 <= i < len(tok) for i in ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_digits_are_one_token_each(loaded, family):
    tok = loaded(family)[0].tokenizer
    pieces = tok.convert_ids_to_tokens(tok("(57, 83)", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["5", "7", "8", "3"]
    text = "(57, 83) [10,20,30,40]"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.parametrize("family", FAMILIES)
def test_sizes_validate(family):
    for spec in SIZES.values():
        validate_config(build_config(family, spec, build_tokenizer(spec.vocab_size, family)))


@pytest.mark.parametrize("family", ["qwen3_vl", "smolvlm"])
def test_make_tiny_is_deterministic_for_a_seed(tiny, tmp_path, family):
    from safetensors.torch import load_file

    a = load_file(tiny(family)[0] / "model.safetensors")
    b = load_file(make_tiny(tmp_path / "again", family=family, seed=0) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_family_lists_the_valid_ones(tmp_path):
    valid = "valid: qwen2_5_vl, qwen2_vl, qwen3_5, qwen3_vl, smolvlm"
    with pytest.raises(ConfigError, match=f"'llava'.*{valid}"):
        make_tiny(tmp_path / "x", family="llava")
    with pytest.raises(ConfigError, match=valid):
        build_tokenizer(512, "llava")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- images


@pytest.mark.parametrize(("family", "size"), IMAGE_CASES)
def test_image_placeholders_match_the_vision_tower(loaded, family, size):
    processor, model = loaded(family)
    text = processor.apply_chat_template(turn(), add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], images=[Image.new("RGB", size, (200, 30, 30))], return_tensors="pt")
    placeholders = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert placeholders == IMAGE_TOKENS[family][size]
    with torch.no_grad():
        assert feature_rows(model, batch) == placeholders
    forward_and_generate(model, batch, len(processor.tokenizer))


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_vl"])
def test_qwen3_chat_template_layout(loaded, family):
    processor = loaded(family)[0]
    text = processor.apply_chat_template(turn(text="Where is it?"), add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Where is it?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    batch = processor(text=[text], images=[Image.new("RGB", (56, 56))], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]  # 56 -> 64 px = 4 patches of 16 a side
    assert "mm_token_type_ids" in batch


def test_smolvlm_chat_template_and_expansion(loaded):
    processor = loaded("smolvlm")[0]
    text = processor.apply_chat_template(turn(text="Where is it?"), add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>User:<image>Where is it?<end_of_utterance>\nAssistant:"
    batch = processor(text=[text], images=[Image.new("RGB", (56, 56))], return_tensors="pt")
    image = "<fake_token_around_image><global-img>" + "<image>" * 16 + "<fake_token_around_image>"
    assert processor.tokenizer.decode(batch["input_ids"][0]) == (
        f"<|im_start|>User:{image}Where is it?<end_of_utterance>\nAssistant:"
    )


def test_smolvlm_image_splitting_on_request(loaded):
    processor, model = loaded("smolvlm")
    text = processor.apply_chat_template(turn(), add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], images=[Image.new("RGB", (112, 112))], do_image_splitting=True,
                      return_tensors="pt")
    decoded = processor.tokenizer.decode(batch["input_ids"][0])
    # Scaled to 256 px and cut into 4x4 tiles of 64 px, plus the global view: 17 x 16 tokens.
    assert "<row_4_col_4>" in decoded and "<global-img>" in decoded
    placeholders = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert placeholders == 17 * 16
    with torch.no_grad():
        assert feature_rows(model, batch) == placeholders
        assert torch.isfinite(model(**batch).logits).all()


def test_placeholder_ids_of_smolvlm(loaded):
    tok = loaded("smolvlm")[0].tokenizer
    ids = placeholder_ids(tok)
    for token in ("<image>", "<fake_token_around_image>", "<global-img>", "<row_1_col_1>", "<row_6_col_6>"):
        assert tok.convert_tokens_to_ids(token) in ids
    assert tok.eos_token_id not in ids and tok.pad_token_id not in ids
    assert tok.convert_tokens_to_ids("<|im_start|>") not in ids


# ---------------------------------------------------------------- video


def frames(n: int = 4, side: int = 56) -> list[Image.Image]:
    return [Image.new("RGB", (side, side), (60 * i, 100, 200 - 40 * i)) for i in range(n)]


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_vl"])
@pytest.mark.parametrize("as_array", [False, True])
def test_qwen3_video_has_textual_timestamps(loaded, family, as_array):
    processor, model = loaded(family)
    video = np.stack([np.asarray(f) for f in frames()]) if as_array else frames()
    text = processor.apply_chat_template(turn("video", "what happens"), add_generation_prompt=True, tokenize=False)
    assert "<|vision_start|><|video_pad|><|vision_end|>what happens" in text
    # 4 frames at 1 fps, 2 frames per temporal patch: patches centred on 0.5 s and 2.5 s.
    batch = processor(text=[text], videos=[video], video_metadata=[{"fps": 1.0, "total_num_frames": 4}],
                      return_tensors="pt")
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4]]
    pads = "<|video_pad|>" * 4
    decoded = processor.tokenizer.decode(batch["input_ids"][0])
    # As with Qwen3-VL's own template: each temporal patch gets its timestamp and start/end pair, inside the
    # template's pair.
    assert (
        f"<|vision_start|><0.5 seconds><|vision_start|>{pads}<|vision_end|>"
        f"<2.5 seconds><|vision_start|>{pads}<|vision_end|><|vision_end|>what happens"
    ) in decoded
    placeholders = int((batch["input_ids"] == model.config.video_token_id).sum())
    assert placeholders == 8
    with torch.no_grad():
        assert feature_rows(model, batch, "video") == placeholders
    forward_and_generate(model, batch, len(processor.tokenizer))


def test_smolvlm_video(loaded):
    processor, model = loaded("smolvlm")
    text = processor.apply_chat_template(turn("video", "what happens"), add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>User: <video>what happens<end_of_utterance>\nAssistant:"
    # SmolVLM's processor writes each frame's time, so it needs the frames' indices and the clip's fps.
    metadata = {"fps": 1.0, "total_num_frames": 4, "duration": 4.0, "frames_indices": [0, 1, 2, 3]}
    batch = processor(text=[text], videos=[frames()], video_metadata=[metadata], return_tensors="pt")
    decoded = processor.tokenizer.decode(batch["input_ids"][0])
    assert "series of four frames from a 0:00:04 [H:MM:SS] video" in decoded
    assert "\nFrame from 00:03:<fake_token_around_image><global-img>" in decoded
    placeholders = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert placeholders == 4 * 16
    forward_and_generate(model, batch, len(processor.tokenizer))


# ---------------------------------------------------------------- validate_config


def test_validate_config_mrope_section_with_partial_rotary():
    # Qwen3.5 rotates a quarter of each 32-dim head: 8 dims, so the section sums to 4 ([2, 1, 1]).
    tok = build_tokenizer(SIZES["tiny"].vocab_size, "qwen3_5")
    cfg = build_config("qwen3_5", SIZES["tiny"], tok)
    assert cfg.text_config.rope_parameters["mrope_section"] == [2, 1, 1]
    cfg.text_config.rope_parameters["mrope_section"] = [6, 5, 5]
    with pytest.raises(ConfigError, match=r"mrope_section \[6, 5, 5\] must sum to "
                                          r"head_dim\*partial_rotary_factor/2 = 4"):
        validate_config(cfg)


def test_validate_config_qwen3_vl():
    tok = build_tokenizer(SIZES["tiny"].vocab_size, "qwen3_vl")
    cfg = build_config("qwen3_vl", SIZES["tiny"], tok)
    assert cfg.text_config.rope_parameters["mrope_section"] == [6, 5, 5]  # Qwen3-VL's 24:20:20, interleaved
    assert cfg.vision_config.deepstack_visual_indexes == [0]
    cfg.vision_config.out_hidden_size = 64
    with pytest.raises(ConfigError, match=r"vision output width 64 != text hidden_size 128"):
        validate_config(cfg)


def test_validate_config_smolvlm():
    tok = build_tokenizer(SIZES["tiny"].vocab_size, "smolvlm")
    cfg = build_config("smolvlm", SIZES["tiny"], tok)
    cfg.image_token_id = len(tok)
    with pytest.raises(ConfigError, match="image_token_id=512 is outside the vocabulary"):
        validate_config(cfg)
    cfg = build_config("smolvlm", SIZES["tiny"], tok)
    cfg.scale_factor = 3
    with pytest.raises(ConfigError, match="8x8 vision patches cannot be pixel-shuffled by scale_factor 3"):
        validate_config(cfg)
