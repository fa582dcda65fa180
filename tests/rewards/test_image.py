"""Image rewards: weight-free ones against hand-computed numbers and PIL, model-based ones (tiny open_clip and HF
CLIP models written here) against the same score computed by hand through the libraries' own preprocessing."""
import io
import math
import re

import pytest
import torch
from PIL import Image

from mmrl.diffusion.image_rewards import WeightedImageReward, make_image_reward
from mmrl.errors import ConfigError
from mmrl.plugins import IMAGE_REWARDS
from rewards.image import ImageReward, RewardArgumentError, sanitize

PROMPTS = ["a red cube", "two cats", "a red cube"]  # a repeated prompt exercises the per-prompt dedup


def quantised(b, h=32, w=32, seed=0):
    """Images whose pixels are exact multiples of 1/255, so uint8 PIL pipelines see the same values."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g).float() / 255


def to_pil(image):
    return Image.fromarray((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), "RGB")


def bad_pixels(b=3, size=32):
    images = quantised(b, size, size)
    images[0, 0, :4, :4] = float("nan")
    images[1, 1] = float("inf")
    images[2] = float("-inf")
    return images


# ---------------------------------------------------------------------------------------------------- JPEG


def pil_jpeg_bytes(image, quality=95):
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="JPEG", quality=quality)
    return len(buffer.getvalue())


def test_jpeg_matches_pil_and_orders_flat_before_noise():
    flat = torch.full((1, 3, 32, 32), 0.4)
    images = torch.cat([flat, quantised(1)])
    reward = make_image_reward("jpeg_compressibility")
    got = reward(images, ["", ""])
    expected = [-pil_jpeg_bytes(image) / 1000 for image in images]
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    assert got.dtype == torch.float32 and got.shape == (2,)
    assert got[0] > got[1]  # a flat image compresses better than noise
    assert not reward.differentiable
    inc = make_image_reward("jpeg_incompressibility")(images, ["", ""])
    assert torch.equal(inc, -got)


def test_jpeg_quality_argument_and_detached_output():
    images = quantised(2).requires_grad_()
    q10 = make_image_reward("jpeg_incompressibility", quality=10)(images, ["", ""])
    q95 = make_image_reward("jpeg_incompressibility")(images, ["", ""])
    assert q10.tolist() == pytest.approx([pil_jpeg_bytes(i, 10) / 1000 for i in images.detach()], abs=1e-6)
    assert (q10 < q95).all() and not q10.requires_grad


# ------------------------------------------------------------------------------------ color target / brightness


def test_color_target_hand_values_and_gradient():
    black = torch.zeros(1, 3, 2, 2)
    grey = torch.full((1, 3, 2, 2), 0.5)
    mixed = torch.zeros(1, 3, 2, 2)
    mixed[0, 0, 0, 0] = 1.0  # one pure red pixel: the 3 other pixels each miss red by 1 -> 3/12
    images = torch.cat([black, grey, mixed]).requires_grad_()
    reward = make_image_reward("color_target")  # target red
    got = reward(images, [""] * 3)
    # black: R error 1 on 4 pixels, 12 values -> -1/3; grey: 0.25 on every value -> -0.25
    assert got.tolist() == pytest.approx([-1 / 3, -0.25, -0.25])
    got[1].backward()
    # d/dx of -mean((x - t)^2) = -2 (x - t) / 12: R at 0.5 -> +1/12 (redder is better), G/B -> -1/12
    assert images.grad[1, 0].flatten().tolist() == pytest.approx([1 / 12] * 4)
    assert images.grad[1, 1:].flatten().tolist() == pytest.approx([-1 / 12] * 8)
    assert images.grad[0].abs().sum() == 0
    green = make_image_reward("color_target", target=[0.0, 1.0, 0.0])(black, [""])
    assert green.item() == pytest.approx(-1 / 3)


def test_brightness_hand_values_and_gradient():
    red = torch.zeros(1, 3, 2, 2)
    red[0, 0] = 1.0
    one_white = torch.zeros(1, 3, 2, 2)
    one_white[0, :, 1, 1] = 1.0
    images = torch.cat([red, one_white]).requires_grad_()
    assert make_image_reward("brightness")(images, ["", ""]).tolist() == pytest.approx([0.299, 0.25])
    targeted = make_image_reward("brightness", target=0.5)(images, ["", ""])
    assert targeted.tolist() == pytest.approx([-(0.299 - 0.5) ** 2, -0.0625])
    targeted[1].backward()
    # -(L - 0.5)^2 with L = 0.25: dR/dx_c = -2 (L - 0.5) w_c / 4 = 0.125 w_c > 0 (brighter is better)
    assert images.grad[1, :, 0, 0].tolist() == pytest.approx([0.125 * w for w in (0.299, 0.587, 0.114)])


def test_sanitize_replaces_non_finite_pixels():
    x = torch.tensor([float("nan"), float("inf"), float("-inf"), 2.0, -1.0, 0.3]).view(1, 3, 1, 2)
    assert sanitize(x.double()).flatten().tolist() == pytest.approx([0.0, 1.0, 0.0, 1.0, 0.0, 0.3])
    assert sanitize(x).dtype == torch.float32
    with pytest.raises(ValueError, match="B, 3, H, W"):
        sanitize(torch.zeros(3, 4, 4))


@pytest.mark.parametrize("name", ["jpeg_compressibility", "jpeg_incompressibility", "color_target", "brightness"])
def test_weight_free_rewards_survive_non_finite_pixels(name):
    got = make_image_reward(name)(bad_pixels(), [""] * 3)
    assert got.shape == (3,) and torch.isfinite(got).all()


# ------------------------------------------------------------------------------------------------- open_clip

def clip_reference(model, images, prompts):
    """Normalised embeddings through open_clip's own PIL eval transform and tokenizer."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    transform = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    pixels = torch.stack([transform(to_pil(image)) for image in images])
    tokens = open_clip.get_tokenizer("mmrl-test-tiny-clip")(prompts)
    with torch.no_grad():
        return model.encode_image(pixels, normalize=True), model.encode_text(tokens, normalize=True)


