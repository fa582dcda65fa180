"""Tests for mmrl.models.tiny (the tiny Qwen-VL factory) and mmrl.models.load (policy loading, LoRA, freezing).

The tiny checkpoints must load through the same ``from_pretrained`` calls users make on real ones, with Qwen's
special tokens at consistent ids, so everything here goes through files on disk.
"""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmrl.config import LoraConfig, ModelConfig
from mmrl.errors import ConfigError
from mmrl.models.load import load_policy, placeholder_ids, vision_tower
from mmrl.models.tiny import SIZES, build_config, build_tokenizer, make_tiny, validate_config

FAMILIES = ["qwen2_5_vl", "qwen2_vl"]
ARCHITECTURES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration"}
PROCESSORS = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen2_vl": "Qwen2VLProcessor"}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """One tiny checkpoint per family, made lazily and shared by the module's tests (~3 s each)."""
    made = {}

    def get(family: str):
        if family not in made:
            made[family] = make_tiny(tmp_path_factory.mktemp(family) / "ckpt", family=family)
        return made[family]

    return get


@pytest.fixture(scope="module")
def tiny_dir(tiny_dirs):
    return tiny_dirs("qwen2_5_vl")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(SIZES["tiny"].vocab_size)


def image(color=(200, 30, 30)):
    return Image.new("RGB", (112, 112), color)


def user_turn(text="click the button"):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


# ---------------------------------------------------------------- checkpoint files


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_loads_with_auto_classes(tiny_dirs, family):
    path = tiny_dirs(family)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (path / name).is_file(), name
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert type(model).__name__ == ARCHITECTURES[family]
    assert type(processor).__name__ == PROCESSORS[family]
    assert processor.tokenizer.chat_template or processor.chat_template


