"""Property-based fuzzing (Hypothesis) of the dataset loaders on mutated files (issue 23).

Every loader of a file a user hands mmrl (ScreenSpot v1/v2 and Pro, Charades-STA annotations, COCO instances, REC
JSON lines, the caption-QA and CAD JSON lines the tasks train on, the prediction files of every evaluator, GenEval
metadata, diffusion prompt files, the image lists of ``mmrl curate``) is fed files built from a valid file of its
format by mutations:

* on the bytes: truncation at a drawn byte, drawn bytes replaced by drawn values, bytes that are not UTF-8 inserted,
  a byte-order mark in front, the empty file;
* on the structure (JSON and JSON lines, the file still valid JSON): a key of a record deleted, duplicated (the same
  key twice in one object) or renamed, a value replaced by another JSON type or by an odd number (``NaN``,
  ``Infinity``, ``1e400``, an integer of 400 digits, one of 5,000 digits, which Python refuses to convert, ``-0``,
  ``4.9e-324``), a record deleted or duplicated; on Charades' text lines: a line deleted or duplicated, START or
  END replaced by an odd number, the ``##`` removed.

The contract: each call returns records (whose numbers are then finite and in order where the format says so), or,
where the loader can skip bad records, counts a skip, or raises an ``MMRLError`` of one line that names the file,
and, when the mutation was inside a record of a file that is still valid JSON (or a Charades line), that record or
line. Never any other exception. ``derandomize`` makes the run the same in every CI job (about 20 s on one core).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmrl.curate import load_images
from mmrl.diffusion.prompts import read_prompt_file
from mmrl.errors import MMRLError
from mmrl.eval import caption_qa, charades, detection, geneval, predictions, screenspot
from mmrl.eval.cad import load_cad
from mmrl.eval.detection_format import load_coco, load_rec
from mmrl.eval.records import get_id, id_rows
from mmrl.eval.screenspot_format import load_screenspot

EXAMPLES = 200
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ODD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 400, "1" * 5000, "-0", "4.9e-324", "-1", "0",
               "2.5", "-7"]
OTHER_TYPES = ["null", "true", "false", '""', '"x"', "[]", "{}", "[1, 2, 3, 4]", '{"a": 1}', "0", "-5", "2.5"]
NOT_UTF8 = [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\x80\x80"]
RECORD = re.compile(r":\d+\b|record \d+|\w+\[\d+\]")
"""How a message names a record or line: ``PATH:LINE``, ``record N`` or ``images[N]``."""


class Raw(str):
    """JSON text written verbatim (an odd number or a value of another type)."""


class Pairs(list):
    """A JSON object as its ``[key, value]`` pairs, so a key can appear twice."""


def pairs(items: list[tuple[str, Any]]) -> Pairs:
    return Pairs([list(item) for item in items])


def dump(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{json.dumps(k)}: {dump(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def objects(value: Any) -> list[Pairs]:
    """Every JSON object in ``value``, outermost first."""
    found = [value] if isinstance(value, Pairs) else []
    children = [v for _, v in value] if isinstance(value, Pairs) else value if isinstance(value, list) else []
    for child in children:
        found += objects(child)
    return found


@dataclass(frozen=True)
class Format:
    """A loader and a valid file of its format. ``layout``: ``array`` (a JSON array of records), ``coco`` (records
    in the arrays of a JSON object), ``jsonl`` (a record per line) or ``text`` (Charades lines). ``load(path)``
    calls the loader; ``check(result)`` asserts what a returned value promises."""

    name: str
    file: str
    valid: str
    layout: str
    load: Callable[[Path], Any]
    check: Callable[[Any], None] = lambda result: None


def finite_ordered(box: list[float]) -> None:
    assert all(math.isfinite(v) for v in box) and box[0] <= box[2] and box[1] <= box[3], box


def check_grounding(records) -> None:
    for r in records:
        finite_ordered(r.gt_box)


def check_charades(result) -> None:
    records, skipped = result
    assert skipped >= 0
    for r in records:
        assert math.isfinite(r.start) and math.isfinite(r.end) and 0 <= r.start <= r.end


def check_coco(result) -> None:
    records, names = result
    for r in records:
        assert r.width > 0 and r.height > 0 and len(r.boxes) == len(r.labels)
        for box in r.boxes + r.crowd_boxes:
            finite_ordered(box)


def check_rec(records) -> None:
    for r in records:
        finite_ordered(r.box)


def check_outputs(outputs) -> None:
    assert outputs and all(isinstance(text, str) for text in outputs.values())


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


V1 = {"img_filename": "a.png", "bbox": [10, 20, 30, 15], "instruction": "click the red button", "data_type": "icon",
      "data_source": "ios"}
PRO = {"id": "vscode_macos_0", "img_filename": "vscode/a.png", "bbox": [10, 20, 40, 35], "img_size": [640, 480],
       "instruction": "open the terminal", "application": "vscode", "platform": "macos", "group": "Dev",
       "ui_type": "text", "instruction_cn": "打开终端"}
COCO = {
    "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
               {"id": 2, "file_name": "b.png", "width": 32, "height": 32}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 12], "area": 120, "iscrowd": 0},
                    {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 5, 8, 8]},
                    {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 32, 32], "iscrowd": 1}],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
}
QA = {"question": "How many shapes are there?", "choices": ["1", "2", "3"], "answer": "B"}
FORMATS = [
    Format("screenspot v1", "screenspot_mobile.json", json.dumps([V1, {**V1, "data_type": "text"}, V1]), "array",
           load_screenspot, check_grounding),
    Format("screenspot v2", "screenspot_web_v2.json", json.dumps([V1, {**V1, "data_source": "gitlab"}]), "array",
           load_screenspot, check_grounding),
    Format("screenspot pro", "vscode_macos.json", json.dumps([PRO, {**PRO, "id": "vscode_macos_1"}]), "array",
           load_screenspot, check_grounding),
    Format("charades", "charades_sta_test.txt",
           "3MSZA 24.3 30.4##person turn a light on.\n\nAO8RW 0.0 6.9##a person is putting a book on a shelf.\n"
           "AO8RW 7 12##person begins to play on a phone.\n", "text", charades.load_annotations, check_charades),
    Format("charades, skipping bad lines", "charades_sta_train.txt",
           "3MSZA 24.3 30.4##person turn a light on.\nAO8RW 0.0 6.9##a person is putting a book on a shelf.\n",
           "text", lambda path: charades.load_annotations(path, skip_bad=True), check_charades),
    Format("coco", "instances.json", json.dumps(COCO), "coco", load_coco, check_coco),
    Format("rec", "rec.jsonl", jsonl({"image": "a.png", "expression": "the cat", "bbox": [1, 2, 11, 14]},
                                     {"image": "b.png", "expression": "the dog", "bbox": [0.5, 0, 3, 4.5]}),
           "jsonl", load_rec, check_rec),
    Format("caption qa", "qa.jsonl", jsonl({"id": "s0", "image": "a.png", "qa": [QA, {**QA, "answer": 0}],
                                            "caption": "two shapes"}, {"id": 7, "image": "a.png", "qa": [QA]}),
           "jsonl", caption_qa.load_caption_qa),
    Format("cad", "cad.jsonl", jsonl({"id": "c0", "description": "a cube", "code": "r = cq.Workplane().box(1, 1, 1)",
                                      "images": ["a.png"]}, {"id": "c1", "description": "a plate", "code": "x"}),
           "jsonl", load_cad),
    Format("jsonl rows with ids", "rows.jsonl", jsonl({"id": "a", "x": 1}, {"id": 2, "x": [1]}), "jsonl",
           lambda path: list(id_rows(path, "rows"))),
    Format("screenspot predictions", "p.jsonl",
           jsonl({"id": 0, "output": "(1, 2)"}, {"id": "1", "file": "screenspot_web.json", "output": "click"}),
           "jsonl", screenspot.read_predictions, check_outputs),
    Format("charades predictions", "p.jsonl", jsonl({"id": 0, "output": "1 to 2"}, {"id": 3, "output": ""}), "jsonl",
           charades.read_predictions, check_outputs),
    Format("detection predictions", "p.jsonl", jsonl({"id": 1, "output": "[]"}, {"id": 2, "output": "[{}]"}),
           "jsonl", detection.read_predictions, check_outputs),
    Format("caption qa predictions", "p.jsonl",
           jsonl({"id": "s0", "output": "a", "sample": 0}, {"id": "s0", "output": "b", "sample": 1}), "jsonl",
           lambda path: predictions.read_predictions(path, caption_qa._prediction_key), check_outputs),
    Format("cad predictions", "p.jsonl", jsonl({"id": "c0", "output": "x"}), "jsonl",
           lambda path: predictions.read_predictions(path, get_id), check_outputs),
    Format("geneval metadata", "metadata.jsonl",
           jsonl({"tag": "position", "prompt": "a photo of a cat left of a dog",
                  "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "color": "red",
                                                              "position": ["left of", 0]}],
                  "exclude": [{"class": "cat", "count": 2}]}), "jsonl",
           lambda path: geneval.read_metadata(path)),
    Format("diffusion prompts", "prompts.jsonl", jsonl({"prompt": "a red apple", "tag": "colors"}, {"prompt": "a car"}),
           "jsonl", read_prompt_file),
    Format("curate image list", "images.jsonl", jsonl({"id": "a", "image": "a.png"}, {"id": 1, "image": "a.png"}),
           "jsonl", load_images),
]


# -- mutations --------------------------------------------------------------------------------------------------------
def byte_mutation(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "not_utf8", "bom", "empty"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind == "flip" and data:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    if kind == "not_utf8":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.sampled_from(NOT_UTF8)) + data[at:]
    return b"\xef\xbb\xbf" + data if kind == "bom" else b""


def slots(value: Any) -> list[tuple[list, int]]:
    """``(container, index)`` of every value inside ``value``: an object's ``[key, value]`` pair (index 1) or a
    list's item."""
    found: list[tuple[list, int]] = []
    if isinstance(value, Pairs):
        for pair in value:
            found += [(pair, 1), *slots(pair[1])]
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += [(value, i), *slots(item)]
    return found


