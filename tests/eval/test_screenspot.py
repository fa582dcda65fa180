"""ScreenSpot v1/v2/Pro loading and scoring on the committed samples (data/samples/screenspot_*), with
accuracies counted by hand, each coordinate convention, and one-line errors for bad input."""
import argparse
import json
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from mmrl.errors import DataError
from mmrl.config import ModelConfig
from mmrl.eval.screenspot import (
    add_arguments,
    evaluate_predictions_file,
    format_table,
    read_predictions,
    run,
    score_predictions,
)
from mmrl.eval.screenspot_format import load_screenspot, load_screenspot_file

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
V1, V2, PRO = SAMPLES / "screenspot_v1", SAMPLES / "screenspot_v2", SAMPLES / "screenspot_pro"
QWEN_BUDGET = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280}


def _acc(cell):
    return cell["correct"], cell["n"]


def _write_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    for name, size in sizes.items():
        Image.new("RGB", size, "white").save(folder / name)
    return folder


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _status_by_record(records, result) -> dict[tuple[str, str], str]:
    """``{(annotation file stem, id): status}``; ``details`` follow the records' order."""
    assert [d["id"] for d in result["details"]] == [r.id for r in records]
    return {(Path(r.source_file).stem, r.id): d["status"] for r, d in zip(records, result["details"])}


# ---------------------------------------------------------------- loading


def test_load_v1_converts_xywh_and_names_ids():
    records = load_screenspot(V1)
    # files in sorted order: desktop (3), mobile (2), web (2); v1/v2 ids are 0-based indices within each file,
    # so they repeat across the files of a folder (duplicates are checked per file only)
    assert [(Path(r.source_file).name, r.id) for r in records] == [
        ("screenspot_desktop.json", "0"), ("screenspot_desktop.json", "1"), ("screenspot_desktop.json", "2"),
        ("screenspot_mobile.json", "0"), ("screenspot_mobile.json", "1"),
        ("screenspot_web.json", "0"), ("screenspot_web.json", "1"),
    ]
    mobile0 = records[3]
    assert mobile0.gt_box == [10, 20, 60, 50]  # [10, 20, 10 + 50, 20 + 30]
    assert (mobile0.split, mobile0.ui_type, mobile0.application) == ("mobile", "text", "ios")
    assert mobile0.img_size is None
    assert mobile0.image == str(V1 / "mobile_0001.png")  # no images/ folder: the json folder
    assert mobile0.source_file == str(V1 / "screenspot_mobile.json")


def test_load_v2_and_pro_fields():
    v2 = load_screenspot(V2 / "screenspot_desktop_v2.json")
    assert [(r.id, r.split, r.gt_box) for r in v2] == [("0", "desktop", [290, 140, 300, 150])]
    pro = load_screenspot_file(PRO / "vscode_macos.json")
    first = pro[0]
    assert first.id == "vscode_macos_0"  # Pro records carry their own id field
    assert first.gt_box == [1280, 800, 1536, 960]  # already xyxy
    assert (first.split, first.group, first.application, first.platform) == ("pro", "Dev", "vscode", "macos")
    assert first.img_size == (2560, 1600)
    assert first.image == str(PRO / "vscode_mac/screenshot_2024-11-21_10-00-00.png")


def test_image_folder_resolution(tmp_path):
    (tmp_path / "screenspot_imgs").mkdir()
    data = [{"img_filename": "a.png", "bbox": [0, 0, 1, 1], "instruction": "i", "data_type": "icon",
             "data_source": "ios"}]
    path = tmp_path / "screenspot_mobile.json"
    path.write_text(json.dumps(data))
    assert load_screenspot(path)[0].image == str(tmp_path / "screenspot_imgs" / "a.png")
    (tmp_path / "images").mkdir()  # images/ is tried first
    assert load_screenspot(path)[0].image == str(tmp_path / "images" / "a.png")
    assert load_screenspot(path, image_dir="/elsewhere")[0].image == str(Path("/elsewhere/a.png"))