@pytest.fixture(scope="module")
def clip_score(tiny_open_clip):
    config_file, weights, _ = tiny_open_clip
    return make_image_reward("clip_score", config_file=config_file, pretrained=weights)


def test_clip_score_matches_manual_cosine(tiny_open_clip, clip_score):
    *_, model = tiny_open_clip
    assert isinstance(clip_score, ImageReward) and clip_score.differentiable
    images = quantised(3)
    got = clip_score(images, PROMPTS)
    assert clip_score.loaded
    image_emb, text_emb = clip_reference(model, images, PROMPTS)
    expected = (image_emb * text_emb).sum(-1)
    assert got.shape == (3,) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)


def test_clip_score_loads_nothing_before_first_call(tiny_open_clip):
    config_file, weights, _ = tiny_open_clip
    reward = make_image_reward("clip_score", config_file=config_file, pretrained=weights)
    assert not reward.loaded and reward.clip.model is None
    reward(quantised(1), ["x"])
    assert reward.loaded


def test_clip_score_gradient_reaches_images(clip_score):
    images = quantised(2).requires_grad_()
    clip_score(images, PROMPTS[:2]).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0 and torch.isfinite(images.grad).all()
    assert all(p.grad is None for p in clip_score.clip.model.parameters())


def test_clip_score_resizes_and_center_crops(clip_score):
    images = quantised(2, 32, 48)
    cropped = images[..., :, 8:40].contiguous()
    assert torch.allclose(clip_score(images, PROMPTS[:2]), clip_score(cropped, PROMPTS[:2]), atol=1e-6)
    flat = torch.full((1, 3, 32, 32), 0.3)
    big_flat = torch.full((1, 3, 64, 64), 0.3)  # antialiased bicubic keeps a flat image flat
    assert clip_score(big_flat, ["x"]).item() == pytest.approx(clip_score(flat, ["x"]).item(), abs=1e-5)


def test_clip_score_random_init_warns(tiny_open_clip):
    reward = make_image_reward("clip_score", config_file=tiny_open_clip[0])
    with pytest.warns(UserWarning, match="meaningless"):
        got = reward(bad_pixels(), ["a"] * 3)
    assert torch.isfinite(got).all()


def test_clip_score_arch_must_match_config_file(tiny_open_clip):
    with pytest.raises(ConfigError, match="arch"):
        make_image_reward("clip_score", arch="ViT-B-32", config_file=tiny_open_clip[0])


