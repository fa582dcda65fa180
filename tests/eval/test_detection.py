"""``mmrl eval detection`` and ``mmrl eval rec``: COCO mAP reproduced with pycocotools run directly on the same
data, F1 and REC accuracy counted by hand, the coordinate conventions, no media read when scoring predictions
(unless the coordinates need a size), one-line errors naming file and record, and the ``--model`` path."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmrl.cli import main
from mmrl.errors import DataError
from mmrl.eval.detection import DETECTION_KEYS, REC_KEYS, read_predictions, score

# ---------------------------------------------------------------- COCO data

# non-contiguous category ids: the evaluator remaps them, the reference keeps the file's
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "bird"}]
IMAGES = [
    {"id": 1, "file_name": "one.png", "width": 100, "height": 80},
    {"id": 2, "file_name": "two.png", "width": 120, "height": 100},
    {"id": 3, "file_name": "empty.png", "width": 64, "height": 64},  # no objects
    {"id": 4, "file_name": "four.png", "width": 90, "height": 90},
    {"id": 5, "file_name": "five.png", "width": 50, "height": 50},  # no prediction row
]
ANNOTATIONS = [  # bbox [x, y, w, h]
    {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 30], "area": 1200, "iscrowd": 0},
    {"id": 11, "image_id": 1, "category_id": 3, "bbox": [60, 20, 30, 40], "area": 1200, "iscrowd": 0},
    {"id": 12, "image_id": 2, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0},
    {"id": 13, "image_id": 2, "category_id": 1, "bbox": [60, 50, 50, 40], "area": 2000, "iscrowd": 1},
    {"id": 14, "image_id": 2, "category_id": 3, "bbox": [20, 60, 30, 30], "area": 900, "iscrowd": 0},
    {"id": 15, "image_id": 4, "category_id": 3, "bbox": [5, 5, 40, 40], "area": 1600, "iscrowd": 0},
    {"id": 16, "image_id": 5, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
]


def _det(box, label, score=None):
    item = {"bbox_2d": box, "label": label}
    return item if score is None else {**item, "score": score}


# the model's answers, [x1, y1, x2, y2] in original pixels (--coords absolute)
DETECTIONS = {
    1: [_det([10, 10, 50, 40], "cat", 0.9),  # exact: TP
        _det([10, 10, 50, 40], "cat", 0.9),  # the same box again, same score (a tie): FP
        _det([58, 22, 90, 60], "dog")],  # no score (1.0): IoU 1140/1276 = 0.89 with the dog: TP
    2: [_det([0, 0, 50, 50], "cat", 0.6),  # exact: TP
        _det([60, 50, 110, 90], "cat", 0.8),  # on the crowd box: ignored by COCO; FP in the F1 counts
        _det([20, 60, 50, 90], "bird", 0.7),  # on the dog, wrong label: FP
        _det([0, 0, 10, 10], "horse", 0.99)],  # names no category: left out of mAP, FP in the F1 counts
    3: [_det([1, 1, 20, 20], "dog", 0.5)],  # on the image without objects: FP
}
OUTPUTS = {
    1: json.dumps(DETECTIONS[1]),
    2: "<think>two animals</think><answer>```json\n" + json.dumps(DETECTIONS[2]) + "\n```</answer>",
    3: json.dumps(DETECTIONS[3]),
    4: "I see a dog somewhere",  # unparsable: the dog is missed
    # 5: no row (missing): its cat is missed
    99: "[]",  # names no image: unmatched
}
# F1 at IoU 0.5: TP = 3 (cat and dog of image 1, cat of image 2); P = 3 + 4 + 1 + 0 + 0 = 8 predictions;
# G = 2 + 2 + 0 + 1 + 1 = 6 non-crowd boxes. precision 3/8, recall 3/6, F1 = 2 (3/8)(1/2) / (7/8) = 3/7
F1 = {"precision@0.5": 3 / 8, "recall@0.5": 1 / 2, "f1@0.5": 3 / 7}
COUNTS = {"n": 5, "unparsable": 1, "missing": 1, "unmatched": 1}


def _write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _coco(path: Path, images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES) -> Path:
    return _write_json(path, {"images": images, "annotations": annotations, "categories": categories})


def _predictions(path: Path, outputs: dict) -> Path:
    return _write_jsonl(path, [{"id": k, "output": v} for k, v in outputs.items()])


def _reference_stats(coco_file: Path) -> list[float]:
    """AP@[.5:.95], AP@.5, AP@.75 of ``DETECTIONS`` by pycocotools itself: xywh boxes, score 1.0 where absent,
    labels naming no category dropped."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = {c["name"]: c["id"] for c in CATEGORIES}
    results = [{"image_id": image_id, "category_id": ids[d["label"]],
                "bbox": [d["bbox_2d"][0], d["bbox_2d"][1], d["bbox_2d"][2] - d["bbox_2d"][0],
                         d["bbox_2d"][3] - d["bbox_2d"][1]], "score": d.get("score", 1.0)}
               for image_id, found in DETECTIONS.items() for d in found if d["label"] in ids]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_file))
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats[:3]]


