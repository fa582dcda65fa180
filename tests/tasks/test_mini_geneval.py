"""The mini-GenEval world: prompts in GenEval's exact format and wording (checked against the official metadata
file), seeded determinism, equal tag shares, the renderer, the "shapes" detector's accuracy on rendered images
(every image judged correct at 32 and 64 px, corrupted ones judged wrong), its boxes and scores, the cached
prompt file, and ``mmrl eval geneval --detector shapes`` end to end on rendered images in the official layout.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from mmrl.cli import main
from mmrl.diffusion.prompts import read_prompt_file
from mmrl.errors import ConfigError
from mmrl.eval.geneval import TAGS, check_metadata, judge, load_layout
from mmrl.plugins import GENEVAL_DETECTORS
from tasks import mini_geneval as mg

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL = [json.loads(line) for line in (ROOT / "data/geneval/evaluation_metadata.jsonl").read_text().splitlines()
            if line.strip()]


def skeleton(row: dict) -> str:
    """The prompt's wording with its objects' names, colours and numbers abstracted (``an`` read as ``a``)."""
    text = row["prompt"]
    for i, clause in sorted(enumerate(row["include"]), key=lambda c: -len(c[1]["class"])):
        text = re.sub(rf"\b{re.escape(clause['class'])}", f"<obj{i}>", text)
        if "color" in clause:
            text = re.sub(rf"\b{clause['color']} <obj{i}>", f"<colour{i}> <obj{i}>", text)
    text = re.sub(r"\b(two|three|four|five|six)\b", "<n>", text)
    return re.sub(r"\ban\b", "a", text)


def detector():
    return GENEVAL_DETECTORS.get("shapes")()


# ---------------------------------------------------------------------------------------------- prompts

def test_rows_are_geneval_metadata_with_the_official_key_order_and_exact_counting():
    official_keys = {row["tag"]: list(row) for row in OFFICIAL}
    for i, row in enumerate(mg.prompts(120, seed=0)):
        assert check_metadata(row, f"row {i}") is row
        assert list(row) == official_keys[row["tag"]]
        classes = [c["class"] for c in row["include"]]
        assert set(classes) <= set(mg.CLASSES) and len(set(classes)) == len(classes)
        assert {c.get("color") for c in row["include"]} - {None} <= set(mg.COLOURS)
        if row["tag"] == "counting":
            (clause,), (exclude,) = row["include"], row["exclude"]
            assert clause["count"] in (2, 3, 4) and exclude == {"class": clause["class"], "count": clause["count"] + 1}
        else:
            assert "exclude" not in row and all(c["count"] == 1 for c in row["include"])


def test_wording_is_geneval_wording():
    official = {}
    for row in OFFICIAL:
        official.setdefault(row["tag"], set()).add(skeleton(row))
    ours = {}
    for row in mg.prompts(600, seed=1):
        ours.setdefault(row["tag"], set()).add(skeleton(row))
    for tag in TAGS:
        assert ours[tag] and ours[tag] <= official[tag], (tag, ours[tag] - official[tag])
    assert ours["position"] == {f"a photo of a <obj1> {r} a <obj0>" for r in ("left of", "right of", "above", "below")}
    assert mg.prompt_row("counting", random.Random(0))["prompt"] in {
        f"a photo of {n} {k}s" for n in ("two", "three", "four") for k in mg.CLASSES}


def test_prompts_are_seeded_extend_and_give_equal_tag_shares():
    rows = mg.prompts(600, seed=3)
    assert rows == mg.prompts(600, seed=3)
    assert mg.prompts(25, seed=3) == rows[:25]
    assert mg.prompts(60, seed=4) != rows[:60]
    assert [r["tag"] for r in rows[:6]] == list(TAGS)
    assert Counter(r["tag"] for r in rows) == {tag: 100 for tag in TAGS}
    assert len({r["prompt"] for r in rows}) > 100  # varied


def test_parse_prompt_inverts_the_wording():
    for row in mg.prompts(300, seed=5):
        assert mg.parse_prompt(row["prompt"]) == row
    assert mg.parse_prompt("a  photo of a red   circle") == {
        "tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
        "prompt": "a photo of a red circle"}
    for text in ("a photo of a bench", "a photo of a red circle and a square", "a photo of a pink circle",
                 "a photo of five circles", "a photo of a circle near a square", ""):
        assert mg.parse_prompt(text) is None


# ---------------------------------------------------------------------------------------------- rendering and detection

@pytest.mark.parametrize("resolution", [32, 64])
def test_detector_judges_every_rendered_image_correct(resolution):
    rows = mg.prompts(240, seed=resolution)
    images = [mg.render(row, random.Random(i), resolution) for i, row in enumerate(rows)]
    found = detector().detect(images, rows)
    verdicts = [judge(row, dets) for row, dets in zip(rows, found)]
    assert [v for v in verdicts if not v[0]] == []
    for row, image, dets in zip(rows, images, found):
        assert image.size == (resolution, resolution) and image.mode == "RGB"
        colours = {tuple(c) for c in np.asarray(image).reshape(-1, 3)}
        assert colours <= {mg.BACKGROUND, *mg.PALETTE.values()}
        assert len(dets) == sum(c["count"] for c in row["include"])  # no spurious blob
        assert min(d["score"] for d in dets) > 0.95  # above the counting threshold, 0.9
        for clause in row["include"]:
            if "color" in clause:
                assert [d["color"] for d in dets if d["class"] == clause["class"]] == [clause["color"]]
    # a slight blur (0.5 px at 32 px) lowers the scores but not the verdicts
    blurred = [image.filter(ImageFilter.GaussianBlur(0.5 * resolution / 32)) for image in images]
    found_blurred = detector().detect(blurred, rows)
    assert [row["prompt"] for row, dets in zip(rows, found_blurred) if not judge(row, dets)[0]] == []
    assert np.mean([d["score"] for dets in found_blurred for d in dets]) < np.mean([d["score"] for dets in found
                                                                                    for d in dets])


@pytest.mark.parametrize("resolution", [32, 64])
def test_images_violating_the_metadata_are_judged_wrong(resolution):
    rows = mg.prompts(120, seed=11)
    rng = random.Random(0)
    bad = [mg.corrupt(row, rng) for row in rows]
    images = [mg.render(row, random.Random(i), resolution) for i, row in enumerate(bad)]
    found = detector().detect(images, rows)
    verdicts = [judge(row, dets) for row, dets in zip(rows, found)]
    assert [row["prompt"] for row, (ok, _) in zip(rows, verdicts) if ok] == []
    reasons = {row["tag"]: reason for row, (_, reason) in zip(rows, verdicts)}
    assert re.fullmatch(r"expected (red|yellow|green|blue|purple) \w+>=1, found 0 \w+; and 1 \w+", reasons["colors"])
    assert re.fullmatch(r"expected \w+ (left of|right of|above|below) target, found .* target", reasons["position"])
    assert re.fullmatch(r"expected \w+(>=\d, found \d|<\d, found \d)", reasons["counting"])


def test_corrupt_changes_what_each_tag_asks():
    rng = random.Random(1)
    for row in mg.prompts(60, seed=2):
        bad = mg.corrupt(row, rng)
        assert bad != row and check_metadata(bad, "corrupted")
        if row["tag"] == "position":
            assert bad["include"][1]["position"][0] != row["include"][1]["position"][0]
        elif row["tag"] == "counting":
            n = bad["include"][0]["count"]
            assert abs(n - row["include"][0]["count"]) == 1 and bad["exclude"][0]["count"] == n + 1


def test_render_is_seeded_and_checks_its_input():
    row = mg.prompts(5, seed=0)[4]  # position
    first = np.asarray(mg.render(row, random.Random(7)))
    assert np.array_equal(first, np.asarray(mg.render(row, random.Random(7))))
    assert not np.array_equal(first, np.asarray(mg.render(row, random.Random(8))))
    with pytest.raises(ValueError, match="not an object of this world"):
        mg.render({"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "x"}, random.Random())
    with pytest.raises(ValueError, match="below the minimum"):
        mg.render(row, random.Random(), 16)
    contradiction = {"tag": "position", "prompt": "x", "include": [
        {"class": "circle", "count": 1}, {"class": "square", "count": 1, "position": ["left of", 0]},
        {"class": "square", "count": 1, "position": ["right of", 0]}]}
    with pytest.raises(ValueError, match="no layout"):
        mg.render(contradiction, random.Random(), 32)


def paint(resolution, shapes):
    """An image of ``(kind, colour, x, y, side)`` shapes drawn by the renderer's own shape masks."""
    pixels = np.full((resolution, resolution, 3), mg.BACKGROUND, dtype=np.uint8)
    for kind, colour, x, y, side in shapes:
        pixels[mg._shape_mask(kind, x, y, side, resolution)] = mg.PALETTE[colour]
    return Image.fromarray(pixels)