# ---------------------------------------------------------------- scoring, each convention


def test_v1_absolute_table_counted_by_hand(tmp_path):
    out = tmp_path / "res" / "v1.json"
    result = evaluate_predictions_file(V1, V1 / "predictions_absolute.jsonl", output=out)
    # mobile_0 (35,35) in [10,20,60,50] ok; mobile_1 box centre (120,320) in [100,300,140,340] ok;
    # desktop_0 (100,20) on the edge of [0,0,100,20] ok; desktop_1 (379,190) left of x1=380 wrong;
    # desktop_2 "I cannot find it" wrong_format; web_0 missing; web_1 {"x":310,"y":25} in [300,10,380,30] ok
    assert (result["correct"], result["n"]) == (4, 7)
    assert result["accuracy"] == pytest.approx(4 / 7)
    assert (result["wrong_format"], result["missing"]) == (1, 1)
    table = result["screenspot"]
    assert _acc(table["mobile"]["text"]) == (1, 1) and _acc(table["mobile"]["icon"]) == (1, 1)
    assert _acc(table["desktop"]["text"]) == (1, 2) and _acc(table["desktop"]["icon"]) == (0, 1)
    assert _acc(table["web"]["text"]) == (1, 1) and _acc(table["web"]["icon"]) == (0, 1)
    assert table["desktop"]["all"]["accuracy"] == pytest.approx(1 / 3)
    assert _acc(table["all"]["text"]) == (3, 4) and _acc(table["all"]["icon"]) == (1, 3)
    # cells 1, 1, 0.5, 0, 1, 0 -> 3.5 / 6
    assert table["cell_mean"] == pytest.approx(3.5 / 6)
    assert "screenspot_pro" not in result
    statuses = _status_by_record(load_screenspot(V1), result)
    assert statuses == {
        ("screenspot_desktop", "0"): "correct", ("screenspot_desktop", "1"): "wrong",
        ("screenspot_desktop", "2"): "wrong_format", ("screenspot_mobile", "0"): "correct",
        ("screenspot_mobile", "1"): "correct", ("screenspot_web", "0"): "missing", ("screenspot_web", "1"): "correct",
    }
    assert json.loads(out.read_text()) == result
    assert [p.name for p in out.parent.iterdir()] == ["v1.json"]  # the temporary file is gone
    text = format_table(result)
    assert "desktop  50.0 (1/2)" in text and "57.1 (4/7)" in text and "58.3" in text


V2_SIZES = {"mobile_v2_0001.png": (200, 100), "pc_v2_0001.png": (300, 150), "web_v2_0001.png": (120, 120)}


def test_v2_resized_reads_image_headers(tmp_path):
    images = _write_images(tmp_path, V2_SIZES)
    preds = V2 / "predictions_resized.jsonl"
    result = evaluate_predictions_file(V2, preds, coords="resized", image_dir=images, **QWEN_BUDGET)
    # smart_resize: 200x100 -> 196x112 (round(200/28)=7, round(100/28)=4); 300x150 -> 308x140; 120x120 -> 112x112
    # mobile_0 (20,110) -> (20*200/196, 110*100/112) = (20.4, 98.2) in [0,80,50,100] ok
    # mobile_1 (190,12) -> (193.9, 10.7) below y2=10 wrong
    # desktop_0 [305,138] -> (305*300/308, 138*150/140) = (297.1, 147.9) in [290,140,300,150] ok
    # web_0 (60,60) -> (64.3, 64.3) outside [0,0,60,60] wrong; web_1 "(nan, 5)" wrong_format
    assert (result["correct"], result["n"], result["wrong_format"], result["missing"]) == (2, 5, 1, 0)
    assert result["accuracy"] == pytest.approx(0.4)
    table = result["screenspot"]
    assert _acc(table["mobile"]["text"]) == (1, 1) and _acc(table["mobile"]["icon"]) == (0, 1)
    assert _acc(table["desktop"]["icon"]) == (1, 1)
    assert table["desktop"]["text"] == {"correct": 0, "n": 0, "accuracy": None}
    assert table["cell_mean"] == pytest.approx(2 / 5)  # cells 1, 0, 1, 0, 0 (desktop text is empty)
    records = load_screenspot(V2, image_dir=images)
    assert _status_by_record(records, result)[("screenspot_mobile_v2", "1")] == "wrong"
    point = next(d["point"] for r, d in zip(records, result["details"]) if r.split == "desktop" and r.id == "0")
    assert point == pytest.approx([305 * 300 / 308, 138 * 150 / 140])
    # the same outputs read as absolute pixels: only web_0 (60,60), on the corner, is correct
    absolute = evaluate_predictions_file(V2, preds, coords="absolute", image_dir=images)
    assert (absolute["correct"], absolute["n"]) == (1, 5)