def record_mutation(draw, record: Pairs) -> None:
    """Change ``record`` in place: in one of its objects (itself or a nested one) delete, duplicate or rename a key,
    or replace one of its values (at any depth) by another JSON type, or a number by an odd number."""
    numbers = [(c, i) for c, i in slots(record) if isinstance(c[i], (int, float)) and not isinstance(c[i], bool)]
    kind = draw(st.sampled_from(["odd_number", "odd_number", "retype", "delete", "duplicate", "rename"]))
    if kind == "odd_number" and numbers:
        container, i = draw(st.sampled_from(numbers))
        container[i] = Raw(draw(st.sampled_from(ODD_NUMBERS)))
    elif kind in ("odd_number", "retype"):
        container, i = draw(st.sampled_from(slots(record)))
        container[i] = Raw(draw(st.sampled_from(OTHER_TYPES)))
    else:
        node = draw(st.sampled_from([o for o in objects(record) if o]))
        i = draw(st.integers(0, len(node) - 1))
        key, value = node[i]
        if kind == "delete":
            del node[i]
        elif kind == "duplicate":
            node.append([key, Raw(draw(st.sampled_from(OTHER_TYPES + ODD_NUMBERS)))])
        else:
            node[i] = [draw(st.sampled_from([key.upper(), key + "_", key[:-1], "", "\u0000" + key])), value]