def test_detector_boxes_classes_colours_and_scores_on_a_hand_made_image():
    image = paint(32, [("square", "red", 2, 3, 8), ("circle", "blue", 20, 2, 9), ("triangle", "purple", 12, 20, 9)])
    dets = sorted(detector().detect([image], [{}])[0], key=lambda d: d["box"])
    assert [(d["class"], d["color"], d["box"]) for d in dets] == [
        ("square", "red", [2.0, 3.0, 10.0, 11.0]),
        ("triangle", "purple", [12.0, 20.0, 21.0, 29.0]),
        ("circle", "blue", [20.0, 2.0, 29.0, 11.0]),
    ]
    assert all(0.97 < d["score"] <= 1 for d in dets)
    assert detector().detect([Image.new("RGB", (32, 32), mg.BACKGROUND)], [{}]) == [[]]


def test_scores_fall_on_blurred_specks_and_noise_and_min_chroma_is_a_setting():
    clean = paint(32, [("square", "green", 4, 4, 9), ("circle", "yellow", 18, 18, 9)])
    blurred = clean.filter(ImageFilter.GaussianBlur(1.5))
    clean_scores = [d["score"] for d in detector().detect([clean], [{}])[0]]
    blurred_scores = [d["score"] for d in detector().detect([blurred], [{}])[0]]
    assert len(blurred_scores) >= 2 and max(blurred_scores) < min(clean_scores)
    speck = paint(32, [("square", "red", 10, 10, 2)])
    (det,) = detector().detect([speck], [{}])[0]
    assert det["class"] == "square" and det["score"] < 0.3
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    dets = detector().detect([noise], [{}])[0]
    assert dets and all(0 < d["score"] < 0.3 for d in dets)
    assert GENEVAL_DETECTORS.bind("shapes", {"min_chroma": 250})().detect([clean], [{}]) == [[]]
    with pytest.raises(ConfigError, match="detector.min_chroma=300"):
        mg.ShapesDetector(min_chroma=300)