def test_resized_honours_the_pixel_budget(tmp_path):
    records = load_screenspot(V2 / "screenspot_mobile_v2.json", image_dir=_write_images(tmp_path, V2_SIZES))
    outputs = {"0": "(14, 50)"}  # one file: a bare 0-based index is enough
    # max_pixels = 7840: beta = sqrt(200*100/7840) = 1.597; h = floor(100/1.597/28)*28 = 56, w = floor(4.47)*28 = 112
    # (14, 50) -> (14*200/112, 50*100/56) = (25, 89.3) in [0,80,50,100]
    small = score_predictions(records, outputs, "resized", min_pixels=3136, max_pixels=7840)
    assert small["details"][0]["status"] == "correct"
    # default-size budget: 196x112 -> (14.3, 44.6), above y1 = 80
    assert score_predictions(records, outputs, "resized", **QWEN_BUDGET)["details"][0]["status"] == "wrong"


def test_v1_0_1000_reads_image_size(tmp_path):
    images = _write_images(tmp_path, {"mobile_0001.png": (200, 400)})
    records = load_screenspot(V1 / "screenspot_mobile.json", image_dir=images)
    # (175, 87.5) / 1000 of 200x400 -> (35, 35) in [10,20,60,50]
    result = score_predictions(records, {"0": "(175, 87.5)"}, coords="0-1000")
    assert [d["status"] for d in result["details"]] == ["correct", "missing"]
    assert result["details"][0]["point"] == pytest.approx([35, 35])
    # mobile_1's image was never written: its size cannot be read
    message = r"screenspot_mobile\.json: record 1: image not found: .*mobile_0002\.png"
    with pytest.raises(DataError, match=message):
        score_predictions(records, {"1": "(500, 800)"}, coords="0-1000")


def test_pro_0_1000_breakdowns():
    result = evaluate_predictions_file(PRO, PRO / "predictions_0-1000.jsonl", coords="0-1000")
    # vscode 2560x1600: (550,550) -> (1408, 880) in [1280,800,1536,960] ok; (10,10) -> (25.6, 16) in
    # [0,0,64,40] ok; (500,500) -> (1280, 800) not in [2500,1500,2560,1600] wrong
    # photoshop 1920x1080: (510,550) -> (979.2, 594) in [960,540,1152,648] ok; photoshop_1 missing;
    # photoshop_2 "click here" wrong_format
    assert (result["correct"], result["n"], result["wrong_format"], result["missing"]) == (3, 6, 1, 1)
    assert result["accuracy"] == 0.5
    pro = result["screenspot_pro"]
    assert list(pro["by_group"]) == ["Creative", "Dev"]
    assert _acc(pro["by_group"]["Dev"]["all"]) == (2, 3) and _acc(pro["by_group"]["Dev"]["icon"]) == (1, 2)
    assert _acc(pro["by_group"]["Creative"]["text"]) == (1, 1) and _acc(pro["by_group"]["Creative"]["icon"]) == (0, 2)
    assert _acc(pro["by_application"]["vscode"]) == (2, 3) and _acc(pro["by_application"]["photoshop"]) == (1, 3)
    assert _acc(pro["by_ui_type"]["text"]) == (2, 2) and pro["by_ui_type"]["icon"]["accuracy"] == 0.25
    assert pro["overall"]["accuracy"] == 0.5
    assert "screenspot" not in result
    text = format_table(result)
    assert "ScreenSpot-Pro" in text and "photoshop    33.3 (1/3)" in text
    # read as absolute pixels only vscode_1 (10,10) is inside its box
    assert evaluate_predictions_file(PRO, PRO / "predictions_0-1000.jsonl")["correct"] == 1


