"""The bad-input matrix of the ``mmrl`` command (issue 23): every file a command reads x every way it can be bad.

Each row builds one faulty file in ``tmp_path`` (the other inputs of the command valid), runs ``mmrl.cli.main`` in
process and expects exit status 2 and ONE stderr line ``mmrl: error: ...`` that names the file (and the key or
field where the fault is one), never a traceback. The faults:

* ``missing``, ``empty`` (0 bytes), ``directory`` (a folder where a file is expected), ``unreadable`` (mode 000;
  as root, who reads such a file, a symlink to itself, which nobody can open), ``invalid_utf8`` (a byte that is not UTF-8 in the middle): every file;
* ``malformed`` (a syntax error: truncated JSON or JSON lines, bad YAML, a Charades line without ``##``),
  ``wrong_type`` (a value of another type), ``unknown_key`` and ``out_of_range`` (a number outside its valid range):
  where the format has them. Data records ignore unknown keys by design (ScreenSpot-Pro and COCO files carry extra
  fields), so ``unknown_key`` applies to configuration files only; formats without numbers to bound (CAD records,
  ScreenSpot predictions) have no ``out_of_range`` row.

Command-line options out of range (``--k 0``, ``--with-image-min 1.5``, ...) and outputs that are folders are
rows of ``OPTION_ROWS``. Every fault is found before any model or detector loads, so the matrix takes seconds.
"""
from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

GENERIC = ("missing", "empty", "directory", "unreadable", "invalid_utf8")


def png(path: Path, size=(16, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 200, 200)).save(path)


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


@dataclass(frozen=True)
class Input:
    """One file of one command: ``argv(tmp, path)`` runs the command reading ``path`` (``tmp/FOLDER/NAME``) as that
    file; ``valid`` is its good content (the base of ``unreadable`` and ``invalid_utf8``);
    ``content`` maps each format fault to ``(bad content, what the message must name besides the file)``;
    ``setup(tmp)`` writes the command's other inputs; ``generic``: the faults of any file that apply."""

    command: str
    name: str
    valid: str
    argv: Callable[[Path, Path], list[str]]
    content: dict[str, tuple[str, str]] = field(default_factory=dict)
    setup: Callable[[Path], None] = lambda tmp: None
    folder: str = "d"
    generic: tuple[str, ...] = GENERIC


SCREENSPOT = {"img_filename": "a.png", "bbox": [1, 1, 4, 4], "instruction": "click the button", "data_type": "icon",
              "data_source": "ios"}
SCREENSPOT_FAULTS = {
    "malformed": (json.dumps([SCREENSPOT])[:40], "invalid JSON at line 1"),
    "wrong_type": (json.dumps([{**SCREENSPOT, "bbox": "ten"}]), "record 0: field 'bbox'"),
    "out_of_range": (json.dumps([{**SCREENSPOT, "bbox": [1, 1, -4, 4]}]), "record 0: field 'bbox'"),
}
PREDICTION_FAULTS = {
    "malformed": ('{"id": 0, "output": "(2, 2)"}\n{"id": 1, "outp\n', ":2: invalid JSON"),
    "wrong_type": (jsonl({"id": [0], "output": "(2, 2)"}), ":1: field 'id'"),
}
COCO = {"images": [{"id": 1, "file_name": "a.png", "width": 16, "height": 16}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}],
        "categories": [{"id": 1, "name": "cat"}]}
REC = {"image": "a.png", "expression": "the cat", "bbox": [1, 1, 5, 5]}
CAD = {"id": "a", "description": "a cube", "code": "import cadquery as cq\nshow_object(cq.Workplane().box(1, 1, 1))"}
CAPTION = {"id": "s0", "image": "a.png", "qa": [{"question": "How many shapes?", "choices": ["1", "2"], "answer": "B"}]}
GENEVAL = {"tag": "single_object", "prompt": "a photo of a cat", "include": [{"class": "cat", "count": 1}]}
TRAIN_YAML = "grpo:\n  steps: 1\n"
YAML_FAULTS = {
    "malformed": ("grpo:\n  steps: [1,\n", ":3: invalid YAML"),
    "wrong_type": ("grpo:\n  steps: many\n", "grpo.steps"),
    "unknown_key": ("grpo:\n  lrr: 1.0e-5\n", "grpo.lrr"),
    "out_of_range": ("grpo:\n  steps: -1\n", "grpo.steps"),
}
DIFFUSION_YAML = "optim:\n  steps: 1\n"
DIFFUSION_YAML_FAULTS = {
    "malformed": ("optim: {steps: 1\n", "invalid YAML"),
    "wrong_type": ("optim:\n  lr: fast\n", "optim.lr"),
    "unknown_key": ("optim:\n  lrr: 1.0e-4\n", "optim.lrr"),
    "out_of_range": ("ppo:\n  timestep_fraction: 1.5\n", "ppo.timestep_fraction"),
}
PROMPT_FAULTS = {
    "malformed": ('{"prompt": "a red apple"}\n{"prompt": "a blue\n', ":2: malformed JSON"),
    "wrong_type": (jsonl({"prompt": 5}), ":1: expected an object with a string 'prompt'"),
}