def records_of(layout: str, tree: Any) -> list[list]:
    """The lists whose items are the records: the top-level array, or COCO's three arrays."""
    if layout == "array":
        return [tree]
    return [v for _, v in tree if isinstance(v, list)] if layout == "coco" else [tree]


def structure_mutation(draw, fmt: Format) -> tuple[bytes, bool]:
    """A file of ``fmt`` still valid JSON (or JSON lines), one record (a line) changed or deleted or duplicated,
    and whether a record is still there to blame (not when one was deleted)."""
    if fmt.layout == "jsonl":
        tree = [json.loads(line, object_pairs_hook=pairs) for line in fmt.valid.splitlines()]
    else:
        tree = json.loads(fmt.valid, object_pairs_hook=pairs)
    lists = [items for items in records_of(fmt.layout, tree) if items]
    items = draw(st.sampled_from(lists))
    i = draw(st.integers(0, len(items) - 1))
    kind = draw(st.sampled_from(["inside", "inside", "inside", "inside", "delete", "duplicate"]))
    if kind == "inside":
        record_mutation(draw, items[i])
    elif kind == "delete":
        del items[i]
    else:
        items.insert(i, items[i])
    text = "".join(dump(row) + "\n" for row in tree) if fmt.layout == "jsonl" else dump(tree)
    return text.encode(), kind != "delete"