# ---------------------------------------------------------------------------------------------- files and commands

def test_prompt_file_is_cached_and_read_as_a_diffusion_prompt_file(tmp_path):
    path = mg.prompt_file(n=12, seed=1, cache_dir=str(tmp_path))
    assert path.name == mg.JSONL_NAME and path.parent.parent == tmp_path / "data"
    assert read_prompt_file(path) == mg.prompts(12, 1)
    assert mg.prompt_file(n=12, seed=1, cache_dir=str(tmp_path)) == path
    assert mg.prompt_file(n=12, seed=2, cache_dir=str(tmp_path)) != path


def test_module_command_writes_prompts_and_a_layout(tmp_path, capsys):
    out, images = tmp_path / "p.jsonl", tmp_path / "images"
    mg.main([str(out), "--n", "7", "--seed", "2", "--images", str(images), "--per-prompt", "2", "--resolution", "40"])
    assert read_prompt_file(out) == mg.prompts(7, 2)
    layout = load_layout(images)
    assert [p.metadata for p in layout] == mg.prompts(7, 2) and all(len(p.images) == 2 for p in layout)
    assert Image.open(layout[0].images[0]).size == (40, 40)
    assert "wrote 7 prompts" in capsys.readouterr().out


@pytest.mark.parametrize("resolution", [32, 64])
def test_mmrl_eval_geneval_with_the_shapes_detector(tmp_path, capsys, resolution):
    rows = mg.prompts(24, seed=9)
    mg.write_layout(rows, tmp_path / "good", per_prompt=2, resolution=resolution)
    main(["eval", "geneval", str(tmp_path / "good"), "--detector", "shapes", "--output", str(tmp_path / "good.json"),
          "--quiet"])
    good = json.loads((tmp_path / "good.json").read_text())
    assert good["detector"] == "shapes" and good["images"] == 48
    assert good["prompts"] == len({row["prompt"] for row in rows})  # the few single-object prompts repeat
    assert good["overall"] == good["correct_images"] == good["correct_prompts"] == 1.0
    assert all(t["accuracy"] == 1.0 for t in good["tags"].values()) and list(good["tags"]) == list(TAGS)

    # rows 1, 2, 5, 6, ... (i % 4 in {1, 2}) drawn from corrupted metadata: half of every tag
    rng = random.Random(3)
    draw = [mg.corrupt(row, rng) if i % 4 in (1, 2) else row for i, row in enumerate(rows)]
    mg.write_layout(rows, tmp_path / "mixed", per_prompt=2, resolution=resolution, draw=draw)
    capsys.readouterr()
    main(["eval", "geneval", str(tmp_path / "mixed"), "--detector", "shapes", "--output", str(tmp_path / "mixed.json"),
          "--per-sample", str(tmp_path / "rows.jsonl"), "--quiet"])
    assert "overall           0.50000  (mean over 6 tags)" in capsys.readouterr().out
    mixed = json.loads((tmp_path / "mixed.json").read_text())
    assert mixed["correct_images"] == 0.5
    fine = {}
    for i, row in enumerate(rows):
        fine[row["prompt"]] = fine.get(row["prompt"], False) or i % 4 not in (1, 2)
    assert mixed["correct_prompts"] == sum(fine.values()) / len(fine) < 1
    assert {tag: t["accuracy"] for tag, t in mixed["tags"].items()} == {tag: 0.5 for tag in TAGS}
    per_image = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in per_image] == [i % 4 not in (1, 2) for i in range(24) for _ in range(2)]
    assert all(bool(r["reason"]) != r["correct"] for r in per_image)


def test_pretraining_world_renders_seeded_prompts_as_images_in_minus_one_to_one():
    import torch

    from mmrl.plugins import PRETRAIN_WORLDS

    assert PRETRAIN_WORLDS.get("mini_geneval") is mg.pretraining_world
    images, texts = mg.pretraining_world(12, 32, torch.Generator().manual_seed(3))
    seed = int(torch.randint(2**31 - 1, (1,), generator=torch.Generator().manual_seed(3)))
    rows = mg.prompts(12, seed)
    assert texts == [row["prompt"] for row in rows]
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.float32
    for i in (0, 7):  # image i is render(row i) with its own seeded rng, mapped from [0, 255] to [-1, 1]
        pixels = np.array(mg.render(rows[i], random.Random(seed * 1_000_003 + i), 32))
        assert torch.equal(images[i], torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1)
    again, _ = mg.pretraining_world(12, 32, torch.Generator().manual_seed(3))
    assert torch.equal(images, again)


def test_shipped_training_prompts_are_what_the_module_command_writes():
    shipped = Path(__file__).resolve().parents[2] / "data" / "mini_geneval" / "prompts.jsonl"
    assert [json.loads(line) for line in shipped.read_text().splitlines()] == mg.prompts(600, 0)