@pytest.mark.parametrize("family", FAMILIES)
def test_special_token_ids_agree_between_config_and_tokenizer(tiny_dirs, family):
    path = tiny_dirs(family)
    cfg = json.loads((path / "config.json").read_text())
    gen = json.loads((path / "generation_config.json").read_text())
    tok = AutoProcessor.from_pretrained(path).tokenizer
    expected = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    vocab = cfg["text_config"]["vocab_size"]
    assert vocab == len(tok)
    for key, token in expected.items():
        token_id = tok.convert_tokens_to_ids(token)
        assert cfg[key] == token_id, key
        assert 0 <= token_id < vocab
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == im_end
    assert cfg["text_config"]["eos_token_id"] == im_end
    assert gen["eos_token_id"] == im_end
    assert tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>") == gen["pad_token_id"]
    # Each special token is one token, not split into pieces.
    for token in ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>"):
        assert tok(token, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(token)]
    # Distinct ids: a collision (say image_pad == video_pad) would route features to the wrong placeholder.
    ids = [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", *expected.values())]
    assert len(set(ids)) == len(ids)


def test_digits_are_one_token_each(tiny_dir):
    tok = AutoProcessor.from_pretrained(tiny_dir).tokenizer
    pieces = tok.convert_ids_to_tokens(tok("(57, 83)", add_special_tokens=False)["input_ids"])
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digits == ["5", "7", "8", "3"]
    assert tok.decode(tok("(57, 83) [10,20,30,40]", add_special_tokens=False)["input_ids"]) == "(57, 83) [10,20,30,40]"


def test_chat_template_layout(tiny_dir):
    processor = AutoProcessor.from_pretrained(tiny_dir)
    text = processor.apply_chat_template(user_turn("Where is it?"), add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Where is it?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = processor.apply_chat_template(user_turn("Where is it?"), add_generation_prompt=False, tokenize=False)
    assert not no_prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("family", FAMILIES)
def test_processor_forward_and_generate(tiny_dirs, family):
    path = tiny_dirs(family)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    tok = processor.tokenizer
    text = processor.apply_chat_template(user_turn(), add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], images=[image()], return_tensors="pt")
    # 112 / 14 = 8 patches per side -> 64 patches; the 2x2 merge leaves 64 / 4 = 16 image tokens.
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert batch["pixel_values"].shape[0] == 64
    assert int((batch["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).sum()) == 16
    with torch.no_grad():
        logits = model(**batch).logits
        out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()
    assert out.shape[0] == 1 and 1 <= out.shape[1] - batch["input_ids"].shape[1] <= 5
    assert torch.equal(out[:, : batch["input_ids"].shape[1]], batch["input_ids"])


def test_make_tiny_is_deterministic_for_a_seed(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    again = make_tiny(tmp_path / "again", family="qwen2_5_vl", seed=0)
    a, b = load_file(tiny_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_family_and_size_raise(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match="llava.*valid: qwen2_5_vl, qwen2_vl, qwen3_5, qwen3_vl, smolvlm"):
        build_config("llava", SIZES["tiny"], tokenizer)
    with pytest.raises(ConfigError, match="huge.*valid: tiny, small"):
        make_tiny(tmp_path / "x", size="huge")


# ---------------------------------------------------------------- validate_config


@pytest.mark.parametrize("family", FAMILIES)
def test_validate_config_accepts_the_built_config(tokenizer, family):
    for spec in SIZES.values():
        validate_config(build_config(family, spec, tokenizer))


def test_validate_config_vision_width_mismatch(tokenizer):
    cfg = build_config("qwen2_5_vl", SIZES["tiny"], tokenizer)
    cfg.vision_config.out_hidden_size = 64
    with pytest.raises(ConfigError, match=r"vision output width 64 != text hidden_size 128"):
        validate_config(cfg)


def test_validate_config_vision_width_mismatch_qwen2_vl(tokenizer):
    # Qwen2-VL has no out_hidden_size: the vision config's hidden_size is the merger's output width.
    cfg = build_config("qwen2_vl", SIZES["tiny"], tokenizer)
    cfg.vision_config.hidden_size = 96
    with pytest.raises(ConfigError, match=r"vision output width 96 != text hidden_size 128"):
        validate_config(cfg)


def test_validate_config_mrope_section(tokenizer):
    # tiny: hidden 128 / 4 heads = head_dim 32 -> the section must sum to 16; [4, 4, 4] sums to 12.
    cfg = build_config("qwen2_5_vl", SIZES["tiny"], tokenizer)
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == 16
    cfg.text_config.rope_parameters["mrope_section"] = [4, 4, 4]
    with pytest.raises(ConfigError, match=r"mrope_section \[4, 4, 4\] must sum to head_dim/2 = 16"):
        validate_config(cfg)


def test_validate_config_token_id_outside_vocab(tokenizer):
    cfg = build_config("qwen2_5_vl", SIZES["tiny"], tokenizer)
    cfg.image_token_id = cfg.text_config.vocab_size
    with pytest.raises(ConfigError, match="image_token_id=512 is outside the vocabulary"):
        validate_config(cfg)


# ---------------------------------------------------------------- load_policy


def test_load_policy_full_fine_tuning(tiny_dir):
    model, processor, path = load_policy(ModelConfig(path=str(tiny_dir)))
    assert path == str(tiny_dir)
    assert all(p.requires_grad for p in model.parameters())
    assert processor.tokenizer.padding_side == "left"
    assert next(model.parameters()).dtype == torch.float32  # auto -> float32 on CPU


def test_load_policy_lora_trains_only_adapters_and_disable_adapter_is_the_reference(tiny_dir):
    model, processor, _ = load_policy(ModelConfig(path=str(tiny_dir), lora=LoraConfig(enabled=True, r=4)))
    from peft import PeftModel

    assert isinstance(model, PeftModel)
    named = dict(model.named_parameters())
    trainable = [n for n, p in named.items() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.requires_grad for n, p in named.items() if "lora_" in n)
    lora_a = [p for n, p in named.items() if "lora_A" in n]
    assert lora_a and all(p.shape[0] == 4 for p in lora_a)  # rank 4
    assert any(".language_model." in n for n in trainable)

    text = processor.apply_chat_template(user_turn(), add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], images=[image()], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        policy = model(**batch).logits
        with model.disable_adapter():
            reference = model(**batch).logits
        # lora_B starts at zero: the adapted model is the base model.
        assert torch.allclose(policy, reference)
        for n, p in named.items():
            if "lora_B" in n:
                p.fill_(0.05)
        policy = model(**batch).logits
        with model.disable_adapter():
            reference_after = model(**batch).logits
    assert not torch.allclose(policy, reference, atol=1e-3)
    assert torch.allclose(reference_after, reference)  # disabling really removes the (now nonzero) adapters


def test_freeze_vision_freezes_the_vision_tower_only(tiny_dir):
    model, _, _ = load_policy(ModelConfig(path=str(tiny_dir), freeze_vision=True))
    visual = vision_tower(model)
    assert visual is not None
    vision_params = {id(p) for p in visual.parameters()}
    assert vision_params
    for p in model.parameters():
        assert p.requires_grad == (id(p) not in vision_params)
    # The merger (which feeds the text model) is part of the tower and is frozen with it.
    assert any("merger" in n for n, _ in visual.named_parameters())


def test_lora_with_freeze_vision_puts_no_adapter_in_the_vision_tower(tiny_dir):
    lora = LoraConfig(enabled=True, r=4)
    frozen, _, _ = load_policy(ModelConfig(path=str(tiny_dir), freeze_vision=True, lora=lora))
    # vision_tower sees through the peft wrapper to the same module as on the bare model.
    assert vision_tower(frozen) is vision_tower(frozen.get_base_model()) is not None
    assert not any("lora_" in n for n, _ in vision_tower(frozen).named_parameters())
    # Without freeze_vision the vision MLP's gate/up/down projections match target_modules and get adapters.
    unfrozen, _, _ = load_policy(ModelConfig(path=str(tiny_dir), freeze_vision=False, lora=lora))
    assert any("lora_" in n for n, _ in vision_tower(unfrozen).named_parameters())


def test_placeholder_ids(tiny_dir):
    tok = AutoProcessor.from_pretrained(tiny_dir).tokenizer
    ids = placeholder_ids(tok)
    expected = {
        tok.convert_tokens_to_ids(t)
        for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    assert tok.convert_tokens_to_ids("<|image_pad|>") in ids
    assert set(ids) == expected and len(ids) == 5
    assert tok.eos_token_id not in ids and tok.pad_token_id not in ids


def test_dtype_name_is_checked(tiny_dir):
    with pytest.raises(ConfigError, match="model.dtype.*float64"):
        load_policy(ModelConfig(path=str(tiny_dir), dtype="float64"))


def test_rope_theta_override_and_its_own_cache_folder(tmp_path):
    from mmrl.models.load import resolve_path

    cfg = ModelConfig(path="tiny", cache_dir=str(tmp_path), tiny_rope_theta=10000.0)
    folder = resolve_path(cfg)
    assert folder.endswith("tiny-qwen2_5_vl-tiny-theta10000")
    config = json.loads((tmp_path / "models" / "tiny-qwen2_5_vl-tiny-theta10000" / "config.json").read_text())
    assert config["text_config"]["rope_parameters"]["rope_theta"] == 10000.0
    assert resolve_path(ModelConfig(path="tiny", cache_dir=str(tmp_path))).endswith("tiny-qwen2_5_vl-tiny")