def test_pro_resized_uses_img_size_without_images():
    records = load_screenspot(PRO / "vscode_macos.json")  # the screenshots do not exist here
    outputs = {"vscode_macos_1": "(64, 40)"}
    # 2560x1600 under a 12845056 budget: round(2560/28)*28 = 2548, round(1600/28)*28 = 1596
    # (64, 40) -> (64*2560/2548, 40*1600/1596) = (64.3, 40.1): just outside [0,0,64,40]
    resized = score_predictions(records, outputs, "resized", max_pixels=28 * 28 * 16384)
    assert resized["details"][1]["status"] == "wrong"
    assert score_predictions(records, outputs, "absolute")["details"][1]["status"] == "correct"  # on the corner


def test_unknown_coords_lists_valid_ones():
    with pytest.raises(ValueError, match="absolute, resized, 0-1000"):
        score_predictions([], {}, coords="normalized")


# ---------------------------------------------------------------- bad input


def _v1_record(**changes):
    record = {"img_filename": "a.png", "bbox": [0, 0, 5, 5], "instruction": "x", "data_type": "text",
              "data_source": "ios"}
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


@pytest.mark.parametrize(
    "records, message",
    [
        ([_v1_record(), _v1_record(bbox=None)], "record 1: missing field 'bbox'"),
        ([_v1_record(), _v1_record(), _v1_record(bbox=[0, 0, 5])], "record 2: field 'bbox' must be a list of 4"),
        ([_v1_record(bbox=[0, 0, -1, 5])], "record 0: field 'bbox' must be [x, y, w, h] with w, h >= 0"),
        ([_v1_record(bbox=[0, True, 1, 1])], "record 0: field 'bbox'"),
        ([_v1_record(data_type="button")], "record 0: field 'data_type' must be 'text' or 'icon', got 'button'"),
        ([_v1_record(instruction=3)], "record 0: field 'instruction' must be a string"),
        ([_v1_record(), "oops"], "record 1: expected a JSON object, got str"),
        ([{"bbox": [0, 0, 1, 1]}], "record 0: missing field 'data_type' (ScreenSpot v1/v2) or 'ui_type'"),
        ({"records": []}, "expected a JSON array of records, got dict"),
    ],
)
def test_bad_records_name_file_record_and_key(tmp_path, records, message):
    path = tmp_path / "screenspot_web.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError) as info:
        load_screenspot(path)
    assert str(info.value).startswith(f"{path}: {message}")
    assert "\n" not in str(info.value)


def test_bad_pro_record(tmp_path):
    raw = json.loads((PRO / "vscode_macos.json").read_text())
    raw[2]["img_size"] = [2560]
    path = tmp_path / "vscode_macos.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"vscode_macos\.json: record 2: field 'img_size' must be \[width, height\]"):
        load_screenspot(path)


def test_other_file_names_are_their_own_split(tmp_path):
    # e.g. the synthetic generator's screenspot_train.json: split "train", outside the v1/v2 table
    path = tmp_path / "screenspot_train.json"
    path.write_text(json.dumps([_v1_record()]))
    record = load_screenspot(path)[0]
    assert (record.id, record.split) == ("0", "train")
    result = score_predictions([record], {"0": "(1, 1)"})
    assert (result["correct"], result["n"]) == (1, 1) and "screenspot" not in result