def screenspot_setup(tmp: Path) -> None:
    png(tmp / "d" / "images" / "a.png")


def in_d(*names: str) -> Callable[[Path], None]:
    """A setup writing the images ``names`` beside the faulty file."""
    return lambda tmp: [png(tmp / "d" / name) for name in names]


def train_args(tmp: Path) -> list[str]:
    return [f"output_dir={tmp / 'run'}", f"model.cache_dir={tmp / 'cache'}"]


def preds(tmp: Path) -> Path:
    """A valid predictions file for the rows whose faulty file is the data."""
    path = tmp / "p.jsonl"
    path.write_text(jsonl({"id": 0, "output": "(2, 2)"}))
    return path


def valid_file(tmp: Path, name: str, text: str) -> Path:
    path = tmp / "ok" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def screenspot_data(tmp: Path) -> Path:
    screenspot_setup(tmp)
    return valid_file(tmp, "screenspot_mobile.json", json.dumps([{**SCREENSPOT, "img_filename": "../d/images/a.png"}]))


def geneval_images(tmp: Path) -> None:
    png(tmp / "00000" / "samples" / "0000.png")


INPUTS = [
    Input("train --config", "c.yaml", TRAIN_YAML,
          lambda tmp, p: ["train", "gui_grounding", "--config", str(p), *train_args(tmp)], YAML_FAULTS),
    Input("train data.train", "screenspot_mobile.json", json.dumps([SCREENSPOT]),
          lambda tmp, p: ["train", "gui_grounding", f"data.train={p}", f"data.eval={p}", *train_args(tmp)],
          SCREENSPOT_FAULTS, screenspot_setup),
    Input("select --config", "c.yaml", TRAIN_YAML,
          lambda tmp, p: ["select", "gui_grounding", "--config", str(p), "--output", str(tmp / "s.jsonl"),
                          *train_args(tmp)], YAML_FAULTS),
    Input("select data.train", "screenspot_mobile.json", json.dumps([SCREENSPOT]),
          lambda tmp, p: ["select", "gui_grounding", "--output", str(tmp / "s.jsonl"), f"data.train={p}",
                          *train_args(tmp)], SCREENSPOT_FAULTS, screenspot_setup),
    Input("eval screenspot --data", "screenspot_mobile.json", json.dumps([SCREENSPOT]),
          lambda tmp, p: ["eval", "screenspot", "--data", str(p), "--predictions", str(preds(tmp))],
          SCREENSPOT_FAULTS, screenspot_setup),
    Input("eval screenspot --predictions", "p.jsonl", jsonl({"id": 0, "output": "(2, 2)"}),
          lambda tmp, p: ["eval", "screenspot", "--data", str(screenspot_data(tmp)), "--predictions", str(p)],
          PREDICTION_FAULTS),
    Input("eval charades --annotations", "a.txt", "v1 1.0 2.0##a person opens a door\n",
          lambda tmp, p: ["eval", "charades", "--annotations", str(p), "--predictions", str(preds(tmp))],
          {"malformed": ("v1 1.0 2.0 a person opens a door\n", ":1: malformed annotation line"),
           "wrong_type": ("v1 one two##a person opens a door\n", ":1: malformed annotation line"),
           "out_of_range": ("v1 -1.0 2.0##a person opens a door\n", ":1: malformed annotation line")}),
    Input("eval charades --predictions", "p.jsonl", jsonl({"id": 0, "output": "1 to 2"}),
          lambda tmp, p: ["eval", "charades", "--annotations",
                          str(valid_file(tmp, "a.txt", "v1 1.0 2.0##a person opens a door\n")), "--predictions",
                          str(p)],
          {**PREDICTION_FAULTS, "wrong_type": (jsonl({"id": "0", "output": "1 to 2"}), ":1: field 'id'")}),
    Input("eval detection --data", "instances.json", json.dumps(COCO),
          lambda tmp, p: ["eval", "detection", "--data", str(p), "--predictions", str(preds(tmp))],
          {"malformed": (json.dumps(COCO)[:50], "invalid JSON at line 1"),
           "wrong_type": (json.dumps({**COCO, "images": [{**COCO["images"][0], "width": "16"}]}),
                          "images[0]: field 'width'"),
           "out_of_range": (json.dumps({**COCO, "images": [{**COCO["images"][0], "width": -16}]}),
                            "images[0]: field 'width'")}),
    Input("eval detection --predictions", "p.jsonl", jsonl({"id": 1, "output": "[]"}),
          lambda tmp, p: ["eval", "detection", "--data", str(valid_file(tmp, "instances.json", json.dumps(COCO))),
                          "--predictions", str(p)],
          {**PREDICTION_FAULTS, "wrong_type": (jsonl({"id": "1", "output": "[]"}), ":1: field 'id'")}),
    Input("eval rec --data", "rec.jsonl", jsonl(REC),
          lambda tmp, p: ["eval", "rec", "--data", str(p), "--predictions", str(preds(tmp))],
          {"malformed": (jsonl(REC)[:30], ":1: invalid JSON"),
           "wrong_type": (jsonl({**REC, "expression": 5}), ":1: field 'expression'"),
           "out_of_range": (jsonl({**REC, "bbox": [5, 5, 1, 1]}), ":1: field 'bbox'")}),
    Input("eval rec --predictions", "p.jsonl", jsonl({"id": 0, "output": "[1, 1, 5, 5]"}),
          lambda tmp, p: ["eval", "rec", "--data", str(valid_file(tmp, "rec.jsonl", jsonl(REC))), "--predictions",
                          str(p)],
          {**PREDICTION_FAULTS, "wrong_type": (jsonl({"id": 0.5, "output": "[]"}), ":1: field 'id'")}),
    Input("eval cad --data", "cad.jsonl", jsonl(CAD),
          lambda tmp, p: ["eval", "cad", "--data", str(p), "--predictions", str(preds(tmp))],
          {"malformed": (jsonl(CAD)[:30], ":1: invalid JSON"),
           "wrong_type": (jsonl({**CAD, "description": 5}), ":1: field 'description'")}),
    Input("eval cad --predictions", "p.jsonl", jsonl({"id": "a", "output": "x"}),
          lambda tmp, p: ["eval", "cad", "--data", str(valid_file(tmp, "cad.jsonl", jsonl(CAD))), "--predictions",
                          str(p)],
          {**PREDICTION_FAULTS, "wrong_type": (jsonl({"id": "a", "output": 5}), ":1: field 'output'")}),
    Input("eval caption_qa --data", "qa.jsonl", jsonl(CAPTION),
          lambda tmp, p: ["eval", "caption_qa", "--data", str(p), "--predictions", str(preds(tmp))],
          {"malformed": (jsonl(CAPTION)[:30], ":1: invalid JSON"),
           "wrong_type": (jsonl({**CAPTION, "qa": "how many?"}), ":1: field 'qa'"),
           "out_of_range": (jsonl({**CAPTION, "qa": [{**CAPTION["qa"][0], "answer": 7}]}), "qa[0]: field 'answer'")},
          in_d("a.png")),
    Input("eval caption_qa --predictions", "p.jsonl", jsonl({"id": "s0", "output": "two shapes"}),
          lambda tmp, p: ["eval", "caption_qa", "--data",
                          str(valid_file(tmp, "qa.jsonl", jsonl({**CAPTION, "image": "../d/a.png"}))),
                          "--predictions", str(p)],
          {**PREDICTION_FAULTS,
           "out_of_range": (jsonl({"id": "s0", "output": "two", "sample": -1}), ":1: field 'sample'")},
          in_d("a.png")),
    Input("eval geneval metadata.jsonl", "metadata.jsonl", jsonl(GENEVAL),
          lambda tmp, p: ["eval", "geneval", str(tmp)],
          {"malformed": (jsonl(GENEVAL)[:30], ":1: invalid JSON"),
           "wrong_type": (jsonl({**GENEVAL, "include": "a cat"}), ":1: field 'include'"),
           "out_of_range": (jsonl({**GENEVAL, "include": [{"class": "cat", "count": -1}]}), "include[0]")},
          geneval_images, folder="00000"),
    Input("curate caption_qa --data", "images.jsonl", jsonl({"id": "a", "image": "a.png"}),
          lambda tmp, p: ["curate", "caption_qa", "--data", str(p), "--model", str(tmp / "no-model"), "--out",
                          str(tmp / "out.jsonl")],
          {"malformed": ('{"id": "a", "ima\n', ":1: invalid JSON"),
           "wrong_type": (jsonl({"id": ["a"], "image": "a.png"}), ":1: field 'id'")},
          in_d("a.png")),
    Input("diffusion train CONFIG", "c.yaml", DIFFUSION_YAML,
          lambda tmp, p: ["diffusion", "train", "ddpo", str(p), f"output_dir={tmp / 'run'}"], DIFFUSION_YAML_FAULTS),
    Input("diffusion train prompts.file", "prompts.jsonl", jsonl({"prompt": "a red apple"}),
          lambda tmp, p: ["diffusion", "train", "ddpo", f"prompts.file={p}", f"output_dir={tmp / 'run'}",
                          f"model.cache_dir={tmp / 'cache'}"], PROMPT_FAULTS),
    Input("diffusion sample --prompts", "prompts.jsonl", jsonl({"prompt": "a red apple"}),
          lambda tmp, p: ["diffusion", "sample", "--prompts", str(p), "--out", str(tmp / "out")], PROMPT_FAULTS),
    Input("diffusion sample --run", "config.json", json.dumps({"model": {"path": "tiny-sd"}}),
          lambda tmp, p: ["diffusion", "sample", "--run", str(p.parent), "--prompt", "a red apple", "--out",
                          str(tmp / "out")],
          {"malformed": ('{"model": {"path": "tiny', "invalid JSON at line 1"),
           "wrong_type": (json.dumps({"model": {"resolution": "big"}}), "model.resolution"),
           "unknown_key": (json.dumps({"model": {"resolutoin": 32}}), "model.resolutoin"),
           "out_of_range": (json.dumps({"model": {"resolution": -32}}), "model.resolution")}),
    Input("diffusion steer --config", "c.yaml", "steer:\n  particles: 2\n",
          lambda tmp, p: ["diffusion", "steer", "--config", str(p), "--prompt", "a red apple", "--out",
                          str(tmp / "out")],
          {"malformed": ("steer: [\n", "invalid YAML"),
           "wrong_type": ("steer:\n  particles: many\n", "steer.particles"),
           "unknown_key": ("steer:\n  particle: 2\n", "steer.particle"),
           "out_of_range": ("steer:\n  particles: 0\n", "steer.particles")}),
]
"""Every file each command reads (ScreenSpot's loader stands for the training data of every task: the task loaders
are the benchmark loaders, fuzzed in tests/test_fuzz_loaders.py)."""


