"""GenEval's ``mask2former`` detector: the pure parts on hand-made numbers (label mapping, mask boxes, the grey
masked crop, the colour classifier's averaging and argmax, which objects get a colour), then the detector itself
on a tiny random Mask2Former and the tiny open_clip of the image-reward tests (schema, boxes = mask extents,
colours only where ``judge`` reads them), and ``mmrl eval geneval --detector mask2former`` end to end.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrl.cli import main
from mmrl.diffusion.tiny import make_tiny_diffusion
from mmrl.errors import ConfigError
from mmrl.eval.geneval import COLOURS, judge
from mmrl.eval.geneval_detector import (
    BACKGROUND, COLOUR_TEMPLATES, GENEVAL_OBJECTS, MAX_DETECTIONS, Mask2FormerDetector, colour_classifier,
    colour_prompts, colour_targets, geneval_names, mask_boxes, masked_crop, pick_colours, unpadded_size,
)
from mmrl.plugins import GENEVAL_DETECTORS

ROOT = Path(__file__).resolve().parents[2]

COCO_LABELS = [{"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}.get(n, n)
               for n in GENEVAL_OBJECTS]
"""id2label of transformers' COCO instance checkpoints: COCO's names, three of which GenEval renames."""
CAR = GENEVAL_OBJECTS.index("car")


def det(name, score, box=(0, 0, 10, 10)):
    return {"class": name, "box": list(box), "score": score, "color": None}


# ---------------------------------------------------------------------------------------------- labels

def test_object_names_are_genevals_file():
    lines = (ROOT / "data" / "geneval" / "object_names.txt").read_text().splitlines()
    assert list(GENEVAL_OBJECTS) == [line.strip() for line in lines if line.strip()]


def test_coco_labels_map_to_geneval_names_and_others_are_named():
    names = geneval_names({str(i): label for i, label in enumerate(COCO_LABELS)})
    assert names == dict(enumerate(GENEVAL_OBJECTS))
    assert geneval_names({0: "Dining_Table", 1: "motorbike", 2: "diningtable", 3: "hair-dryer", 4: "TV"}) == \
        {0: "dining table", 1: "motorcycle", 2: "dining table", 3: "hair drier", 4: "tv"}
    with pytest.raises(ConfigError) as err:
        geneval_names({0: "person", 1: "wall-other-merged", 2: "sky"})
    message = str(err.value)
    assert "2 label(s)" in message and "1: 'wall-other-merged'" in message and "2: 'sky'" in message


# ---------------------------------------------------------------------------------------------- masks

def test_mask_boxes_are_the_extents_with_exclusive_ends():
    masks = torch.zeros(4, 6, 8, dtype=torch.bool)
    masks[0, 2:5, 1:6] = True                       # rows 2..4, columns 1..5
    masks[1, 3, 7] = True                           # one pixel in the last column
    masks[2, 0, 0] = masks[2, 5, 2] = True          # two separate pixels
    assert mask_boxes(masks).tolist() == [[1, 2, 6, 5], [7, 3, 8, 4], [0, 0, 3, 6], [0, 0, 0, 0]]
    assert mask_boxes(masks).dtype == torch.float32
    assert mask_boxes(torch.zeros(0, 3, 3, dtype=torch.bool)).shape == (0, 4)


def test_unpadded_size_is_the_images_share_of_the_mask_logits():
    pixel_mask = torch.zeros(64, 96, dtype=torch.long)
    pixel_mask[:64, :64] = 1
    assert unpadded_size(pixel_mask, (16, 24)) == (16, 16)
    pixel_mask[:, :] = 0
    pixel_mask[:40, :90] = 1
    assert unpadded_size(pixel_mask, (16, 24)) == (10, 23)  # 40/64*16 = 10, 90/96*24 = 22.5 -> 23
    assert unpadded_size(torch.ones(32, 32), (8, 8)) == (8, 8)


def test_masked_crop_paints_outside_the_mask_grey_and_crops_the_box():
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    image = Image.fromarray(pixels)
    mask = np.zeros((4, 5), dtype=bool)
    mask[1, 1:3] = mask[2, 2] = True
    crop = masked_crop(image, mask, [1, 1, 4, 3])  # columns 1..3, rows 1..2
    assert crop.size == (3, 2) and crop.mode == "RGB"
    grey = list(BACKGROUND)
    assert np.asarray(crop).tolist() == [
        [pixels[1, 1].tolist(), pixels[1, 2].tolist(), grey],
        [grey, pixels[2, 2].tolist(), grey],
    ]
    assert BACKGROUND == (0x99, 0x99, 0x99)
    with pytest.raises(ValueError, match="mask of shape"):
        masked_crop(image, mask.T, [0, 0, 1, 1])


# ---------------------------------------------------------------------------------------------- colours

def test_colour_prompts_are_the_official_templates():
    prompts = colour_prompts("fire hydrant")
    assert len(prompts) == len(COLOURS) * len(COLOUR_TEMPLATES) == 30
    assert prompts[:4] == ["a photo of a red fire hydrant", "a photo of a red-colored fire hydrant",
                           "a photo of a red object", "a photo of a orange fire hydrant"]
    assert prompts[-1] == "a photo of a white object"


def test_colour_classifier_normalises_each_template_then_the_mean():
    embeds = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 7.0]]])  # one colour, three templates
    # normalised: (0.6, 0.8, 0), (0, 0, 1), (0, 0, 1) -> mean (0.2, 0.26667, 0.66667), norm sqrt(0.55556)
    assert colour_classifier(embeds)[0].tolist() == pytest.approx([0.26833, 0.35777, 0.89443], abs=1e-5)


def test_pick_colours_is_the_argmax_of_the_normalised_image_against_the_classifier():
    classifier = torch.eye(10)[:, :4]  # colour k points along axis k (k < 4); the others are zero vectors
    images = torch.tensor([[0.0, 5.0, 0.1, 0.0], [1.0, 0.0, 0.0, 3.0], [-1.0, -1.0, -1.0, 0.2]])
    assert pick_colours(images, classifier) == ["orange", "green", "green"]
    assert pick_colours(images * 100, classifier) == pick_colours(images, classifier)


def test_colour_targets_are_the_objects_judge_reads():
    cars = [det("car", s) for s in (0.2, 0.9, 0.8, 0.7)]
    blue_car = {"tag": "colors", "prompt": "a photo of a blue car", "include": [{"class": "car", "count": 1,
                                                                                  "color": "blue"}]}
    assert colour_targets(blue_car, cars + [det("dog", 0.99)]) == [cars[1]]
    two = {"tag": "color_attr", "prompt": "p", "include": [{"class": "car", "count": 2, "color": "red"},
                                                           {"class": "dog", "count": 1, "color": "blue"},
                                                           {"class": "car", "count": 1, "color": "red"}]}
    dogs = [det("dog", 0.35), det("dog", 0.25)]
    assert colour_targets(two, cars + dogs) == [cars[1], cars[2], dogs[0]]
    counting = {"tag": "counting", "prompt": "p", "include": [{"class": "car", "count": 1, "color": "red"}]}
    assert colour_targets(counting, cars) == []  # nothing above 0.9
    four = {**blue_car, "include": [{"class": "car", "count": 4, "color": "blue"}]}
    assert colour_targets(four, cars) == []  # 3 cars kept for 4 wanted: judge fails on the count, reads no colour
    assert colour_targets({"tag": "single_object", "prompt": "p", "include": [{"class": "car", "count": 1}]},
                          cars) == []


# ---------------------------------------------------------------------------------------------- the detector

@pytest.fixture(scope="module")
def tiny_mask2former(tmp_path_factory):
    """A tiny random Mask2Former (Swin backbone) whose class head favours "car", saved with its image processor."""
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor,
                              SwinConfig)

    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(
        backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32,
        dim_feedforward=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=8,
        id2label=dict(enumerate(COCO_LABELS)), label2id={n: i for i, n in enumerate(COCO_LABELS)})
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():  # every query says "car" (probability ~0.99), so judge keeps some and reads colours
        model.class_predictor.bias.zero_()
        model.class_predictor.bias[CAR] = 10.0
    folder = tmp_path_factory.mktemp("mask2former")
    model.save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, size_divisor=32).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def detector(tiny_mask2former, tiny_open_clip):
    config_file, weights, _ = tiny_open_clip
    built = Mask2FormerDetector(path=tiny_mask2former, clip_model=config_file, clip_pretrained=weights, device="cpu")
    yield built
    built.close()


def noise(height, width, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


BLUE_CAR = {"tag": "colors", "prompt": "a photo of a blue car",
            "include": [{"class": "car", "count": 1, "color": "blue"}]}
A_CAR = {"tag": "single_object", "prompt": "a photo of a car", "include": [{"class": "car", "count": 1}]}


def test_mask2former_is_registered_with_its_arguments():
    assert "mask2former" in GENEVAL_DETECTORS
    params = GENEVAL_DETECTORS.hyperparameters("mask2former")
    assert {k: v[1] for k, v in params.items()} == {
        "path": "facebook/mask2former-swin-small-coco-instance", "clip_model": "ViT-L-14-quickgelu",
        "clip_pretrained": "openai", "device": None}


def test_detections_have_the_schema_and_boxes_are_the_mask_extents(detector):
    images = [noise(64, 64, 0), noise(64, 96, 1)]  # different sizes: the processor pads the batch
    found = detector.detect(images, [A_CAR, A_CAR])
    instances = detector.instances(images)
    assert len(found) == 2
    for image, dets, (same, masks) in zip(images, found, instances):
        assert 0 < len(dets) <= min(MAX_DETECTIONS, 8)
        assert dets == same  # deterministic, and no colour for a prompt without one
        assert masks.shape == (len(dets), image.height, image.width) and masks.dtype == torch.bool
        scores = [d["score"] for d in dets]
        assert scores == sorted(scores, reverse=True)
        for d, mask in zip(dets, masks):
            assert set(d) == {"class", "box", "score", "color"} and d["color"] is None
            assert d["class"] in GENEVAL_OBJECTS and isinstance(d["score"], float) and 0 <= d["score"] <= 1
            assert all(isinstance(v, float) for v in d["box"])
            ys, xs = np.nonzero(mask.numpy())
            assert d["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert 0 <= d["box"][0] < d["box"][2] <= image.width and 0 <= d["box"][1] < d["box"][3] <= image.height
    assert {d["class"] for dets in found for d in dets} == {"car"}


def test_colour_is_classified_only_where_judge_reads_it(detector, tiny_open_clip):
    image = noise(64, 64, 2)
    two_red_cars = {"tag": "color_attr", "prompt": "p", "include": [{"class": "car", "count": 2, "color": "red"}]}
    (blue,), (two,) = detector.detect([image], [BLUE_CAR]), detector.detect([image], [two_red_cars])
    kept = [d for d in blue if d["score"] > 0.3]
    assert len(kept) >= 2, "the tiny checkpoint should keep several cars"
    assert blue[0]["color"] in COLOURS and all(d["color"] is None for d in blue[1:])
    assert [d["color"] in COLOURS for d in two] == [True, True] + [False] * (len(two) - 2)
    assert two[0]["color"] == blue[0]["color"]
    assert judge(BLUE_CAR, blue) == ((True, "") if blue[0]["color"] == "blue" else
                                     (False, f"expected blue car>=1, found 0 blue; and 1 {blue[0]['color']}"))
    # the colour is the tiny CLIP's answer on the grey-masked crop, recomputed here with open_clip directly
    import open_clip

    *_, model = tiny_open_clip
    _, masks = detector.instances([image])[0]
    crop = masked_crop(image, masks[0].numpy(), blue[0]["box"])
    with torch.no_grad():
        text = model.encode_text(open_clip.get_tokenizer("mmrl-test-tiny-clip")(colour_prompts("car")))
        embed = model.encode_image(detector.clip_transform(crop)[None])
    assert pick_colours(embed, colour_classifier(text.view(10, 3, -1))) == [blue[0]["color"]]


def test_a_checkpoint_that_is_not_there_is_a_config_error(tmp_path, tiny_open_clip):
    with pytest.raises(ConfigError, match="detector.path=.*cannot load a Mask2Former checkpoint.*local folder"):
        Mask2FormerDetector(path=str(tmp_path / "missing"), clip_model=tiny_open_clip[0], device="cpu")


def test_mmrl_eval_geneval_with_mask2former_end_to_end(tmp_path, tiny_mask2former, tiny_open_clip, capsys):
    config_file, weights, _ = tiny_open_clip
    cow = {"tag": "single_object", "prompt": "a photo of a cow", "include": [{"class": "cow", "count": 1}]}
    images = tmp_path / "images"
    for index, metadata in enumerate([A_CAR, cow, BLUE_CAR]):
        folder = images / f"{index:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps(metadata) + "\n")
        for k in range(2):
            noise(64, 64, 10 * index + k).save(folder / "samples" / f"{k:04d}.png")
    out, rows_path = tmp_path / "geneval.json", tmp_path / "rows.jsonl"
    main(["eval", "geneval", str(images), "--detector", "mask2former", "--detector-arg", f"path={tiny_mask2former}",
          "--detector-arg", f"clip_model={config_file}", "--detector-arg", f"clip_pretrained={weights}",
          "--detector-arg", "device=cpu", "--output", str(out), "--per-sample", str(rows_path), "--quiet"])
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "single_object      50.00%  (2 / 4)"  # every car found, never a cow
    result = json.loads(out.read_text())
    assert result["detector"] == "mask2former" and result["images"] == 6 and result["prompts"] == 3
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert [(r["prompt"], r["correct"]) for r in rows[:4]] == [("a photo of a car", True)] * 2 + \
        [("a photo of a cow", False)] * 2
    assert rows[2]["reason"] == "expected cow>=1, found 0"
    assert all(r["tag"] == "colors" and (r["correct"] or r["reason"].startswith("expected blue car>=1, found 0 blue"))
               for r in rows[4:])


@pytest.mark.slow
def test_mmrl_eval_geneval_on_images_of_mmrl_diffusion_sample_geneval(tmp_path, tiny_mask2former, tiny_open_clip,
                                                                       capsys):
    """The full path a user runs: sample GenEval's own prompts (the first 12 of 553) with a diffusers pipeline
    loaded from its folder, then score the folder with Mask2Former + open_clip (tiny random models: numbers
    meaningless, every file and field real)."""
    config_file, weights, _ = tiny_open_clip
    pipeline = make_tiny_diffusion(tmp_path / "tiny-sd", kind="sd", resolution=32, progress=False)
    images = tmp_path / "images"
    main(["diffusion", "sample", "--model", str(pipeline), "--geneval", "--limit", "12", "--n", "2", "--steps", "2",
          "--out", str(images), "--quiet"])
    official = [json.loads(line) for line in (ROOT / "data" / "geneval" / "evaluation_metadata.jsonl").open()]
    assert sorted(p.name for p in images.iterdir()) == [f"{i:05d}" for i in range(12)]
    for index, record in enumerate(official[:12]):
        folder = images / f"{index:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == record  # the official row, every field
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
        assert Image.open(folder / "samples" / "0000.png").size == (32, 32)
    capsys.readouterr()

    out, rows_path = tmp_path / "geneval.json", tmp_path / "rows.jsonl"
    main(["eval", "geneval", str(images), "--detector", "mask2former", "--detector-arg", f"path={tiny_mask2former}",
          "--detector-arg", f"clip_model={config_file}", "--detector-arg", f"clip_pretrained={weights}",
          "--detector-arg", "device=cpu", "--output", str(out), "--per-sample", str(rows_path), "--quiet"])
    result = json.loads(out.read_text())
    assert result["images"] == 24 and result["prompts"] == 12
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert [(r["prompt"], r["tag"]) for r in rows] == [(m["prompt"], m["tag"]) for m in official[:12] for _ in "ab"]
    assert sum(t["images"] for t in result["tags"].values()) == 24
    assert result["correct_images"] == sum(r["correct"] for r in rows) / 24
    assert capsys.readouterr().out.splitlines()[-1].startswith("correct prompts")


def test_sample_geneval_refuses_other_prompt_sources_and_a_bad_limit(cli_error):
    assert "--geneval samples GenEval's own prompts" in cli_error(
        ["diffusion", "sample", "--geneval", "--prompt", "a cat", "--out", "x"])
    assert "--limit 0: give at least 1 prompt" in cli_error(["diffusion", "sample", "--geneval", "--limit", "0",
                                                             "--out", "x"])
    assert "give --prompt TEXT (repeatable), --prompts FILE or --geneval" in cli_error(
        ["diffusion", "steer", "--out", "x"])