def test_missing_corrupt_and_empty(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load_screenspot(tmp_path / "nope.json")
    corrupt = tmp_path / "screenspot_mobile.json"
    corrupt.write_text('[{"img_filename": "a.png",')
    with pytest.raises(DataError, match=r"screenspot_mobile\.json: invalid JSON at line 1"):
        load_screenspot(corrupt)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .json annotation files"):
        load_screenspot(empty)


def test_duplicate_id_within_one_pro_file(tmp_path):
    raw = json.loads((PRO / "vscode_macos.json").read_text())
    raw[2]["id"] = "vscode_macos_0"
    path = tmp_path / "vscode_macos.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError) as info:
        load_screenspot(path)
    assert str(info.value) == f"{path}: record 2: duplicate id 'vscode_macos_0'"
    # the same in a folder: still named by its file and record
    with pytest.raises(DataError, match=r"vscode_macos\.json: record 2: duplicate id 'vscode_macos_0'"):
        load_screenspot(tmp_path)


def test_ids_may_repeat_across_files(tmp_path):
    # duplicates are checked per file only: the same Pro ids in two files load, and then need "file" to score
    raw = (PRO / "vscode_macos.json").read_text()
    (tmp_path / "a.json").write_text(raw)
    (tmp_path / "b.json").write_text(raw)
    records = load_screenspot(tmp_path)
    assert [(Path(r.source_file).name, r.id) for r in records][2:4] == [("a.json", "vscode_macos_2"),
                                                                        ("b.json", "vscode_macos_0")]
    with pytest.raises(DataError, match='"file"'):
        score_predictions(records, {"vscode_macos_1": "(10, 10)"})
    result = score_predictions(records, {("b", "vscode_macos_1"): "(10, 10)"})
    assert [d["status"] for d in result["details"]] == ["missing"] * 4 + ["correct", "missing"]


# ---------------------------------------------------------------- prediction ids and files


def test_single_v1_file_with_bare_integer_ids(tmp_path):
    preds = _write_jsonl(tmp_path / "preds.jsonl", [
        {"id": 0, "output": "(50, 10)"},  # inside [0,0,100,20] ok
        {"id": 1, "output": "(390, 190)"},  # inside [380,180,400,200] ok
        {"id": 2, "output": "(199, 105)"},  # left of x1=200 of [200,100,250,110] wrong
    ])
    result = evaluate_predictions_file(V1 / "screenspot_desktop.json", preds)
    assert (result["correct"], result["n"], result["wrong_format"], result["missing"]) == (2, 3, 0, 0)
    assert [(d["id"], d["status"]) for d in result["details"]] == [("0", "correct"), ("1", "correct"), ("2", "wrong")]
    table = result["screenspot"]
    assert _acc(table["desktop"]["text"]) == (1, 2) and _acc(table["desktop"]["icon"]) == (1, 1)
    assert _acc(table["mobile"]["all"]) == (0, 0) and table["cell_mean"] == pytest.approx(0.75)  # cells 0.5, 1


def test_v1_folder_with_bare_ids_asks_for_file(tmp_path):
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"id": 0, "output": "(35, 35)"}])
    with pytest.raises(DataError) as info:
        evaluate_predictions_file(V1, preds)
    message = str(info.value)
    assert '"file"' in message and "'0'" in message and "several files" in message and "\n" not in message
    # a bare id held by one file only is not ambiguous: only desktop has a record 2
    result = score_predictions(load_screenspot(V1), {"2": "(210, 105)"})
    assert (result["correct"], result["n"], result["missing"]) == (1, 7, 6)