def line_mutation(draw, text: str) -> tuple[bytes, bool]:
    """Charades: one line deleted, duplicated, a time replaced by an odd number or its ``##`` removed."""
    lines = text.split("\n")
    i = draw(st.integers(0, len(lines) - 2))
    kind = draw(st.sampled_from(["delete", "duplicate", "odd_start", "odd_end", "no_hashes"]))
    if kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(i, lines[i])
    elif kind == "no_hashes":
        lines[i] = lines[i].replace("##", " ")
    else:
        fields = lines[i].split(" ", 3)
        if len(fields) >= 3:
            fields[1 if kind == "odd_start" else 2] = draw(st.sampled_from(
                ["nan", "inf", "-inf", "1e400", "-1", "1" * 5000, "1_0", "0x10", "٣", "", "++1"]))
        lines[i] = " ".join(fields)
    return "\n".join(lines).encode(), kind != "delete"


@st.composite
def mutated(draw, fmt: Format) -> tuple[bytes, bool]:
    """``(file bytes, in_record)``: ``in_record`` when the file is still well-formed and the change is in a record
    (so an error must name that record or line)."""
    data, changed, in_record = fmt.valid.encode(), False, False
    if draw(st.integers(0, 2)) > 0:
        data, in_record = line_mutation(draw, fmt.valid) if fmt.layout == "text" else structure_mutation(draw, fmt)
        changed = True
    if not changed or draw(st.integers(0, 3)) == 0:
        data, in_record = byte_mutation(draw, data), False
    return data, in_record


