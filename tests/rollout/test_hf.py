"""Tests for mmrl.rollout.hf: completion masks, answer encoding, placeholder sanitising, per-token log-probs
(checked against a plain forward pass done by hand) and placeholder suppression during generation."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from mmrl.config import ModelConfig
from mmrl.models.load import load_processor, placeholder_ids
from mmrl.models.tiny import make_tiny
from mmrl.rollout.hf import completion_mask, encode_answers, encode_prompts, generate, sanitize, token_logprobs
from mmrl.types import Sample

EOS = 2  # hand-made ids below use 2 as EOS and 0 as padding


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("rollout") / "ckpt", family="qwen2_5_vl")


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return load_processor(str(tiny_dir), ModelConfig(path=str(tiny_dir)))  # left padding for prompts


@pytest.fixture(scope="module")
def model(tiny_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()


@pytest.fixture()
def tok(processor):
    return processor.tokenizer


def prompts(processor, texts):
    """A batch of one-image prompts; different texts give different prompt lengths (left padding)."""
    samples = [Sample(id=str(i), prompt=text, images=[f"img{i}.png"]) for i, text in enumerate(texts)]
    images = [[Image.new("RGB", (112, 112), (40 * i % 256, 200 - 30 * i, 90))] for i in range(len(texts))]
    return samples, images, encode_prompts(processor, samples, images, family="qwen2_5_vl")


# ---------------------------------------------------------------- completion_mask


def test_completion_mask_eos_in_middle_at_start_and_absent():
    ids = torch.tensor(
        [
            [5, 6, EOS, 7, 8],  # EOS at 2: tokens 0..2 count, the rest is past the end
            [EOS, 5, 6, 7, 8],  # EOS first: only the EOS itself counts
            [5, 6, 7, 8, 9],  # no EOS: all count, truncated
            [5, EOS, 6, EOS, 0],  # the first EOS ends it
        ]
    )
    mask, truncated = completion_mask(ids, EOS)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert truncated.tolist() == [False, False, True, False]
    assert mask.dtype == torch.long


# ---------------------------------------------------------------- encode_answers


def test_encode_answers_appends_eos_and_right_pads(tok):
    ids, mask = encode_answers(tok, ["(57, 83)", "5"])
    t = tok.convert_tokens_to_ids
    eos, pad = tok.eos_token_id, tok.pad_token_id
    # "(57, 83)" -> ( 5 7 , Ġ 8 3 ) = 8 tokens + EOS = 9; "5" -> 1 token + EOS, then 7 pads.
    first = [t(p) for p in ["(", "5", "7", ",", "Ġ", "8", "3", ")"]] + [eos]
    second = [t("5"), eos] + [pad] * 7
    assert ids.tolist() == [first, second]
    assert mask.tolist() == [[1] * 9, [1, 1] + [0] * 7]
    assert tok.decode(ids[0, :8]) == "(57, 83)"
    # What encode_answers builds is exactly what completion_mask would mark.
    assert torch.equal(completion_mask(ids, eos)[0], mask)


# ---------------------------------------------------------------- sanitize


def test_sanitize_replaces_placeholders_and_zeros_their_mask():
    ids = torch.tensor([[5, 12, 7, 2], [12, 13, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    new_ids, new_mask, dropped = sanitize(ids, mask, [12, 13], pad_id=0)
    assert new_ids.tolist() == [[5, 0, 7, 2], [0, 0, 2, 0]]
    assert new_mask.tolist() == [[1, 0, 1, 1], [0, 0, 1, 0]]
    assert dropped == 3
    assert ids.tolist() == [[5, 12, 7, 2], [12, 13, 2, 0]]  # inputs untouched


def test_sanitize_without_forbidden_ids_is_identity():
    ids, mask = torch.tensor([[5, 12, 2]]), torch.tensor([[1, 1, 1]])
    new_ids, new_mask, dropped = sanitize(ids, mask, [], pad_id=0)
    assert torch.equal(new_ids, ids) and torch.equal(new_mask, mask) and dropped == 0


# ---------------------------------------------------------------- token_logprobs


def reference_logprobs(model, processor, sample, image, completion, temperature=1.0):
    """log p(y_t | prompt, y_<t) of one unpadded row from a plain full forward over prompt + completion."""
    one = encode_prompts(processor, [sample], [[image]], family="qwen2_5_vl")
    n_prompt = one["input_ids"].shape[1]
    full = torch.cat([one["input_ids"], completion[None]], dim=1)
    inputs = dict(one, input_ids=full, attention_mask=torch.ones_like(full))
    # mm_token_type_ids marks image tokens for the 3-D rope positions; completion tokens are text (0).
    inputs["mm_token_type_ids"] = torch.cat([one["mm_token_type_ids"], torch.zeros_like(completion[None])], dim=1)
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    # Position n_prompt - 1 + t predicts completion token t.
    logp = torch.log_softmax(logits[n_prompt - 1 : n_prompt - 1 + len(completion)] / temperature, dim=-1)
    return logp.gather(-1, completion[:, None]).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_match_a_plain_forward_row_by_row(model, processor, tok, temperature):
    samples, images, batch = prompts(
        processor, ["click", "click the red button in the settings window", "open the menu"]
    )
    lengths = batch["attention_mask"].sum(-1)
    assert len(set(lengths.tolist())) == 3  # three prompt lengths: rows 0 and 2 are left-padded
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][:, 0].all()
    ids, mask = encode_answers(tok, ["(57, 83)", "5", "[1,2,3,4] click save"])
    assert len(set(mask.sum(-1).tolist())) == 3  # three completion lengths: right padding in two rows

    with torch.no_grad():
        logp = token_logprobs(model, batch, ids, mask, temperature=temperature)
    assert logp.shape == ids.shape
    for i in range(3):
        n = int(mask[i].sum())
        expected = reference_logprobs(model, processor, samples[i], images[i][0], ids[i, :n], temperature)
        assert torch.allclose(logp[i, :n], expected, atol=1e-5), (i, (logp[i, :n] - expected).abs().max())
        assert (logp[i, n:] == 0).all()
    assert (logp[mask.bool()] < 0).all()


def test_token_logprobs_has_gradients(model, processor, tok):
    _, _, batch = prompts(processor, ["click"])
    ids, mask = encode_answers(tok, ["(1, 2)"])
    logp = token_logprobs(model, batch, ids, mask)
    logp.sum().backward()
    grad = model.lm_head.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- placeholders in completions


@pytest.fixture()
def placeholder_loving_model(tiny_dir):
    """The tiny model with +50 added to the logits of every vision placeholder: unsuppressed, it emits them."""
    biased = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()
    forbidden = placeholder_ids(load_processor(str(tiny_dir), ModelConfig()).tokenizer)

    def hook(module, inputs, output):
        output = output.clone()
        output[..., forbidden] += 50.0
        return output

    biased.lm_head.register_forward_hook(hook)
    return biased


@pytest.mark.parametrize("do_sample", [False, True])
def test_generate_never_emits_suppressed_ids(placeholder_loving_model, processor, tok, do_sample):
    forbidden = placeholder_ids(tok)
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert image_pad in forbidden
    _, _, batch = prompts(processor, ["click", "click the red button in the settings window"])
    torch.manual_seed(0)
    # Control: without suppression the biased model does emit placeholders.
    free = generate(placeholder_loving_model, processor, batch, max_new_tokens=6, do_sample=do_sample)
    assert torch.isin(free.ids, torch.tensor(forbidden)).any()
    torch.manual_seed(0)
    out = generate(
        placeholder_loving_model, processor, batch, max_new_tokens=6, do_sample=do_sample, suppress_ids=forbidden
    )
    assert not torch.isin(out.ids, torch.tensor(forbidden)).any()
    assert out.ids.shape[0] == 2 and out.ids.shape[1] <= 6
    assert torch.equal(out.mask, completion_mask(out.ids, tok.eos_token_id)[0])
    assert len(out.texts) == 2 and len(out.truncated) == 2


def test_generate_pads_after_eos(model, processor, tok):
    _, _, batch = prompts(processor, ["click", "open the menu"])
    out = generate(model, processor, batch, max_new_tokens=8, do_sample=False)
    assert (out.ids[out.mask == 0] == tok.pad_token_id).all()
    eos = tok.eos_token_id
    assert out.truncated == [bool((row != eos).all()) for row in out.ids]
    assert out.texts == tok.batch_decode(out.ids, skip_special_tokens=True)


def test_placeholder_in_completion_raises_unless_sanitized(model, processor, tok):
    _, _, batch = prompts(processor, ["click", "click the red button"])
    ids, mask = encode_answers(tok, ["(57, 83)", "[1,2,3,4]"])
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    ids[0, 2] = image_pad  # a completion that contains an image placeholder
    # Unsanitized: one more image token than image features -> transformers refuses.
    with torch.no_grad(), pytest.raises(ValueError, match="Image features and image tokens do not match"):
        token_logprobs(model, batch, ids, mask)
    clean_ids, clean_mask, dropped = sanitize(ids, mask, placeholder_ids(tok), tok.pad_token_id)
    assert dropped == 1 and clean_ids[0, 2] == tok.pad_token_id and clean_mask[0, 2] == 0
    with torch.no_grad():
        logp = token_logprobs(model, batch, clean_ids, clean_mask)
    assert torch.isfinite(logp).all()
    assert logp[0, 2] == 0 and (logp[clean_mask.bool()] < 0).all()


def test_chat_messages_places_images_at_marks():
    from mmrl.rollout.hf import chat_messages

    default = chat_messages(Sample("a", "click red", images=["x.png"]))[0]["content"]
    assert default == [{"type": "image"}, {"type": "text", "text": "click red"}]
    marked = chat_messages(Sample("b", "click red\n<image>", images=["x.png"]))[0]["content"]
    assert marked == [{"type": "text", "text": "click red\n"}, {"type": "image"}]
    two = chat_messages(Sample("c", "first <image> then <image>", images=["x.png", "y.png"]))[0]["content"]
    assert [p["type"] for p in two] == ["text", "image", "text", "image"]
    with pytest.raises(ValueError, match="sample d"):
        chat_messages(Sample("d", "<image><image>", images=["x.png"]))


def test_chat_messages_places_videos_first_or_at_marks():
    from mmrl.rollout.hf import chat_messages

    both = chat_messages(Sample("a", "when?", images=["x.png"], videos=["v.mp4"]))[0]["content"]
    assert [p["type"] for p in both] == ["video", "image", "text"]
    marked = chat_messages(Sample("b", "see <video> and <image> now", images=["x.png"], videos=["v.mp4"]))[0]
    assert [p["type"] for p in marked["content"]] == ["text", "video", "text", "image", "text"]
    with pytest.raises(ValueError, match="sample c: 2 <video> marks but 1 videos"):
        chat_messages(Sample("c", "<video><video>", videos=["v.mp4"]))


def test_answer_slots_follow_each_groups_samples(tok):
    from mmrl.rollout.groups import with_answer_slots

    # 2 prompts x 2 sampled rows each (width 3); each group gets its ground truth (+ EOS) as a third row.
    prompts = [Sample("p0", "q", answer="<answer>1.0 to 2.0</answer>"), Sample("p1", "q", answer="(3, 4)")]
    ids = torch.tensor([[5, EOS, tok.pad_token_id], [6, 7, EOS], [8, EOS, tok.pad_token_id], [9, 9, 9]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]])
    texts, truncated = ["a", "b", "c", "d"], [False, False, False, True]
    out_ids, out_mask, out_texts, out_trunc, off = with_answer_slots(tok, prompts, ids, mask, texts, truncated, 2)
    assert out_texts == ["a", "b", prompts[0].answer, "c", "d", prompts[1].answer]
    assert out_trunc == [False, False, False, False, True, False]
    assert off.tolist() == [False, False, True, False, False, True]
    for row, answer in ((2, prompts[0].answer), (5, prompts[1].answer)):
        n = int(out_mask[row].sum())
        assert out_ids[row, :n].tolist() == tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert (out_ids[row, n:] == tok.pad_token_id).all()
    assert out_ids[1, :3].tolist() == [6, 7, EOS] and out_mask[1, 3:].sum() == 0  # sampled rows only padded
    assert out_ids.shape[1] == max(3, int(out_mask.sum(-1).max()))


def test_encode_prompts_names_the_sample_whose_vision_tokens_do_not_match(processor):
    from mmrl.errors import DataError

    image = [Image.new("RGB", (56, 56))]
    bad = Sample("screen-7", "click <|video_pad|> here", images=["x.png"])  # a placeholder but no video
    with pytest.raises(DataError, match="screen-7"):
        encode_prompts(processor, [Sample("ok", "click"), bad], [image, image], family="qwen2_5_vl")


def test_timestamped_video_becomes_patches_after_their_times(processor):
    from mmrl.rollout.hf import chat_messages
    from mmrl.vision import VideoClip, VideoInfo

    parts = chat_messages(Sample("v", "when?", videos=["v.mp4"]), [[0.0, 1.5]])[0]["content"]
    assert parts == [{"type": "text", "text": "<0.0s>"}, {"type": "video"}, {"type": "text", "text": "<1.5s>"},
                     {"type": "video"}, {"type": "text", "text": "when?"}]
    info = VideoInfo("v.mp4", n_frames=8, fps=4.0, duration=2.0, width=56, height=56)
    frames = torch.randint(0, 255, (4, 3, 56, 56), dtype=torch.uint8)
    times = [0.0, 0.5, 1.0, 1.5]
    sample = Sample("v", "when?", videos=["v.mp4"])
    plain = encode_prompts(processor, [sample], [[]], [[VideoClip(frames, times, 2.0, info)]], family="qwen2_5_vl")
    stamped = encode_prompts(processor, [sample], [[]], [[VideoClip(frames, times, 2.0, info, timestamped=True)]],
                             family="qwen2_5_vl")
    assert plain["video_grid_thw"].tolist() == [[2, 4, 4]] and stamped["video_grid_thw"].tolist() == [[1, 4, 4]] * 2
    # 2 frames per temporal patch at 2 sampled frames a second: 1 s per patch either way
    assert plain["second_per_grid_ts"].tolist() == stamped["second_per_grid_ts"].tolist()[:1] == [1.0]
    text = processor.tokenizer.decode(stamped["input_ids"][0])
    assert text.index("<0.0s>") < text.index("<|video_pad|>") < text.index("<1.0s>")
    assert torch.equal(stamped["pixel_values_videos"], plain["pixel_values_videos"])  # same patches, time-major