@pytest.mark.parametrize("spell", [lambda name: name, lambda name: Path(name).stem], ids=["name", "stem"])
def test_file_given_as_name_or_stem(tmp_path, spell):
    rows = [json.loads(line) for line in (V1 / "predictions_absolute.jsonl").read_text().splitlines() if line]
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{**row, "file": spell(row["file"])} for row in rows])
    result = evaluate_predictions_file(V1, preds)
    assert (result["correct"], result["n"], result["wrong_format"], result["missing"]) == (4, 7, 1, 1)
    assert result["screenspot"]["cell_mean"] == pytest.approx(3.5 / 6)


def test_name_and_stem_mixed_in_one_file(tmp_path):
    preds = _write_jsonl(tmp_path / "preds.jsonl", [
        {"file": "screenspot_mobile", "id": 0, "output": "(35, 35)"},  # mobile_0 [10,20,60,50] ok
        {"file": "screenspot_web.json", "id": 0, "output": "(65, 65)"},  # web_0 [50,50,80,80] ok
        {"file": "screenspot_desktop.json", "id": "1", "output": "(379, 190)"},  # desktop_1 wrong; string id ok
    ])
    records = load_screenspot(V1)
    result = evaluate_predictions_file(V1, preds)
    assert (result["correct"], result["n"], result["missing"]) == (2, 7, 4)
    statuses = _status_by_record(records, result)
    assert statuses[("screenspot_mobile", "0")] == "correct" and statuses[("screenspot_web", "0")] == "correct"
    assert statuses[("screenspot_desktop", "1")] == "wrong" and statuses[("screenspot_mobile", "1")] == "missing"


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"id": "a", "output": "(1, 2)"}', "{not json"], "2: invalid JSON"),
        (['{"id": "a"}'], "1: missing field 'output'"),
        (['{"id": "a", "output": null}'], "1: field 'output' must be a string"),
        (['["a", "(1, 2)"]'], "1: expected a JSON object, got list"),
        (['{"id": "a", "output": "x"}', "", '{"id": "a", "output": "y"}'], "3: duplicate id 'a'"),
        (['{"id": true, "output": "x"}'], "1: field 'id' must be a string or an integer"),
        (['{"id": 0, "output": "x", "file": 3}'], "1: field 'file' must be a string"),
        (['{"file": "a.json", "id": 0, "output": "x"}', '{"file": "a.json", "id": "0", "output": "y"}'],
         "2: duplicate id ('a.json', '0')"),
    ],
)
def test_bad_prediction_lines(tmp_path, lines, message):
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        read_predictions(path)
    assert str(info.value).startswith(f"{path}:{message}")