@pytest.fixture
def no_image_reads(monkeypatch):
    """Fail any PIL image open: scoring predictions must not read media."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"an image was opened: {args[:1]}")

    monkeypatch.setattr(Image, "open", refuse)


# ---------------------------------------------------------------- detection: metrics


def test_detection_predictions_reproduce_pycocotools(tmp_path, capsys, no_image_reads):
    data = _coco(tmp_path / "instances.json")  # no image files anywhere: none is needed
    preds = _predictions(tmp_path / "preds.jsonl", OUTPUTS)
    out = tmp_path / "out" / "detection.json"
    assert main(["eval", "detection", "--data", str(data), "--images", str(tmp_path / "nowhere"),
                 "--predictions", str(preds), "--output", str(out)]) is None
    result = json.loads(out.read_text())
    reference = _reference_stats(data)
    assert 0 < reference[0] < reference[1] < 1  # a non-trivial case: duplicates, a miss and FPs cost AP
    assert [result["map"], result["map50"], result["map75"]] == pytest.approx(reference, abs=1e-12)
    assert {k: result[k] for k in F1} == pytest.approx(F1)
    assert {k: result[k] for k in COUNTS} == COUNTS
    assert list(result) == [*DETECTION_KEYS, "coords"] and result["coords"] == "absolute"
    # the table prints the same numbers, one aligned line each
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "(absolute coords)"
    table = dict(line.split() for line in lines[1:])
    assert list(table) == list(DETECTION_KEYS)
    assert table["f1@0.5"] == f"{3 / 7:.4f}" and table["map"] == f"{reference[0]:.4f}"
    assert (table["n"], table["unparsable"], table["missing"], table["unmatched"]) == ("5", "1", "1", "1")
    assert len({line.index(table[key]) + len(table[key]) for line, key in zip(lines[1:], table)}) == 1  # aligned


def test_detection_map_is_not_a_per_image_mean(tmp_path):
    # one cat on each of two images; image 1 is answered exactly with score 0.1, image 2 with a false cat at
    # score 0.9 and the true one (exact) at 0.2. Per image, AP would be 1 and 1 (mean 1); over the dataset the
    # 0.9 FP ranks first: precisions 0, 1/2, 2/3 at recalls 0, 1/2, 1, whose interpolated envelope is 2/3 at
    # every recall -> AP = 2/3 at every IoU threshold
    images = [{"id": 1, "file_name": "a.png", "width": 100, "height": 100},
              {"id": 2, "file_name": "b.png", "width": 100, "height": 100}]
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30]},  # area, iscrowd absent
                   {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 30, 30]}]
    records = _coco(tmp_path / "i.json", images, annotations, [{"id": 1, "name": "cat"}])
    from mmrl.eval.detection_format import load_coco

    outputs = [json.dumps([_det([10, 10, 40, 40], "cat", 0.1)]),
               json.dumps([_det([0, 0, 20, 20], "cat", 0.9), _det([50, 50, 80, 80], "cat", 0.2)])]
    result = score("coco", load_coco(records), outputs)
    assert [result["map"], result["map50"], result["map75"]] == pytest.approx([2 / 3] * 3)
    assert (result["precision@0.5"], result["recall@0.5"]) == (2 / 3, 1.0)


def test_detection_0_1000_uses_the_annotated_sizes(tmp_path, no_image_reads):
    # image 1 is 100x80: the cat [10, 10, 50, 40] is [100, 125, 500, 500] in 0-1000, the dog [60, 20, 90, 60] is
    # [600, 250, 900, 750]; the same numbers read as absolute pixels overlap neither box
    answer = json.dumps([_det([100, 125, 500, 500], "cat"), _det([600, 250, 900, 750], "dog")])
    data = _coco(tmp_path / "instances.json", IMAGES[:1], ANNOTATIONS[:2])
    preds = _predictions(tmp_path / "p.jsonl", {1: answer})
    out = tmp_path / "r.json"
    main(["eval", "detection", "--data", str(data), "--predictions", str(preds), "--coords", "0-1000",
          "--output", str(out)])
    result = json.loads(out.read_text())
    assert (result["map"], result["f1@0.5"], result["coords"]) == (pytest.approx(1.0), 1.0, "0-1000")
    main(["eval", "detection", "--data", str(data), "--predictions", str(preds), "--output", str(out)])
    result = json.loads(out.read_text())
    assert (result["map"], result["f1@0.5"], result["coords"]) == (0.0, 0.0, "absolute")


def test_missing_outputs_are_empty_answers_not_unparsable(tmp_path):
    from mmrl.eval.detection_format import load_coco

    records = load_coco(_coco(tmp_path / "instances.json"))
    result = score("coco", records, [None] * 5)
    # 6 ground-truth boxes, no prediction: nothing is unparsable, all 5 images are missing
    assert {k: result[k] for k in ("n", "unparsable", "missing", "recall@0.5", "map")} == \
        {"n": 5, "unparsable": 0, "missing": 5, "recall@0.5": 0.0, "map": 0.0}
    assert score("coco", records, [""] * 5)["unparsable"] == 5  # an empty output that was given is unparsable


# ---------------------------------------------------------------- detection: bad input


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["images"][1].pop("width"), "instances.json: images[1]: missing field 'width'"),
    (lambda d: d.pop("categories"), "instances.json: missing top-level key 'categories'"),
    (lambda d: d["annotations"][2].update(image_id=77),
     "instances.json: annotations[2]: image_id 77 names no image in 'images'"),
])
def test_bad_coco_file_names_file_and_record(tmp_path, change, message, cli_error):
    data = {"images": json.loads(json.dumps(IMAGES)), "annotations": json.loads(json.dumps(ANNOTATIONS)),
            "categories": CATEGORIES}
    change(data)
    path = _write_json(tmp_path / "instances.json", data)
    preds = _predictions(tmp_path / "p.jsonl", OUTPUTS)
    err = cli_error(["eval", "detection", "--data", str(path), "--predictions", str(preds)])
    assert err.startswith(f"mmrl: error: {tmp_path}/{message}")


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "invalid JSON"),
    ('{"id": "1", "output": "[]"}', "field 'id' must be an integer"),
    ('{"id": 1}', "missing field 'output'"),
    ('{"id": 1, "output": "again"}', "duplicate id 1"),
])
def test_bad_prediction_line_names_file_and_line(tmp_path, line, message, cli_error):
    data = _coco(tmp_path / "instances.json")
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id": 1, "output": "[]"}\n\n' + line + "\n")
    err = cli_error(["eval", "detection", "--data", str(data), "--predictions", str(preds)])
    assert err.startswith(f"mmrl: error: {preds}:3: {message}")


def test_corrupt_image_is_named_when_it_is_read(tmp_path, monkeypatch, cli_error):
    from tasks.detection import CocoDetection, DetectionData
    from mmrl.types import LoadContext

    (tmp_path / "images").mkdir()
    for image in IMAGES:
        Image.new("RGB", (image["width"], image["height"])).save(tmp_path / "images" / image["file_name"])
    (tmp_path / "images" / "two.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    data = _coco(tmp_path / "instances.json")
    preds = _predictions(tmp_path / "p.jsonl", OUTPUTS)
    # scoring predictions never reads it
    main(["eval", "detection", "--data", str(data), "--predictions", str(preds), "--output", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 5
    # the task's loader checks every image
    with pytest.raises(DataError) as info:
        CocoDetection().load("eval", DetectionData(eval=str(data)), LoadContext(3136, 12544, str(tmp_path)))
    assert str(info.value).startswith(f"{data}: image id 2: cannot read image {tmp_path / 'images' / 'two.png'}: ")
    # so does --model, before generating anything
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    import mmrl.eval.generate as generate

    monkeypatch.setattr(generate, "benchmark_outputs", lambda *a, **k: pytest.fail("generated despite a bad image"))
    err = cli_error(["eval", "detection", "--data", str(data), "--model", str(tmp_path / "model")])
    assert err.startswith(f"mmrl: error: {data}: image id 2: cannot read image {tmp_path / 'images' / 'two.png'}: ")
    # and a wrong size is named too (the coordinate map uses the annotated one)
    Image.new("RGB", (60, 50)).save(tmp_path / "images" / "two.png")
    err = cli_error(["eval", "detection", "--data", str(data), "--model", str(tmp_path / "model")])
    assert err == f"mmrl: error: {data}: image id 2: {tmp_path / 'images' / 'two.png'} is 60x50, annotated 120x100"


# ---------------------------------------------------------------- detection: --model


@pytest.mark.parametrize(("model_type", "f1"), [
    # image 1 (100x80) is seen as 112x84 by Qwen2.5-VL (resized coords): [11, 10, 56, 42] maps to
    # [9.8, 9.5, 50, 40], on the cat [10, 10, 50, 40]
    ("qwen2_5_vl", 1.0),
    # Qwen3-VL answers in 0-1000: the same numbers are [1.1, 0.8, 5.6, 3.4], on nothing
    ("qwen3_vl", 0.0),
])
def test_model_generates_with_the_task_and_scores_in_the_family_coords(tmp_path, monkeypatch, model_type, f1):
    import mmrl.eval.generate as generate

    calls = []

    def benchmark_outputs(benchmark, records, model, data=None, **kwargs):
        calls.append((benchmark, len(records[0]), records[1], model.path, model.min_pixels, kwargs))
        return [json.dumps([_det([11, 10, 56, 42], "cat")])]

    monkeypatch.setattr(generate, "benchmark_outputs", benchmark_outputs)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (100, 80)).save(tmp_path / "images" / "one.png")
    data = _coco(tmp_path / "instances.json", IMAGES[:1], ANNOTATIONS[:1])
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": model_type}))
    out = tmp_path / "r.json"
    main(["eval", "detection", "--data", str(data), "--model", str(tmp_path / "model"), "--min-pixels", "3136",
          "--batch-size", "2", "--max-new-tokens", "64", "--output", str(out)])
    assert calls == [("coco", 1, ["cat", "dog", "bird"], str(tmp_path / "model"), 3136,
                      {"batch_size": 2, "max_new_tokens": 64})]
    result = json.loads(out.read_text())
    assert (result["f1@0.5"], result["n"], result["missing"], result["unmatched"]) == (f1, 1, 0, 0)
    assert result["coords"] == {"qwen2_5_vl": "resized", "qwen3_vl": "0-1000"}[model_type]


@pytest.mark.slow
def test_model_end_to_end_on_the_tiny_checkpoint(tiny_cache, tmp_path, monkeypatch):
    import mmrl.eval.generate as generate
    from rewards.detection import parse_detections

    texts = []
    real = generate.benchmark_outputs

    def recording(*args, **kwargs):
        texts.extend(real(*args, **kwargs))
        return texts

    monkeypatch.setattr(generate, "benchmark_outputs", recording)
    (tmp_path / "images").mkdir()
    images = IMAGES[:3]
    for image in images:
        Image.new("RGB", (image["width"], image["height"]), (90, 120, 200)).save(tmp_path / "images" /
                                                                                image["file_name"])
    data = _coco(tmp_path / "instances.json", images, ANNOTATIONS[:5])
    out = tmp_path / "r.json"
    main(["eval", "detection", "--data", str(data), "--model", str(tiny_cache / "models" / "tiny-qwen2_5_vl-tiny"),
          "--min-pixels", "3136", "--max-pixels", "12544", "--max-new-tokens", "8", "--output", str(out)])
    result = json.loads(out.read_text())
    assert list(result) == [*DETECTION_KEYS, "coords"] and result["coords"] == "resized"
    assert (result["n"], result["missing"], result["unmatched"], len(texts)) == (3, 0, 0, 3)
    assert result["unparsable"] == sum(not parse_detections(t)[1] for t in texts)
    assert result["unparsable"] + sum(parse_detections(t)[1] for t in texts) == result["n"]


# ---------------------------------------------------------------- REC

REC_ROWS = [
    {"image": "a.png", "expression": "red car", "bbox": [20, 10, 100, 60]},  # id 0
    None,  # line 2 blank: id 1 names no record
    {"image": "a.png", "expression": "blue car", "bbox": [100, 20, 180, 80]},  # id 2
    {"image": "b.png", "expression": "small square", "bbox": [0, 0, 20, 20]},  # id 3
    {"image": "b.png", "expression": "the other one", "bbox": [10, 10, 30, 30]},  # id 4
    {"image": "b.png", "expression": "nothing predicted", "bbox": [30, 30, 50, 50]},  # id 5
]
SIZES = {"a.png": (200, 100), "b.png": (50, 50)}
REC_ABSOLUTE = {
    0: '[{"bbox_2d": [20, 10, 100, 60], "label": "red car"}]',  # IoU 1
    2: "<answer>[110, 20, 180, 80]</answer>",  # bare box: inter 70x60 = 4200, union 80x60 = 4800 -> 0.875
    3: "[0, 0, 20, 40]",  # inter 400, union 800 -> IoU 0.5: not correct (IoU > 0.5 is)
    4: "no box here",  # unparsable: 0
    # 5 missing: 0
    1: "[0, 0, 1, 1]",  # the blank line: unmatched
    42: "[0, 0, 1, 1]",  # unmatched
}
# a.png is 200x100 (0-1000 units are 0.2 x 0.1 px), b.png 50x50 (0.05 px): the same boxes in 0-1000
REC_0_1000 = {
    0: '[{"bbox_2d": [100, 100, 500, 600], "label": "red car"}]',
    2: "<answer>[550, 200, 900, 800]</answer>",
    3: "[0, 0, 400, 800]",
    4: "no box here",
    1: "[0, 0, 1, 1]",
    42: "[0, 0, 1, 1]",
}
# acc@0.5 = 2/5 (ids 0, 2); mIoU = (1 + 0.875 + 0.5 + 0 + 0) / 5 = 0.475
REC_EXPECTED = {"acc@0.5": 2 / 5, "miou": 0.475, "n": 5, "unparsable": 1, "missing": 1, "unmatched": 2}


def _rec_data(folder: Path, images: bool = True) -> Path:
    if images:
        for name, size in SIZES.items():
            Image.new("RGB", size, "white").save(folder / name)
    path = folder / "rec.jsonl"
    path.write_text("".join("\n" if row is None else json.dumps(row) + "\n" for row in REC_ROWS))
    return path


def test_rec_absolute_reads_no_image(tmp_path, capsys, no_image_reads):
    data = _rec_data(tmp_path, images=False)
    preds = _predictions(tmp_path / "p.jsonl", REC_ABSOLUTE)
    out = tmp_path / "rec.json"
    main(["eval", "rec", "--data", str(data), "--predictions", str(preds), "--output", str(out)])
    result = json.loads(out.read_text())
    assert {k: result[k] for k in REC_EXPECTED} == pytest.approx(REC_EXPECTED)
    assert list(result) == [*REC_KEYS, "coords"]
    table = dict(line.split() for line in capsys.readouterr().out.splitlines()[1:])
    assert table == {"acc@0.5": "0.4000", "miou": "0.4750", "n": "5", "unparsable": "1", "missing": "1",
                     "unmatched": "2"}


def test_rec_0_1000_reads_the_image_sizes(tmp_path):
    data = _rec_data(tmp_path)
    preds = _predictions(tmp_path / "p.jsonl", REC_0_1000)
    out = tmp_path / "rec.json"
    main(["eval", "rec", "--data", str(data), "--predictions", str(preds), "--coords", "0-1000",
          "--output", str(out)])
    result = json.loads(out.read_text())
    assert {k: result[k] for k in REC_EXPECTED} == pytest.approx(REC_EXPECTED)
    assert result["coords"] == "0-1000"
    # read as absolute pixels, the 0-1000 answers miss: ids 0 and 2 lie outside their boxes, id 3's
    # [0, 0, 400, 800] holds its 20x20 box: IoU 400/320000
    main(["eval", "rec", "--data", str(data), "--predictions", str(preds), "--output", str(out)])
    assert json.loads(out.read_text())["acc@0.5"] == 0.0


def test_rec_bad_input_names_file_and_line(tmp_path, cli_error):
    data = _rec_data(tmp_path)
    preds = _predictions(tmp_path / "p.jsonl", REC_0_1000)
    argv = ["eval", "rec", "--data", str(data), "--predictions", str(preds), "--coords", "0-1000"]
    # a corrupt image, read for its size: named with the first line that uses it (line 4, id 3)
    (tmp_path / "b.png").write_bytes(b"garbage bytes, not a PNG")
    err = cli_error(argv)
    assert err.startswith(f"mmrl: error: {data}:4: cannot read image {tmp_path / 'b.png'}: ")
    # a missing one
    (tmp_path / "b.png").unlink()
    assert cli_error(argv) == f"mmrl: error: {data}:4: image not found: {tmp_path / 'b.png'}"
    # a malformed line of the REC file
    data.write_text(data.read_text().replace('"blue car"', "'blue car'"))
    assert cli_error(argv).startswith(f"mmrl: error: {data}:3: invalid JSON")
    # a malformed line of the predictions file
    _rec_data(tmp_path)
    preds.write_text('{"id": 0, "output": "[1, 1, 2, 2]"}\n{"id": 2, "output": [1, 1, 2, 2]}\n')
    assert cli_error(argv) == f"mmrl: error: {preds}:2: field 'output' must be a string"


def test_read_predictions_keys_are_integer_ids(tmp_path):
    preds = _predictions(tmp_path / "p.jsonl", {0: "a", 7: "b"})
    assert read_predictions(str(preds)) == {0: "a", 7: "b"}
    preds.write_text('{"id": true, "output": "a"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:1: field 'id' must be an integer"):
        read_predictions(str(preds))


def test_arguments_are_validated(capsys):
    for argv in (["eval", "detection", "--data", "d"],  # neither --predictions nor --model
                 ["eval", "rec", "--data", "d", "--predictions", "p", "--model", "m"],
                 ["eval", "rec", "--data", "d", "--predictions", "p", "--coords", "pixels"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    capsys.readouterr()