# -- the property -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder with the images the records name (CAD and caption-QA loaders check that they exist)."""
    root = tmp_path_factory.mktemp("fuzz_loaders")
    for name in ("a.png", "b.png", "vscode/a.png", "images/a.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / name)
    return root


def check_contract(fmt: Format, path: Path, in_record: bool) -> None:
    try:
        result = fmt.load(path)
    except MMRLError as exc:
        message = str(exc)
        assert "\n" not in message, message
        assert str(path) in message, message
        whole_file_parse = fmt.layout in ("array", "coco") and "invalid JSON" in message  # no record to name yet
        if in_record and not whole_file_parse:
            assert RECORD.search(message.replace(str(path), "")), message
        return
    fmt.check(result)


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
def test_valid_file_loads(fmt, folder):
    path = folder / fmt.file
    path.write_text(fmt.valid)
    fmt.check(fmt.load(path))


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
def test_mutated_file_loads_or_names_the_file(fmt, folder):
    @FUZZ
    @given(mutated(fmt))
    def run(case):
        data, in_record = case
        path = folder / fmt.file
        path.write_bytes(data)
        check_contract(fmt, path, in_record)

    run()


# -- regressions: the failures fuzzing found, and their neighbours --------------------------------------------------
DIGITS_400, DIGITS_5000 = "1" * 400, "1" * 5000
REGRESSIONS = [
    # an integer too large for a float where a number is expected: OverflowError from math.isfinite
    ("screenspot_mobile.json", f'[{{"img_filename": "a.png", "bbox": [{DIGITS_400}, 2, 3, 4], "instruction": "x", '
     '"data_type": "icon", "data_source": "ios"}]', load_screenspot, "record 0: field 'bbox' must be"),
    ("rec.jsonl", f'{{"image": "a.png", "expression": "x", "bbox": [1, 2, {DIGITS_400}, 4]}}\n', load_rec,
     ":1: field 'bbox' must be"),
    # an integer Python refuses to convert (> 4300 digits): ValueError from json.loads
    ("p.jsonl", f'{{"id": {DIGITS_5000}, "output": "x"}}\n', charades.read_predictions,
     ":1: invalid JSON: Exceeds the limit (4300 digits) for integer string conversion"),
    ("instances.json", f'{{"images": [{{"id": {DIGITS_5000}}}]}}', load_coco, ": invalid JSON: Exceeds"),
    ("prompts.jsonl", f'{{"prompt": "a", "n": {DIGITS_5000}}}\n', read_prompt_file, ":1: malformed JSON (Exceeds"),
    # brackets nested deeper than Python's recursion limit: RecursionError from json.loads
    ("screenspot_web.json", "[" * 100_000 + "]" * 100_000, load_screenspot, ": invalid JSON: nested too deeply"),
    ("p.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", screenspot.read_predictions,
     ":1: invalid JSON: nested too deeply"),
    # a prompt file that is not UTF-8: UnicodeDecodeError from read_text
    ("prompts.txt", "a red apple\n\udcff blue car\n", read_prompt_file, ":2: prompt file is not UTF-8 text"),
    # an empty predictions file was read as no predictions at all: every record then scored as missing
    ("p.jsonl", "\n", detection.read_predictions, ": no prediction rows"),
    # a file name longer than the file system allows: OSError from Path.is_file
    ("qa.jsonl", json.dumps({"id": "s", "image": "x" * 5000, "qa": [QA]}) + "\n", caption_qa.load_caption_qa,
     ":1: field 'image' must be a usable file path"),
    ("cad.jsonl", json.dumps({"id": "c", "description": "d", "code": "c", "images": ["x" * 5000]}) + "\n", load_cad,
     ":1: field 'images' must be a usable file path"),
]


REGRESSION_IDS = ["screenspot 400-digit int", "rec 400-digit int", "predictions 5000-digit int",
                  "coco 5000-digit int", "prompts 5000-digit int", "screenspot nested 100000 deep",
                  "predictions nested 100000 deep", "prompts not utf-8", "empty predictions", "caption qa long name",
                  "cad long name"]


@pytest.mark.parametrize("name, text, load, named", REGRESSIONS, ids=REGRESSION_IDS)
def test_regression(name, text, load, named, folder):
    path = folder / name
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(MMRLError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(str(path)) and named in message and "\n" not in message, message


def test_a_byte_order_mark_is_not_part_of_the_first_record(folder):
    """A BOM in front of a file (as Windows editors write it) is dropped: a text prompt file's first prompt used to
    start with U+FEFF, and a JSON annotation file was "invalid JSON"."""
    prompts = folder / "bom.txt"
    prompts.write_bytes(b"\xef\xbb\xbfa red apple\n")
    assert read_prompt_file(prompts) == [{"prompt": "a red apple"}]
    annotations = folder / "screenspot_desktop.json"
    annotations.write_bytes(b"\xef\xbb\xbf" + json.dumps([V1]).encode())
    assert [r.instruction for r in load_screenspot(annotations)] == [V1["instruction"]]
