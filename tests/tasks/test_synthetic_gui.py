"""Tests for tasks.synthetic_gui: determinism, ScreenSpot v1 format, geometry and unambiguous instructions."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from mmrl.errors import ConfigError
from tasks.synthetic_gui import COLOURS, SHAPES, WORDS, Element, _separated, generate, make_example

ALL_KINDS = ("button", "icon", "text")
V1_FIELDS = ["img_filename", "bbox", "instruction", "data_type", "data_source"]


def _files(root):
    """Relative path -> bytes of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _colour_named(instruction):
    names = [c for c in COLOURS if re.search(rf"\b{c}\b", instruction)]
    assert len(names) <= 1, instruction
    return names[0] if names else None


def test_same_seed_gives_identical_files(tmp_path):
    kwargs = dict(seed=7, n_distractors=2, kinds=ALL_KINDS)
    generate(tmp_path / "a", 20, **kwargs)
    generate(tmp_path / "b", 20, **kwargs)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(files_a) == 21
    assert files_a == files_b


def test_different_seeds_differ(tmp_path):
    json_a = generate(tmp_path / "a", 10, seed=1, kinds=ALL_KINDS).read_bytes()
    json_b = generate(tmp_path / "b", 10, seed=2, kinds=ALL_KINDS).read_bytes()
    assert json_a != json_b


def test_more_images_extend_fewer(tmp_path):
    short = json.loads(generate(tmp_path / "a", 3, seed=5).read_text())
    long = json.loads(generate(tmp_path / "b", 6, seed=5).read_text())
    assert long[:3] == short


def test_files_are_screenspot_v1(tmp_path):
    json_path = generate(tmp_path, 30, seed=3, width=160, height=120, n_distractors=2, kinds=ALL_KINDS,
                         split_name="mini")
    assert json_path == tmp_path / "screenspot_mini.json"
    records = json.loads(json_path.read_text())
    assert len(records) == 30
    for i, rec in enumerate(records):
        assert list(rec) == V1_FIELDS
        assert rec["img_filename"] == f"mini_{i:05d}.png"
        assert rec["data_type"] in ("text", "icon")
        assert rec["data_source"] == "synthetic"
        assert isinstance(rec["instruction"], str) and rec["instruction"]
        x, y, w, h = rec["bbox"]
        assert all(isinstance(v, int) for v in rec["bbox"])
        with Image.open(tmp_path / "images" / rec["img_filename"]) as img:
            assert img.size == (160, 120) and img.mode == "RGB"
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 160 and y + h <= 120


def test_target_pixels_carry_the_named_colour(tmp_path):
    json_path = generate(tmp_path, 60, seed=11, n_distractors=3, kinds=("button", "icon"))
    coloured = 0
    for rec in json.loads(json_path.read_text()):
        colour = _colour_named(rec["instruction"])
        assert colour is not None, rec["instruction"]
        pixels = np.asarray(Image.open(tmp_path / "images" / rec["img_filename"]))
        match = np.all(pixels == COLOURS[colour], axis=-1)
        x, y, w, h = rec["bbox"]
        inside = match[y:y + h, x:x + w]
        assert inside.mean() >= 0.25, rec  # a star fills ~1/3 of its box, a plain button nearly all of it
        assert match.sum() == inside.sum(), rec  # the target colour appears nowhere else
        coloured += 1
    assert coloured == 60


def test_plain_buttons_fill_most_of_their_box():
    for index in range(30):
        ex = make_example(0, index)
        x, y, w, h = ex.target.box
        pixels = np.asarray(ex.image)[y:y + h, x:x + w]
        fill = np.all(pixels == COLOURS[ex.target.colour], axis=-1).mean()
        assert fill >= (0.8 if ex.target.word is None else 0.4), ex.target


def test_text_targets_are_dark_ink_inside_the_box():
    for index in range(20):
        ex = make_example(4, index, kinds=("text",), n_distractors=2)
        x, y, w, h = ex.target.box
        pixels = np.asarray(ex.image).astype(int)
        dark = pixels.max(axis=-1) < 120
        assert dark[y:y + h, x:x + w].sum() >= 10
        assert f"'{ex.target.word}'" in ex.instruction
        assert ex.target.data_type == "text"


def test_elements_inside_image_and_apart():
    for index in range(100):
        ex = make_example(9, index, width=140, height=100, n_distractors=4, kinds=ALL_KINDS, max_size=30)
        elements = [ex.target, *ex.distractors]
        assert len(ex.distractors) == 4
        for el in elements:
            x, y, w, h = el.box
            assert x >= 0 and y >= 0 and x + w <= 140 and y + h <= 100
        for i, a in enumerate(elements):
            for b in elements[i + 1:]:
                assert _separated(a.box, b.box), (a, b)


def test_instruction_names_target_and_no_distractor_shares_it():
    seen_kinds = set()
    for index in range(150):
        ex = make_example(13, index, n_distractors=3, kinds=ALL_KINDS, max_size=32)
        named = ex.target.named()
        assert named and all(value in ex.instruction for value in named.values())
        expected_keys = {"button": {"colour"}, "icon": {"colour", "shape"}, "text": {"word"}}[ex.target.kind]
        assert expected_keys <= set(named)
        for d in ex.distractors:
            assert all(getattr(d, key) != value for key, value in named.items()), (ex.target, d)
        seen_kinds.add((ex.target.kind, ex.target.data_type))
    assert seen_kinds == {("button", "text"), ("button", "icon"), ("icon", "icon"), ("text", "text")}


def test_vocabulary_is_small_and_distinct():
    rgb = np.array(list(COLOURS.values()), dtype=int)
    distances = np.abs(rgb[:, None] - rgb[None]).sum(-1)
    assert distances[~np.eye(len(rgb), dtype=bool)].min() >= 60
    assert all(max(c) - min(c) >= 100 for c in COLOURS.values())  # no colour is grey
    assert len(set(SHAPES)) == len(SHAPES) and len(set(WORDS)) == len(WORDS)


def test_sizes_within_bounds():
    for index in range(50):
        ex = make_example(2, index, kinds=("button", "icon"), min_size=20, max_size=30)
        _, _, w, h = ex.target.box
        assert 20 <= w <= 30 and 20 <= h <= 30


def test_data_type_follows_the_label():
    assert Element("button", (0, 0, 20, 20), colour="red").data_type == "icon"
    assert Element("button", (0, 0, 20, 20), colour="red", word="save", font_size=8).data_type == "text"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(kinds=("slider",)), "valid kinds"),
        (dict(n_distractors=-1), "n_distractors"),
        (dict(min_size=30, max_size=20), "min_size"),
        (dict(max_size=200), "max_size"),
        (dict(n_distractors=40), "n_distractors"),
    ],
)
def test_bad_arguments_raise_config_error(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        generate(tmp_path, 2, seed=0, **kwargs)


def test_bad_split_name(tmp_path):
    with pytest.raises(ConfigError, match="split_name"):
        generate(tmp_path, 1, seed=0, split_name="../x")