@pytest.fixture(scope="module")
def aesthetic_head(tmp_path_factory):
    """An MLP state dict with the public sac+logos+ava1-l14-linearMSE.pth key layout, for 16-d embeddings."""
    g = torch.Generator().manual_seed(1)
    shapes = {0: (1024, 16), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}
    state = {}
    for i, (out_dim, in_dim) in shapes.items():
        state[f"layers.{i}.weight"] = torch.randn(out_dim, in_dim, generator=g) / math.sqrt(in_dim)
        state[f"layers.{i}.bias"] = torch.randn(out_dim, generator=g) * 0.1
    path = tmp_path_factory.mktemp("aesthetic") / "head.pth"
    torch.save(state, path)
    return str(path), state


def test_aesthetic_matches_manual_mlp(tiny_open_clip, aesthetic_head):
    config_file, weights, model = tiny_open_clip
    head_path, state = aesthetic_head
    reward = make_image_reward("aesthetic", config_file=config_file, pretrained=weights, weights=head_path)
    assert not reward.loaded and reward.differentiable
    images = quantised(3, seed=2).requires_grad_()
    got = reward(images, PROMPTS)
    image_emb, _ = clip_reference(model, images.detach(), PROMPTS)
    h = image_emb
    for i in (0, 2, 4, 6, 7):  # no activations; dropout is off in eval
        h = h @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    assert torch.allclose(got, h.squeeze(-1), atol=1e-5), (got, h)
    got.sum().backward()
    assert images.grad.abs().sum() > 0
    assert torch.isfinite(reward(bad_pixels(), [""] * 3)).all()


def test_aesthetic_head_of_the_wrong_size_is_an_argument_error(tiny_open_clip, tmp_path):
    path = tmp_path / "l14-head.pth"
    torch.save({"layers.0.weight": torch.zeros(1024, 768)}, path)
    reward = make_image_reward("aesthetic", config_file=tiny_open_clip[0], pretrained=tiny_open_clip[1],
                               weights=str(path))
    with pytest.raises(RewardArgumentError, match="l14-head.pth"):
        reward(quantised(1), [""])


# ------------------------------------------------------------------------------------------------- PickScore


