"""GenEval scoring: ``judge`` rule by rule on hand-built detections (thresholds, the 16 cap, exact counting, colour
on the most confident objects, the four relations around the margin, a failed target, ties), the summary math,
the layout's errors, and ``mmrl eval geneval`` end to end with a test-only detector reading JSON beside the images.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from mmrl.cli import main
from mmrl.errors import DataError
from mmrl.eval.geneval import (
    TAGS, check_metadata, evaluate, judge, kept_detections, load_layout, open_image, read_metadata,
    relative_position, summarize,
)
from mmrl.eval.records import json_rows
from mmrl.plugins import GENEVAL_DETECTORS

ROOT = Path(__file__).resolve().parents[2]


def det(name, box=(0, 0, 10, 10), score=0.95, color=None):
    return {"class": name, "box": list(box), "score": score, "color": color}


def meta(tag, *include, exclude=(), prompt="a photo"):
    row = {"tag": tag, "prompt": prompt, "include": list(include)}
    return {**row, "exclude": list(exclude)} if exclude else row


COW = meta("single_object", {"class": "cow", "count": 1}, prompt="a photo of a cow")
TWO_CLOCKS = meta("counting", {"class": "clock", "count": 2}, exclude=[{"class": "clock", "count": 3}],
                  prompt="a photo of two clocks")
BLUE_CAR = meta("colors", {"class": "car", "count": 1, "color": "blue"}, prompt="a photo of a blue car")


def dog_to_bear(relation, count=1):
    return meta("position", {"class": "teddy bear", "count": 1},
                {"class": "dog", "count": count, "position": [relation, 0]},
                prompt=f"a photo of a dog {relation} a teddy bear")


# ---------------------------------------------------------------------------------------------- thresholds

def test_score_threshold_is_0_3_and_strict():
    assert judge(COW, [det("cow", score=0.5)]) == (True, "")
    assert judge(COW, [det("cow", score=0.31)]) == (True, "")
    assert judge(COW, [det("cow", score=0.3)]) == (False, "expected cow>=1, found 0")
    assert judge(COW, [det("dog", score=0.99)]) == (False, "expected cow>=1, found 0")


def test_counting_threshold_is_0_9_so_a_0_5_object_does_not_count():
    one_cow = {**COW, "tag": "counting"}
    assert judge(one_cow, [det("cow", score=0.5)]) == (False, "expected cow>=1, found 0")
    assert judge(one_cow, [det("cow", score=0.9)]) == (False, "expected cow>=1, found 0")
    assert judge(one_cow, [det("cow", score=0.91)]) == (True, "")
    # a third clock at 0.5 is below the counting threshold, so it does not break the exclude
    assert judge(TWO_CLOCKS, [det("clock", score=0.95), det("clock", score=0.92), det("clock", score=0.5)]) == \
        (True, "")


def test_exact_counting_is_include_n_and_exclude_n_plus_1():
    clocks = [det("clock", score=s) for s in (0.99, 0.97, 0.95, 0.93)]
    assert judge(TWO_CLOCKS, clocks[:1]) == (False, "expected clock>=2, found 1")
    assert judge(TWO_CLOCKS, clocks[:2]) == (True, "")
    assert judge(TWO_CLOCKS, clocks[:3]) == (False, "expected clock<3, found 3")
    assert judge(TWO_CLOCKS, clocks) == (False, "expected clock<3, found 4")


def test_at_most_16_per_class_are_kept_the_most_confident():
    people = [det("person", score=0.31 + 0.01 * i) for i in range(20)]  # 0.31 ... 0.50, all above 0.3
    kept = kept_detections(people + [det("person", score=0.2)], "single_object")
    assert [round(d["score"], 2) for d in kept["person"]] == [round(0.50 - 0.01 * i, 2) for i in range(16)]
    assert judge(meta("counting", exclude=[{"class": "person", "count": 17}]),
                 [det("person", score=0.95)] * 20) == (True, "")
    assert judge(meta("counting", exclude=[{"class": "person", "count": 16}]),
                 [det("person", score=0.95)] * 20) == (False, "expected person<16, found 16")
    assert judge(meta("single_object", {"class": "person", "count": 17}), people) == \
        (False, "expected person>=17, found 16")


def test_ties_keep_input_order_and_input_may_be_unsorted():
    blue, red = det("car", color="blue", score=0.8), det("car", color="red", score=0.8)
    assert judge(BLUE_CAR, [blue, red]) == (True, "")
    assert judge(BLUE_CAR, [red, blue]) == (False, "expected blue car>=1, found 0 blue; and 1 red")
    ascending = [det("car", color="red", score=0.4), det("car", color="red", score=0.6), det("car", color="blue",
                                                                                            score=0.7)]
    assert [d["score"] for d in kept_detections(ascending, "colors")["car"]] == [0.7, 0.6, 0.4]
    assert judge(BLUE_CAR, ascending) == (True, "")


# ---------------------------------------------------------------------------------------------- colour

def test_colour_is_read_on_the_most_confident_count_objects_only():
    # the blue car is less confident than the red one: only the red one is looked at
    cars = [det("car", color="blue", score=0.6), det("car", color="red", score=0.9)]
    assert judge(BLUE_CAR, cars) == (False, "expected blue car>=1, found 0 blue; and 1 red")
    cars = [det("car", color="blue", score=0.9), det("car", color="red", score=0.6)]
    assert judge(BLUE_CAR, cars) == (True, "")
    assert judge(BLUE_CAR, [det("car")]) == (False, "expected blue car>=1, found 0 blue; and 1 unclassified")
    # two required: both of the two most confident must be blue; the tally lists colours in GenEval's order
    two = meta("colors", {"class": "car", "count": 2, "color": "blue"})
    cars = [det("car", color="white", score=0.7), det("car", color="blue", score=0.9),
            det("car", color="blue", score=0.5)]
    assert judge(two, cars) == (False, "expected blue car>=2, found 1 blue; and 1 blue, 1 white")


def test_color_attr_reports_each_failed_clause_on_its_own_line():
    bus_microwave = meta("color_attr", {"class": "bus", "count": 1, "color": "green"},
                         {"class": "microwave", "count": 1, "color": "purple"})
    found = [det("bus", color="red"), det("microwave", color="purple")]
    assert judge(bus_microwave, found) == (False, "expected green bus>=1, found 0 green; and 1 red")
    assert judge(bus_microwave, [det("bus", color="red")]) == \
        (False, "expected green bus>=1, found 0 green; and 1 red\nexpected microwave>=1, found 0")
    assert judge(bus_microwave, [det("bus", color="green"), det("microwave", color="purple")]) == (True, "")


# ---------------------------------------------------------------------------------------------- position

BEAR = [40, 40, 60, 60]  # centre (50, 50), 20 x 20: with a 20 x 20 dog the margin is 0.1 * 40 = 4 per axis


def shifted(dx=0.0, dy=0.0, box=BEAR):
    return [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy]


def test_relative_position_of_each_relation_around_the_margin():
    # along one axis r = |o| - 4, and the relation needs r / |o| > 0.5, i.e. |o| > 8
    assert relative_position(shifted(dx=8.2), BEAR) == ("right of",)  # 4.2 / 8.2 = 0.512
    assert relative_position(shifted(dx=-8.2), BEAR) == ("left of",)
    assert relative_position(shifted(dy=-8.2), BEAR) == ("above",)  # y grows downwards
    assert relative_position(shifted(dy=8.2), BEAR) == ("below",)
    assert relative_position(shifted(dx=7.8), BEAR) == ()  # 3.8 / 7.8 = 0.487
    assert relative_position(shifted(dx=4.5), BEAR) == ()  # outside the margin: 0.5 / 4.5 = 0.11
    assert relative_position(shifted(dx=3.9), BEAR) == ()  # inside the margin: r = 0 on both axes
    # diagonal: o = (20, 20), r = (16, 16), r / |o| = 16 / 28.28 = 0.566 on both axes
    assert relative_position(shifted(dx=20, dy=20), BEAR) == ("right of", "below")
    # o = (10, 10): 6 / 14.14 = 0.42, no relation although the centres are 14 apart
    assert relative_position(shifted(dx=10, dy=10), BEAR) == ()


def test_the_margin_is_a_tenth_of_both_sizes():
    wide = [30, 40, 70, 60]  # 40 wide: margin 0.1 * (40 + 20) = 6, so |o| must exceed 12
    assert relative_position(shifted(dx=12.1, box=wide), BEAR) == ("right of",)  # 6.1 / 12.1 = 0.504
    assert relative_position(shifted(dx=11.9, box=wide), BEAR) == ()  # 5.9 / 11.9 = 0.496
    assert relative_position(shifted(dy=11.9, box=wide), BEAR) == ("below",)  # heights 20 + 20: 7.9 / 11.9


@pytest.mark.parametrize("relation, dx, dy", [("left of", -1, 0), ("right of", 1, 0), ("above", 0, -1),
                                              ("below", 0, 1)])
def test_judge_each_relation_just_inside_and_just_outside(relation, dx, dy):
    def dog_at(offset):
        return [det("teddy bear", BEAR, 0.8), det("dog", shifted(dx * offset, dy * offset), 0.8)]

    assert judge(dog_to_bear(relation), dog_at(8.2)) == (True, "")
    assert judge(dog_to_bear(relation), dog_at(7.8)) == \
        (False, f"expected dog {relation} target, found no relation to target")
    opposite = relative_position(shifted(-dx * 8.2, -dy * 8.2), BEAR)[0]
    assert judge(dog_to_bear(relation), dog_at(-8.2)) == \
        (False, f"expected dog {relation} target, found {opposite} target")


def test_position_reasons_list_every_relation_found():
    found = [det("teddy bear", BEAR), det("dog", shifted(dx=20, dy=20))]
    assert judge(dog_to_bear("above"), found) == (False, "expected dog above target, found right of and below target")


def test_position_without_a_target_and_without_the_object():
    dog = det("dog", shifted(dx=20))
    assert judge(dog_to_bear("right of"), [dog]) == \
        (False, "expected teddy bear>=1, found 0\nno target for dog to be right of")
    # a bear below threshold is no target either
    assert judge(dog_to_bear("right of"), [dog, det("teddy bear", BEAR, score=0.25)]) == \
        (False, "expected teddy bear>=1, found 0\nno target for dog to be right of")
    # the dog's own clause fails first: its position is not checked
    assert judge(dog_to_bear("right of"), [det("teddy bear", BEAR)]) == (False, "expected dog>=1, found 0")


def test_every_found_object_must_be_in_relation_to_every_target():
    dogs = [det("teddy bear", BEAR), det("dog", shifted(dx=20), 0.9), det("dog", shifted(dx=-20), 0.8)]
    assert judge(dog_to_bear("right of", count=1), dogs) == (True, "")  # only the most confident dog is read
    assert judge(dog_to_bear("right of", count=2), dogs) == \
        (False, "expected dog right of target, found left of target")


# ---------------------------------------------------------------------------------------------- scores

def test_summary_overall_is_the_mean_of_tag_accuracies_and_prompts_count_any_correct_image():
    def row(tag, prompt, correct):
        return {"filename": "x.png", "tag": tag, "prompt": prompt, "correct": correct, "reason": ""}

    rows = [row("position", "d", c) for c in (False, False, False, True)]  # 1/4
    rows += [row("single_object", "a", True), row("single_object", "a", True),
             row("single_object", "b", True), row("single_object", "b", False)]  # 3/4
    rows += [row("counting", "c", False), row("counting", "c", False)]  # 0/2
    summary = summarize(rows)
    assert list(summary["tags"]) == ["single_object", "counting", "position"]
    assert summary["tags"]["single_object"] == {"accuracy": 0.75, "correct": 3, "images": 4}
    assert summary["tags"]["counting"] == {"accuracy": 0.0, "correct": 0, "images": 2}
    assert summary["overall"] == pytest.approx((0.75 + 0.0 + 0.25) / 3)  # not 4 / 10
    assert summary["correct_images"] == pytest.approx(0.4)
    assert summary["correct_prompts"] == pytest.approx(0.75)  # a, b, d have a correct image; c has none
    assert (summary["images"], summary["prompts"]) == (10, 4)


def test_the_official_metadata_file_passes_the_checks():
    rows = [check_metadata(raw, where) for where, raw in
            json_rows(ROOT / "data" / "geneval" / "evaluation_metadata.jsonl", "GenEval metadata")]
    assert Counter(r["tag"] for r in rows) == dict(zip(TAGS, (80, 99, 80, 94, 100, 100)))


# ---------------------------------------------------------------------------------------------- the layout

def write_prompt(root: Path, index: int, metadata: dict, detections: list[list[dict]]) -> Path:
    """A prompt folder of the official layout: one 32 x 32 PNG per entry of ``detections``, and beside each image
    its detections as JSON (``0000.json``), which ``JsonDetector`` returns."""
    folder = root / f"{index:05d}"
    (folder / "samples").mkdir(parents=True)
    (folder / "metadata.jsonl").write_text(json.dumps(metadata) + "\n")
    for k, found in enumerate(detections):
        Image.new("RGB", (32, 32), (10 * k, 100, 200)).save(folder / "samples" / f"{k:04d}.png")
        (folder / "samples" / f"{k:04d}.json").write_text(json.dumps(found))
    return folder


def test_layout_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="GenEval image folder not found"):
        load_layout(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no prompt folders"):
        load_layout(tmp_path)
    folder = write_prompt(tmp_path, 0, COW, [[]])
    path = folder / "metadata.jsonl"
    path.unlink()
    with pytest.raises(DataError, match=f"GenEval metadata file not found: {path}$"):
        load_layout(tmp_path)
    path.write_text("\n" + json.dumps(COW)[:-5] + "\n")
    with pytest.raises(DataError, match=f"^{path}:2: invalid JSON"):
        read_metadata(path)
    path.write_text(json.dumps(COW) + "\n" + json.dumps(COW) + "\n")
    with pytest.raises(DataError, match=f"^{path}:2: a second JSON object"):
        read_metadata(path)
    path.write_text(json.dumps(meta("single_object", {"class": "cow"})))
    with pytest.raises(DataError, match=f"^{path}:1: include\\[0\\]: missing field 'count'$"):
        read_metadata(path)
    path.write_text(json.dumps(meta("position", {"class": "dog", "count": 1, "position": ["right of", 0]})))
    with pytest.raises(DataError, match="include\\[0\\]: field 'position' must be \\[relation, k\\]"):
        read_metadata(path)
    path.write_text(json.dumps(meta("colors", {"class": "car", "count": 1, "color": "grey"})))
    with pytest.raises(DataError, match="field 'color' must be one of red, orange"):
        read_metadata(path)
    path.write_text(json.dumps(COW))
    for image in (folder / "samples").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="no images"):
        load_layout(tmp_path)
    (folder / "samples").rmdir()
    with pytest.raises(DataError, match="no samples/ folder"):
        load_layout(tmp_path)


def test_corrupt_png_is_named(tmp_path):
    folder = write_prompt(tmp_path, 0, COW, [[]])
    bad = folder / "samples" / "0000.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match=f"^{bad}: cannot read image"):
        evaluate(load_layout(tmp_path), JsonDetector(), progress=False)
    with pytest.raises(DataError, match="image not found"):
        open_image(folder / "samples" / "0009.png")


def test_layout_reads_digit_folders_and_numbered_pngs_in_order(tmp_path):
    write_prompt(tmp_path, 10, COW, [[], []])
    write_prompt(tmp_path, 2, TWO_CLOCKS, [[]])
    (tmp_path / "notes").mkdir()
    (tmp_path / "00002" / "samples" / "grid.png").write_bytes(b"")
    (tmp_path / "00002" / "samples" / "0000.png.bak").write_bytes(b"")
    prompts = load_layout(tmp_path)
    assert [p.folder.name for p in prompts] == ["00002", "00010"]
    assert [[i.name for i in p.images] for p in prompts] == [["0000.png"], ["0000.png", "0001.png"]]
    assert prompts[0].metadata == TWO_CLOCKS


# ---------------------------------------------------------------------------------------------- end to end

class JsonDetector:
    """Test-only detector: each image's detections are the JSON file beside it (``0000.png`` -> ``0000.json``, or
    ``suffix`` in place of ``.json``)."""

    closed: ClassVar[list[JsonDetector]] = []

    def __init__(self, *, suffix: str = ".json"):
        self.suffix = suffix

    def detect(self, images, metadata):
        assert len(images) == len(metadata) and all(im.mode == "RGB" for im in images)
        return [json.loads(Path(im.filename).with_suffix(self.suffix).read_text()) for im in images]

    def close(self):
        JsonDetector.closed.append(self)


@pytest.fixture
def json_detector():
    GENEVAL_DETECTORS.register("json_test", JsonDetector)
    JsonDetector.closed.clear()
    yield "json_test"
    GENEVAL_DETECTORS.unregister("json_test")


def tiny_set(root: Path) -> Path:
    """Four prompts, eight images; per tag single_object 1/2, counting 1/2, position 1/3, colors 0/1."""
    write_prompt(root, 0, COW, [[det("cow", score=0.5)], [det("dog", score=0.9)]])
    write_prompt(root, 1, TWO_CLOCKS, [[det("clock", score=0.95), det("clock", score=0.92)],
                                       [det("clock", score=0.95), det("clock", score=0.92), det("clock", score=0.91)]])
    right = dog_to_bear("right of")
    write_prompt(root, 2, right, [[det("dog", shifted(dx=8.2), 0.8), det("teddy bear", BEAR, 0.8)],
                                  [det("dog", BEAR, 0.8), det("teddy bear", shifted(dx=8.2), 0.8)],
                                  [det("teddy bear", BEAR, 0.8)]])
    write_prompt(root, 3, BLUE_CAR, [[det("car", color="red")]])
    return root


def test_mmrl_eval_geneval_end_to_end(tmp_path, json_detector, capsys):
    images = tiny_set(tmp_path / "images")
    out, rows_path = tmp_path / "out" / "geneval.json", tmp_path / "out" / "rows.jsonl"
    main(["eval", "geneval", str(images), "--detector", json_detector, "--output", str(out),
          "--per-sample", str(rows_path), "--quiet"])
    assert capsys.readouterr().out.splitlines() == [
        "single_object      50.00%  (1 / 2)",
        "counting           50.00%  (1 / 2)",
        "colors              0.00%  (0 / 1)",
        "position           33.33%  (1 / 3)",
        "overall           0.33333  (mean over 4 tags)",  # (0.5 + 0.5 + 0 + 1/3) / 4, not 3 / 8
        "correct images     37.50%  (3 / 8)",
        "correct prompts    75.00%  (3 / 4)",
    ]
    result = json.loads(out.read_text())
    assert result["detector"] == json_detector
    assert result["overall"] == pytest.approx(1 / 3)
    assert result["correct_images"] == pytest.approx(3 / 8) and result["correct_prompts"] == pytest.approx(3 / 4)
    assert result["tags"]["position"] == {"accuracy": pytest.approx(1 / 3), "correct": 1, "images": 3}
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert [(Path(r["filename"]).relative_to(images).as_posix(), r["correct"], r["reason"]) for r in rows] == [
        ("00000/samples/0000.png", True, ""),
        ("00000/samples/0001.png", False, "expected cow>=1, found 0"),
        ("00001/samples/0000.png", True, ""),
        ("00001/samples/0001.png", False, "expected clock<3, found 3"),
        ("00002/samples/0000.png", True, ""),
        ("00002/samples/0001.png", False, "expected dog right of target, found left of target"),
        ("00002/samples/0002.png", False, "expected dog>=1, found 0"),
        ("00003/samples/0000.png", False, "expected blue car>=1, found 0 blue; and 1 red"),
    ]
    assert rows[4]["tag"] == "position" and rows[4]["prompt"] == "a photo of a dog right of a teddy bear"
    assert len(JsonDetector.closed) == 1


def test_detector_arguments_and_names(tmp_path, json_detector, capsys, cli_error):
    images = tmp_path / "images"
    write_prompt(images, 0, COW, [[]])
    (images / "00000" / "samples" / "0000.alt.json").write_text(json.dumps([det("cow")]))
    main(["eval", "geneval", str(images), "--detector", json_detector, "--detector-arg", "suffix=.alt.json",
          "--quiet"])
    assert capsys.readouterr().out.splitlines()[0] == "single_object     100.00%  (1 / 1)"
    err = cli_error(["eval", "geneval", str(images), "--detector-arg", f"path={tmp_path / 'missing'}"])
    assert "detector.path=" in err and "cannot load a Mask2Former checkpoint" in err  # the default detector
    err = cli_error(["eval", "geneval", str(images), "--detector", json_detector, "--detector-arg", "sufix=x"])
    assert "unknown config key 'detector.sufix'" in err and "valid: suffix" in err
    err = cli_error(["eval", "geneval", str(images), "--detector", json_detector, "--detector-arg", "x"])
    assert "expected KEY=VALUE" in err


def test_cli_errors_name_the_file_and_the_detector_is_closed(tmp_path, json_detector, cli_error):
    images = tmp_path / "images"
    folder = write_prompt(images, 0, COW, [[det("cow", score="high")], []])
    err = cli_error(["eval", "geneval", str(images), "--detector", json_detector, "--quiet"])
    assert err.endswith(f"detections of {folder / 'samples' / '0000.png'}: detection 0: field 'score' must be a "
                        "finite number, got 'high'")
    assert len(JsonDetector.closed) == 1
    (folder / "samples" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    err = cli_error(["eval", "geneval", str(images), "--detector", json_detector, "--quiet"])
    assert str(folder / "samples" / "0001.png") in err and "cannot read image" in err
    (folder / "metadata.jsonl").write_text("{\n")
    err = cli_error(["eval", "geneval", str(images), "--detector", json_detector])
    assert err == f"mmrl: error: {folder / 'metadata.jsonl'}:1: invalid JSON: Expecting property name enclosed in " \
        "double quotes"