def write_fault(tmp: Path, spec: Input, fault: str) -> tuple[Path, str]:
    """The faulty file at ``tmp/d/NAME`` and what the message must name besides it."""
    spec.setup(tmp)
    path = tmp / spec.folder / spec.name
    path.parent.mkdir(parents=True, exist_ok=True)
    if fault == "missing":
        return path, ""
    if fault == "empty":
        path.write_text("")
    elif fault == "directory":
        path.mkdir()
    elif fault == "unreadable" and os.geteuid() == 0:  # root reads a file of mode 000, but nobody can open a
        path.symlink_to(path.name)                      # symlink to itself (ELOOP)
    elif fault == "unreadable":
        path.write_text(spec.valid)
        path.chmod(0)
    elif fault == "invalid_utf8":
        half = len(spec.valid) // 2
        path.write_bytes(spec.valid[:half].encode() + b"\xff\xfe" + spec.valid[half:].encode())
    else:
        text, named = spec.content[fault]
        path.write_text(text)
        return path, named
    return path, ""


ROWS = [pytest.param(spec, fault, id=f"{spec.command}-{fault}")
        for spec in INPUTS for fault in (*spec.generic, *spec.content)]


@pytest.mark.parametrize("spec, fault", ROWS)
def test_bad_input(spec, fault, tmp_path, cli_error):
    path, named = write_fault(tmp_path, spec, fault)
    err = cli_error(spec.argv(tmp_path, path))
    assert err.startswith("mmrl: error: ") and "Traceback" not in err
    assert str(path) in err and named in err, err