@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory):
    """A folder with a tiny HF CLIPModel, a char-level CLIP tokenizer and a 32-px CLIPImageProcessor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from mmrl.models.tiny_clip import write_clip_tokenizer

    folder = tmp_path_factory.mktemp("pickscore")
    tokenizer = write_clip_tokenizer(folder)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "max_position_embeddings": 77, **layers, **special},
        vision_config={"image_size": 32, "patch_size": 8, **layers},
        projection_dim=16, logit_scale_init_value=math.log(20.0),
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder), model, tokenizer


def pooled(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def test_pickscore_matches_manual_logit_scale_cosine(tiny_pickscore):
    from transformers import CLIPImageProcessor

    folder, model, tokenizer = tiny_pickscore
    reward = make_image_reward("pickscore", path=folder, processor_path=None)
    assert not reward.loaded and reward.differentiable
    images = quantised(3, seed=3).requires_grad_()
    got = reward(images, PROMPTS)
    processor = CLIPImageProcessor.from_pretrained(folder)
    pixels = processor(images=[to_pil(i) for i in images.detach()], return_tensors="pt")["pixel_values"]
    tokens = tokenizer(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        image_emb = torch.nn.functional.normalize(pooled(model.get_image_features(pixel_values=pixels)), dim=-1)
        text_emb = torch.nn.functional.normalize(pooled(model.get_text_features(**tokens)), dim=-1)
    expected = 20.0 * (image_emb * text_emb).sum(-1)
    assert torch.allclose(got, expected, atol=1e-4), (got, expected)
    got.sum().backward()
    assert images.grad.abs().sum() > 0
    assert torch.isfinite(reward(bad_pixels(), [""] * 3)).all()


# --------------------------------------------------------------------------------------- registry and errors


def test_unknown_reward_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        make_image_reward("sharpness")
    assert "sharpness" in str(err.value) and all(name in str(err.value) for name in IMAGE_REWARDS.names())


def test_registry_declares_each_rewards_arguments_and_differentiability():
    for name in IMAGE_REWARDS.names():
        assert IMAGE_REWARDS.capability(name, "differentiable") == make_image_reward(name).differentiable
    assert list(IMAGE_REWARDS.hyperparameters("jpeg_compressibility")) == ["quality"]
    assert list(IMAGE_REWARDS.hyperparameters("aesthetic")) == ["arch", "pretrained", "config_file", "weights",
                                                                 "device"]


@pytest.mark.parametrize("name, args, bad", [
    ("jpeg_compressibility", {"qualty": 90}, "qualty"),
    ("jpeg_compressibility", {"quality": 0}, "quality"),
    ("color_target", {"target": [1.0, 0.0]}, "target"),
    ("color_target", {"target": [1.0, 0.0, 2.0]}, "target"),
    ("brightness", {"target": "bright"}, "target"),
    ("clip_score", {"model": "ViT-B-32"}, "model"),
])
def test_bad_arguments_name_the_reward_and_argument(name, args, bad):
    with pytest.raises(ConfigError) as err:
        make_image_reward(name, **args)
    assert name in str(err.value) and bad in str(err.value)


def test_unknown_argument_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid: quality"):
        make_image_reward("jpeg_compressibility", qualty=90)


@pytest.mark.parametrize("name, key", [
    ("clip_score", "pretrained"), ("clip_score", "config_file"), ("aesthetic", "weights"), ("pickscore", "path"),
])
def test_missing_weights_path_is_named_at_first_call(name, key, tiny_open_clip, tmp_path):
    missing = str(tmp_path / "nowhere" / f"{key}.bin")
    args = {key: missing}
    if name == "aesthetic":
        args.update(config_file=tiny_open_clip[0], pretrained=tiny_open_clip[1])
    reward = make_image_reward(name, **args)  # nothing is checked or loaded yet
    with pytest.raises(RewardArgumentError, match=re.escape(missing)):
        reward(quantised(1), ["x"])
    with pytest.raises(ConfigError) as err:  # what the trainer sees: mmrl's error, naming the reward
        WeightedImageReward([(name, 1.0, args)])(quantised(1), ["x"])
    assert f"image reward {name!r}" in str(err.value) and missing in str(err.value)


# ----------------------------------------------------------------------------------------------- weighted sum


def test_weighted_reward_sums_components():
    combo = WeightedImageReward([("brightness", 2.0, {}), ("color_target", -0.5, {"target": [0.0, 1.0, 0.0]}),
                                 ("brightness", 1.0, {"target": 0.5})])
    images = quantised(2).requires_grad_()
    total, parts = combo(images, ["", ""])
    assert list(parts) == ["brightness", "color_target", "brightness_2"]
    b = make_image_reward("brightness")(images, ["", ""])
    c = make_image_reward("color_target", target=[0.0, 1.0, 0.0])(images, ["", ""])
    b2 = make_image_reward("brightness", target=0.5)(images, ["", ""])
    assert torch.allclose(total, 2 * b - 0.5 * c + b2)
    assert torch.equal(parts["color_target"], c)
    assert combo.differentiable
    total.sum().backward()
    assert images.grad.abs().sum() > 0


def test_weighted_reward_is_differentiable_only_if_every_component_is():
    combo = WeightedImageReward([("brightness", 1.0, {}), ("jpeg_compressibility", 0.1, {})])
    assert not combo.differentiable
    total, parts = combo(quantised(2), ["", ""])
    assert torch.allclose(total, parts["brightness"] + 0.1 * parts["jpeg_compressibility"])


def test_weighted_reward_rejects_bad_items():
    with pytest.raises(ConfigError, match="weight"):
        WeightedImageReward([("brightness", float("nan"), {})])
    with pytest.raises(ConfigError, match="blur"):
        WeightedImageReward([("blur", 1.0, {})])
    with pytest.raises(ConfigError):
        WeightedImageReward([])


def test_weights_that_do_not_fit_the_architecture_are_an_argument_error(tiny_open_clip, tmp_path):
    path = tmp_path / "other-clip.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, path)
    reward = make_image_reward("clip_score", config_file=tiny_open_clip[0], pretrained=str(path))
    with pytest.raises(RewardArgumentError, match="other-clip.pt"):
        reward(quantised(1), ["x"])
