"""Hugging Face ``datasets`` sources (``mmrl.hf_data``): small parquet and ``save_to_disk`` datasets written in each
preset's schema (images embedded as ``datasets.Image``) from the records of the synthetic files, read back into the
same samples as the files give, trained on for 2 steps and evaluated with the same numbers; and the one-line errors
for a missing column, a wrong-typed cell, an undecodable image cell and an unreachable Hub id."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import datasets
import pytest
from datasets import ClassLabel, Dataset, Features, Image, List, Value

from mmrl.cli import main
from mmrl.config import TrainConfig, load_config
from mmrl.errors import DataError
from mmrl.hf_data import HFSource, Table, read_records
from mmrl.plugins import TASKS
from mmrl.trainer import train
from mmrl.types import LoadContext
from mmrl.vision import VideoBudget, load_image
from tasks.cad_code import SyntheticCad
from tasks.cad_code import synthetic_file as synthetic_file_cad
from tasks.caption_qa import SyntheticScenes, synthetic_file
from tasks.detection import SyntheticDetection
from tasks.detection import synthetic_files as detection_files
from tasks.gui_grounding import SyntheticConfig, synthetic_files as gui_files
from tasks.temporal_grounding import SyntheticVideoConfig, synthetic_annotations

CTX = LoadContext(3136, 12544, "", coords="resized", video=VideoBudget(fps=1.0, max_frames=4, min_pixels=3136,
                                                                      max_pixels=3136, total_pixels=12544))


def write(rows: dict, features: Features, folder: Path, kind: str) -> str:
    """The dataset of ``rows`` as a parquet file or a ``save_to_disk`` folder (split ``test``); its path."""
    ds = Dataset.from_dict(rows, features=features)
    if kind == "parquet":
        ds.to_parquet(folder / "data.parquet")
        return str(folder / "data.parquet")
    datasets.DatasetDict({"test": ds}).save_to_disk(str(folder / "saved"))
    return str(folder / "saved")


def image_bytes(path: str | Path) -> dict:
    return {"bytes": Path(path).read_bytes(), "path": None}


# -- each preset's schema, filled from a synthetic file -----------------------------------------------------------
def screenspot(cache: Path, folder: Path, kind: str) -> tuple[str, str]:
    """``rootsautomation/ScreenSpot``'s schema: file_name, bbox [x1, y1, x2, y2], instruction, data_type,
    data_source, image."""
    path = gui_files(SyntheticConfig(n_train=6, n_eval=6), "eval", str(cache))
    raws = json.loads(path.read_text())
    rows = {"file_name": [r["img_filename"] for r in raws],
            "bbox": [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in raws)],
            "instruction": [r["instruction"] for r in raws], "data_type": [r["data_type"] for r in raws],
            "data_source": [r["data_source"] for r in raws],
            "image": [image_bytes(path.parent / "images" / r["img_filename"]) for r in raws]}
    features = Features(file_name=Value("string"), bbox=List(Value("float64")), instruction=Value("string"),
                        data_type=Value("string"), data_source=Value("string"), image=Image())
    return str(path), write(rows, features, folder, kind)


def refcoco(cache: Path, folder: Path, kind: str) -> tuple[str, str]:
    """``lmms-lab/RefCOCO``'s schema: question_id, image, question, answer (expressions), segmentation,
    bbox [x, y, w, h], iscrowd, file_name."""
    rec = detection_files(SyntheticDetection(n_train=6, n_eval=6), "eval", str(cache)).parent / "rec_eval.jsonl"
    raws = [json.loads(line) for line in rec.read_text().splitlines() if line.strip()]
    rows = {"question_id": [str(i) for i in range(len(raws))],
            "image": [image_bytes(rec.parent / r["image"]) for r in raws],
            "question": ["Locate the object." for _ in raws], "answer": [[r["expression"], "other"] for r in raws],
            "segmentation": [[] for _ in raws],
            "bbox": [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in (r["bbox"] for r in raws)],
            "iscrowd": [0 for _ in raws], "file_name": [r["image"] for r in raws]}
    features = Features(question_id=Value("string"), image=Image(), question=Value("string"),
                        answer=List(Value("string")), segmentation=List(Value("float32")),
                        bbox=List(Value("float32")), iscrowd=Value("int8"), file_name=Value("string"))
    return str(rec), write(rows, features, folder, kind)


def charades(cache: Path, folder: Path, kind: str) -> tuple[str, str]:
    """``lmms-lab/charades_sta``'s schema: video (file name), caption, timestamp [start, end] (float16: the
    synthetic times are on a 0.5 s grid, exact in float16)."""
    path = synthetic_annotations(SyntheticVideoConfig(n_train=3, n_eval=3, time_step=0.5), "eval", str(cache))
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    heads = [line.split("##")[0].split() for line in lines]
    rows = {"video": [f"{h[0]}.mp4" for h in heads], "caption": [line.split("##", 1)[1] for line in lines],
            "timestamp": [[float(h[1]), float(h[2])] for h in heads]}
    features = Features(video=Value("string"), caption=Value("string"), timestamp=List(Value("float16")))
    return str(path), write(rows, features, folder, kind)


PRESETS = {"gui_grounding": ("rootsautomation/ScreenSpot", screenspot), "rec": ("lmms-lab/RefCOCO", refcoco),
           "temporal_grounding": ("lmms-lab/charades_sta", charades)}


def load(task: str, split_value, ctx: LoadContext, **data) -> list:
    cfg = TASKS.config(task, {"eval": split_value, **data}, "data")
    return TASKS.get(task)().load("eval", cfg, ctx)


def same_samples(from_hf: list, from_file: list, ignore: tuple[str, ...] = ()) -> None:
    """Equal prompts, answers, fields (but ``ignore``) and image pixels, in order."""
    assert len(from_hf) == len(from_file) > 0
    for a, b in zip(from_hf, from_file):
        assert (a.prompt, a.answer) == (b.prompt, b.answer)
        assert {k: v for k, v in a.fields.items() if k not in ignore} == \
               {k: v for k, v in b.fields.items() if k not in ignore}
        assert [load_image(p).tobytes() for p in a.images] == [load_image(p).tobytes() for p in b.images]


@pytest.mark.parametrize("kind", ["parquet", "saved"])
@pytest.mark.parametrize("task", sorted(PRESETS))
def test_preset_schemas_give_the_samples_of_the_original_files(task, kind, tmp_path):
    preset, make = PRESETS[task]
    original, dataset = make(tmp_path / "cache", tmp_path, kind)
    ctx = replace(CTX, cache_dir=str(tmp_path / "cache"))
    extra = {"video_dir": str(Path(original).parent / "videos")} if task == "temporal_grounding" else {}
    from_hf = load(task, {"dataset": dataset, "split": "test", "preset": preset}, ctx, **extra)
    from_file = load(task, original, ctx, **extra)
    ignore = ("annotation",) if task == "temporal_grounding" else ()
    same_samples(from_hf, from_file, ignore)
    if task != "temporal_grounding":  # embedded images were written once to the cache, not decoded into RAM
        assert all(Path(p).is_relative_to(tmp_path / "cache" / "data") for s in from_hf for p in s.images)


def test_caption_qa_detection_and_cad_read_their_own_column_mappings(tmp_path):
    ctx = replace(CTX, cache_dir=str(tmp_path / "cache"))
    jsonl = synthetic_file(SyntheticScenes(n_train=4, n_eval=4), "eval", str(tmp_path / "cache"))
    raws = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    rows = {"uid": [r["id"] for r in raws], "picture": [image_bytes(jsonl.parent / r["image"]) for r in raws],
            "questions": [r["qa"] for r in raws], "caption": [r["caption"] for r in raws]}
    path = write(rows, Features(uid=Value("string"), picture=Image(), caption=Value("string"),
                                questions=List({"question": Value("string"), "choices": List(Value("string")),
                                                "answer": Value("string")})), tmp_path, "parquet")
    source = {"dataset": path, "split": "test", "columns": {"id": "uid", "image": "picture", "qa": "questions"}}
    same_samples(load("caption_qa", source, ctx), load("caption_qa", str(jsonl), ctx))

    coco = detection_files(SyntheticDetection(n_train=4, n_eval=4), "eval", str(tmp_path / "cache"))
    data = json.loads(coco.read_text())
    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    by_image = {i["id"]: [a for a in data["annotations"] if a["image_id"] == i["id"]] for i in data["images"]}
    rows = {"image_id": [i["id"] for i in data["images"]],
            "image": [image_bytes(coco.parent / "images" / i["file_name"]) for i in data["images"]],
            "objects": [{"bbox": [a["bbox"] for a in by_image[i["id"]]],
                         "category": [a["category_id"] - 1 for a in by_image[i["id"]]]} for i in data["images"]]}
    features = Features(image_id=Value("int64"), image=Image(),
                        objects={"bbox": List(List(Value("float32"))), "category": List(ClassLabel(names=names))})
    saved = write(rows, features, tmp_path, "saved")
    source = {"dataset": saved, "split": "test", "box_format": "xywh",
              "columns": {"id": "image_id", "bboxes": "objects.bbox", "labels": "objects.category"}}
    same_samples(load("detection", source, ctx), load("detection", str(coco), ctx))

    parts = [json.loads(line) for line in synthetic_file_cad(SyntheticCad(n_train=3, n_eval=3), "eval",
                                                             str(tmp_path / "cache")).read_text().splitlines()]
    views = png(tmp_path)  # x.png, given with every other part
    jsonl = tmp_path / "parts.jsonl"
    jsonl.write_text("".join(json.dumps({**p, "images": ["x.png"] * (i % 2)}) + "\n" for i, p in enumerate(parts)))
    rows = {"id": [p["id"] for p in parts], "prompt": [p["description"] for p in parts],
            "code": [p["code"] for p in parts], "views": [[views] * (i % 2) for i in range(len(parts))]}
    path = write(rows, Features(id=Value("string"), prompt=Value("string"), code=Value("string"),
                                views=List(Image())), tmp_path / "cad", "parquet")
    source = {"dataset": path, "split": "test", "columns": {"description": "prompt", "images": "views"}}
    same_samples(load("cad_code", source, ctx), load("cad_code", str(jsonl), ctx))


@pytest.mark.slow
@pytest.mark.parametrize("task,kind", [("gui_grounding", "parquet"), ("rec", "saved"),
                                       ("temporal_grounding", "parquet")])
def test_two_training_steps_and_eval_give_the_numbers_of_the_original_files(task, kind, tiny_cache, tmp_path):
    preset, make = PRESETS[task]
    original, dataset = make(tmp_path / "data", tmp_path, kind)
    hf = f"{{dataset: {dataset}, split: test, preset: {preset}}}"
    extra = [f"data.video_dir={Path(original).parent / 'videos'}", "model.video.fps=1", "model.video.max_frames=4",
             "model.video.total_pixels=12544"] if task == "temporal_grounding" else []
    summaries = []
    for name, split in (("hf", hf), ("file", original)):
        overrides = [f"task={task}", f"output_dir={tmp_path / name}", f"model.cache_dir={tiny_cache}",
                     "model.min_pixels=3136", "model.max_pixels=3136", "progress=false", f"data.train={split}",
                     f"data.eval={split}", "sft.steps=0", "grpo.steps=2", "grpo.prompts_per_step=2",
                     "grpo.group_size=2", "grpo.max_new_tokens=8", "eval.max_new_tokens=8", "log_rollouts=false",
                     *extra]
        summaries.append(train(load_config(TrainConfig, None, overrides)))
    assert summaries[0]["before"] == summaries[1]["before"] and summaries[0]["after"] == summaries[1]["after"]
    assert summaries[0]["after"]["n"] > 0


@pytest.mark.slow
def test_eval_screenspot_with_a_model_gives_the_numbers_of_the_original_files(tiny_cache, tmp_path):
    original, dataset = screenspot(tmp_path / "data", tmp_path, "saved")
    model = ["--model", str(tiny_cache / "models" / "tiny-qwen2_5_vl-tiny"), "--min-pixels", "3136",
             "--max-pixels", "3136"]
    results = []
    for data in ([dataset, "--split", "test", "--preset", "rootsautomation/ScreenSpot"], [original]):
        main(["eval", "screenspot", "--data", *data, *model, "--output", str(tmp_path / "out.json")])
        results.append(json.loads((tmp_path / "out.json").read_text()))
    assert results[0]["n"] == results[1]["n"] == 6 and results[0]["accuracy"] == results[1]["accuracy"]


def scored(tmp_path: Path, argv: list[str]) -> dict:
    main([*argv, "--output", str(tmp_path / "out.json")])
    return json.loads((tmp_path / "out.json").read_text())


def test_eval_rec_and_charades_predictions_on_a_dataset_score_as_on_the_original_files(tmp_path, capsys):
    original, dataset = refcoco(tmp_path / "data", tmp_path, "parquet")
    rows = [json.loads(line) for line in Path(original).read_text().splitlines()]
    answers = [{"id": i, "output": json.dumps([{"bbox_2d": r["bbox"] if i % 2 else [0, 0, 4, 4], "label": "x"}])}
               for i, r in enumerate(rows)]
    (tmp_path / "rec.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    common = ["--predictions", str(tmp_path / "rec.jsonl")]
    from_hf = scored(tmp_path, ["eval", "rec", "--data", dataset, "--preset", "lmms-lab/RefCOCO", *common])
    assert from_hf == scored(tmp_path, ["eval", "rec", "--data", original, *common])
    assert 0 < from_hf["acc@0.5"] < 1

    original, dataset = charades(tmp_path / "data", tmp_path, "saved")
    lines = Path(original).read_text().splitlines()
    answers = [{"id": i, "output": f"<answer>{line.split()[1]} to {line.split('##')[0].split()[2]}</answer>"
                if i else "<answer>0 to 1</answer>"} for i, line in enumerate(lines)]
    (tmp_path / "tg.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    common = ["--predictions", str(tmp_path / "tg.jsonl"), "--videos", str(Path(original).parent / "videos")]
    from_hf = scored(tmp_path, ["eval", "charades", "--data", dataset, "--preset", "lmms-lab/charades_sta",
                                *common])
    assert from_hf == scored(tmp_path, ["eval", "charades", "--annotations", original, *common])
    assert from_hf["n"] == 3 and 0 < from_hf["miou"] < 1
    capsys.readouterr()


# -- errors ------------------------------------------------------------------------------------------------------
def gui_table(tmp_path: Path, rows: dict, features: Features, **source) -> Table:
    path = write(rows, features, tmp_path, "parquet")
    return Table(HFSource(dataset=path, split="test", **source), "gui_grounding", str(tmp_path / "cache"))


GUI = Features(image=Image(), instruction=Value("string"), bbox=List(Value("float64")))


def gui_rows(image: dict, bbox=(1.0, 2.0, 30.0, 40.0), instruction="click") -> dict:
    return {"image": [image, image], "instruction": [instruction, instruction], "bbox": [[1.0, 2.0, 3.0, 4.0],
                                                                                         list(bbox)]}


def png(tmp_path: Path) -> dict:
    from PIL import Image as PILImage

    PILImage.new("RGB", (40, 50), (9, 9, 9)).save(tmp_path / "x.png")
    return image_bytes(tmp_path / "x.png")


def test_a_missing_column_names_the_dataset_split_and_column(tmp_path):
    path = write(gui_rows(png(tmp_path)), GUI, tmp_path, "parquet")
    with pytest.raises(DataError, match=r"dataset .*data\.parquet, split test: missing column 'query' \(task field "
                                        r"'instruction'\); columns: image, instruction, bbox"):
        read_records("gui_grounding", HFSource(dataset=path, split="test", columns={"instruction": "query"}),
                     str(tmp_path))


def test_a_wrong_typed_cell_names_the_row_and_column(tmp_path):
    features = Features(image=Image(), instruction=Value("string"), bbox=List(Value("float64")))
    rows = gui_rows(png(tmp_path))
    rows["bbox"][1] = [1.0, 2.0]
    table = gui_table(tmp_path, rows, features)
    with pytest.raises(DataError, match=r"split test: row 1, column 'bbox': must be a list of 4 finite numbers "
                                        r"\(xyxy\), got \[1\.0, 2\.0\]"):
        read_records("gui_grounding", table.source, str(tmp_path / "cache"))
    rows = gui_rows(png(tmp_path))
    rows["instruction"] = [1, 2]
    path = write(rows, Features(image=Image(), instruction=Value("int64"), bbox=List(Value("float64"))), tmp_path,
                 "parquet")
    with pytest.raises(DataError, match=r"row 0, column 'instruction': must be a string, got 1"):
        read_records("gui_grounding", HFSource(dataset=path, split="test"), str(tmp_path))


def test_an_undecodable_image_cell_names_the_row_and_column(tmp_path):
    rows = gui_rows(png(tmp_path))
    rows["image"] = [rows["image"][0], {"bytes": b"not an image", "path": None}]
    table = gui_table(tmp_path, rows, GUI)
    with pytest.raises(DataError, match=r"split test: row 1, column 'image': cannot decode the image"):
        read_records("gui_grounding", table.source, str(tmp_path / "cache"))


def test_a_hub_id_that_cannot_be_reached_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    with pytest.raises(DataError, match=r"Hugging Face dataset 'rootsautomation/ScreenSpot' \(split test\): cannot "
                                        r"load it from the Hub"):
        read_records("gui_grounding", HFSource(dataset="rootsautomation/ScreenSpot", split="test"), str(tmp_path))


def test_a_config_mapping_is_checked_key_by_key(tmp_path):
    from mmrl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown config key 'data\.eval\.colums'"):
        load("gui_grounding", {"dataset": str(tmp_path), "colums": {}}, CTX)


def test_eval_cli_prints_one_line_for_a_bad_dataset(tmp_path, cli_error, capsys):
    original, dataset = refcoco(tmp_path / "data", tmp_path, "parquet")
    (tmp_path / "p.jsonl").write_text('{"id": 0, "output": "[]"}\n')
    capsys.readouterr()  # the progress bars of writing the dataset
    err = cli_error(["eval", "rec", "--data", dataset, "--predictions", str(tmp_path / "p.jsonl")])
    assert err.startswith("mmrl: error: dataset ") and "missing column 'expression' (task field 'expression')" in err