OPTION_ROWS = [  # (argv of tmp_path, what the message names)
    pytest.param(lambda tmp: ["select", "gui_grounding", "--k", "0", "--output", str(tmp / "s.jsonl")], "--k 0",
                 id="select --k 0"),
    pytest.param(lambda tmp: ["select", "gui_grounding", "--output", str(tmp)], "--output {tmp}",
                 id="select --output folder"),
    pytest.param(lambda tmp: ["train", "gui_grounding", "grpo.top_p=1.5", *train_args(tmp)], "grpo.top_p",
                 id="train grpo.top_p 1.5"),
    pytest.param(lambda tmp: ["train", "gui_grounding", "grpo.group_size=1", *train_args(tmp)], "grpo.group_size",
                 id="train grpo.group_size 1"),
    pytest.param(lambda tmp: ["train", "gui_grounding", "sft.lr=.nan", *train_args(tmp)], "sft.lr",
                 id="train sft.lr nan"),
    pytest.param(lambda tmp: ["diffusion", "train", "ddpo", "optim.steps=-5", f"output_dir={tmp / 'run'}"],
                 "optim.steps", id="diffusion train optim.steps -5"),
    pytest.param(lambda tmp: ["diffusion", "sample", "--prompt", "a", "--steps", "0", "--out", str(tmp / "o")],
                 "--steps 0", id="diffusion sample --steps 0"),
    pytest.param(lambda tmp: ["diffusion", "sample", "--prompt", "a", "--n", "-1", "--out", str(tmp / "o")],
                 "--n -1", id="diffusion sample --n -1"),
    pytest.param(lambda tmp: ["curate", "caption_qa", "--data", "x.jsonl", "--model", "m", "--out",
                              str(tmp / "o.jsonl"), "--with-image-min", "1.5"], "--with-image-min 1.5",
                 id="curate --with-image-min 1.5"),
    pytest.param(lambda tmp: ["curate", "caption_qa", "--data", "x.jsonl", "--model", "m", "--out",
                              str(tmp / "o.jsonl"), "--questions", "0"], "--questions 0", id="curate --questions 0"),
    pytest.param(lambda tmp: ["eval", "cad", "--data", "x.jsonl", "--predictions", "p.jsonl", "--workers", "0"],
                 "--workers 0", id="eval cad --workers 0"),
    pytest.param(lambda tmp: ["eval", "caption_qa", "--data", str(valid_file(tmp, "qa.jsonl", jsonl(
        {**CAPTION, "image": "../d/a.png"}))), "--predictions", "p.jsonl", "--samples", "0"], "--samples",
                 id="eval caption_qa --samples 0"),
    pytest.param(lambda tmp: ["demo", str(valid_file(tmp, "metrics.jsonl", "{}\n"))], "is a file",
                 id="demo on a file"),
    pytest.param(lambda tmp: ["eval", "geneval", str(valid_file(tmp, "00000", "{}\n"))],
                 "GenEval image folder not found", id="eval geneval on a file"),
]