def test_read_predictions_ok_and_missing_file(tmp_path):
    sample = read_predictions(V1 / "predictions_absolute.jsonl")
    assert sample[("screenspot_web.json", "1")] == '{"x": 310, "y": 25}'  # rows with "file": (file, id) keys
    assert len(sample) == 6 and all(isinstance(key, tuple) for key in sample)
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 3, "output": "(1, 2)"}\n{"file": "screenspot_web", "id": 3, "output": "(3, 4)"}\n')
    # integer ids become strings; rows without "file" are keyed by the bare id
    assert read_predictions(path) == {"3": "(1, 2)", ("screenspot_web", "3"): "(3, 4)"}
    with pytest.raises(DataError, match="predictions file not found"):
        read_predictions(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- command line


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_run_with_predictions(tmp_path, capsys):
    out = tmp_path / "result.json"
    args = _parse(["--data", str(PRO), "--predictions", str(PRO / "predictions_0-1000.jsonl"),
                   "--coords", "0-1000", "--output", str(out)])
    assert run(args) == 0
    assert json.loads(out.read_text())["accuracy"] == 0.5
    assert "overall (0-1000 coords): 50.0 (3/6)  wrong_format: 1  missing: 1" in capsys.readouterr().out


def test_arguments_are_validated():
    with pytest.raises(SystemExit):
        _parse(["--data", "d", "--predictions", "p", "--coords", "pixels"])
    with pytest.raises(SystemExit):
        _parse(["--data", "d"])  # neither --predictions nor --model
    with pytest.raises(SystemExit):
        _parse(["--data", "d", "--predictions", "p", "--model", "m"])


@pytest.mark.parametrize(("model_type", "expected"), [
    # vscode 2560x1600 is seen as 1260x784 under 1e6 pixels, so (10, 10) -> (20.3, 20.4), inside only
    # vscode_macos_1's box [0, 0, 64, 40]; photoshop (14.6, 14.8) hits none
    ("qwen2_5_vl", "overall (resized coords): 16.7 (1/6)"),
    # (10, 10) in 0-1000 of 2560x1600 is (25.6, 16), inside vscode_macos_1's box too
    ("qwen3_vl", "overall (0-1000 coords): 16.7 (1/6)"),
])
def test_run_with_model_generates_with_the_benchmarks_task(monkeypatch, capsys, tmp_path, model_type, expected):
    """The generation is the task's (mocked here: no model runs); the default coordinates are the family's."""
    calls = []
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))

    def benchmark_outputs(benchmark, records, model, data=None, **_):
        calls.append((benchmark, model.path, len(records), model.min_pixels, model.max_pixels))
        return ["(10, 10)"] * len(records)

    fake = types.ModuleType("mmrl.eval.generate")
    fake.benchmark_outputs = benchmark_outputs
    monkeypatch.setitem(sys.modules, "mmrl.eval.generate", fake)
    assert run(_parse(["--data", str(PRO), "--model", str(tmp_path), "--max-pixels", "1000000"])) == 0
    assert calls == [("screenspot", str(tmp_path), 6, ModelConfig().min_pixels, 1000000)]
    assert expected in capsys.readouterr().out


def test_predictions_for_unknown_records_are_counted_as_unmatched(tmp_path):
    preds = _write_jsonl(tmp_path / "preds.jsonl", [
        {"id": 0, "output": "(50, 10)"},  # record 0 of the desktop file: correct
        {"id": 7, "output": "(1, 1)"},  # the file has records 0..2: no record 7
        {"file": "screenspot_phone.json", "id": 0, "output": "(1, 1)"},  # no such annotation file
    ])
    result = evaluate_predictions_file(V1 / "screenspot_desktop.json", preds)
    assert (result["correct"], result["missing"], result["unmatched"]) == (1, 2, 2)
    assert "unmatched predictions: 2" in format_table(result)


def test_absolute_predictions_need_no_image_files(tmp_path, capsys, monkeypatch):
    """Scoring ``--coords absolute`` reads no image (none exists here); ``0-1000`` needs the size and says so."""
    from mmrl.cli import main

    records = [  # v1: bbox [x, y, w, h]
        {"img_filename": "m1.png", "bbox": [10, 20, 50, 30], "instruction": "open", "data_type": "text",
         "data_source": "ios"},
        {"img_filename": "m2.png", "bbox": [100, 300, 40, 40], "instruction": "tap", "data_type": "icon",
         "data_source": "android"},
    ]
    data = tmp_path / "screenspot_mobile.json"
    data.write_text(json.dumps(records))
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"id": 0, "output": "(30, 35)"},  # inside [10, 20, 60, 50]
                                                 {"id": 1, "output": "(10, 10)"}])  # outside [100, 300, 140, 340]
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("an image was opened"))
    out = tmp_path / "r.json"
    main(["eval", "screenspot", "--data", str(data), "--predictions", str(preds), "--coords", "absolute",
          "--output", str(out)])
    result = json.loads(out.read_text())
    assert (result["correct"], result["n"], result["missing"]) == (1, 2, 0)
    monkeypatch.undo()
    with pytest.raises(SystemExit) as exc:
        main(["eval", "screenspot", "--data", str(data), "--predictions", str(preds), "--coords", "0-1000"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mmrl: error: {data}: record 0: image not found: ") and err.endswith("m1.png")