@pytest.mark.parametrize("argv, named", OPTION_ROWS)
def test_bad_option(argv, named, tmp_path, cli_error):
    """An option or config value out of range, an output that is a folder, a folder argument that is a file: one
    line naming the option or key (``named``, ``{tmp}`` standing for ``tmp_path``)."""
    in_d("a.png")(tmp_path)
    err = cli_error(argv(tmp_path))
    assert err.startswith("mmrl: error: ") and named.format(tmp=tmp_path) in err, err


def test_debug_shows_the_traceback(tmp_path, capsys):
    """``mmrl --debug`` re-raises the error instead of printing one line, so Python prints its traceback, which
    leads to where the file was read."""
    from mmrl.cli import main
    from mmrl.errors import DataError

    missing = tmp_path / "nope.json"
    with pytest.raises(DataError) as info:
        main(["--debug", "eval", "screenspot", "--data", str(missing), "--predictions", str(missing)])
    assert str(info.value) == f"{missing}: no such file or directory"
    frames = [frame.name for frame in traceback.extract_tb(info.tb)]
    assert frames.index("main") < frames.index("load_screenspot")
    assert "mmrl: error" not in capsys.readouterr().err


def test_a_bug_is_not_hidden(monkeypatch, tmp_path, capsys):
    """An exception that is not an ``MMRLError`` (a bug) escapes ``main`` with its traceback, never one line."""
    from mmrl.cli import main
    from mmrl.eval import screenspot

    def broken(path, image_dir=None):
        raise KeyError("a bug")

    monkeypatch.setattr(screenspot, "load_screenspot", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["eval", "screenspot", "--data", str(tmp_path / "x.json"), "--predictions", str(tmp_path / "p")])
    assert "mmrl: error" not in capsys.readouterr().err


def test_limits_by_hand():
    from mmrl.config import POSITIVE, PROBABILITY, Limit

    assert PROBABILITY.admits(0) and PROBABILITY.admits(1) and not PROBABILITY.admits(1.000001)
    assert not POSITIVE.admits(0) and POSITIVE.admits(1e-300) and not POSITIVE.admits(-1)
    assert not any(Limit().admits(v) for v in (float("nan"), float("inf"), float("-inf")))
    assert str(Limit(0, 1, open_low=True)) == "finite and > 0 and <= 1" and str(Limit(1)) == "finite and >= 1"
