"""Bad input through the ``mmrl`` command: one clear error line naming the file/record/key, exit status 2."""
from __future__ import annotations

import json

import pytest
from PIL import Image


def write_v1(folder, records, image_name="a.png", image=True):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    if image:
        Image.new("RGB", (112, 112), (200, 200, 200)).save(folder / "images" / image_name)
    path = folder / "screenspot_mobile.json"
    path.write_text(json.dumps(records))
    return path


def record(**changes):
    base = {"img_filename": "a.png", "bbox": [10, 10, 20, 20], "instruction": "click the red button",
            "data_type": "icon", "data_source": "ios"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def train_args(tmp_path, train_file):
    return ["train", "gui_grounding", f"output_dir={tmp_path / 'run'}", f"data.train={train_file}",
            f"data.eval={train_file}", f"model.cache_dir={tmp_path / 'cache'}"]


def test_unknown_config_key(tmp_path, cli_error):
    err = cli_error(["train", "gui_grounding", "grpo.lrr=1e-5", f"output_dir={tmp_path}"])
    assert "grpo.lrr" in err and "valid keys" in err


def test_unknown_data_key(tmp_path, cli_error):
    err = cli_error(["train", "gui_grounding", "data.synthetic.n_trian=5", f"output_dir={tmp_path}",
                     f"model.cache_dir={tmp_path / 'cache'}"])
    assert "data.synthetic.n_trian" in err


def test_wrong_type(tmp_path, cli_error):
    err = cli_error(["train", "gui_grounding", "grpo.steps=many", f"output_dir={tmp_path}"])
    assert "grpo.steps" in err


def test_missing_image(tmp_path, cli_error):
    path = write_v1(tmp_path / "d", [record(), record(img_filename="gone.png")])
    err = cli_error(train_args(tmp_path, path))
    assert str(path) in err and "record 1" in err and "gone.png" in err


def test_corrupt_png(tmp_path, cli_error):
    path = write_v1(tmp_path / "d", [record(img_filename="bad.png")], image=False)
    (tmp_path / "d" / "images" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    err = cli_error(train_args(tmp_path, path))
    assert "bad.png" in err and "record 0" in err


def test_record_missing_a_field(tmp_path, cli_error):
    path = write_v1(tmp_path / "d", [record(), record(), record(bbox=None)])
    err = cli_error(train_args(tmp_path, path))
    assert err.endswith(f"{path}: record 2: missing field 'bbox'")


def test_malformed_prediction_line(tmp_path, cli_error):
    path = write_v1(tmp_path / "d", [record()])
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id": 0, "output": "(15, 15)"}\n{"id": 1, "outp\n')
    err = cli_error(["eval", "screenspot", "--data", str(path), "--predictions", str(preds)])
    assert f"{preds}:2: invalid JSON" in err


def test_fresh_run_into_an_earlier_run_is_refused(tmp_path, cli_error):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    err = cli_error(["train", "gui_grounding", f"output_dir={tmp_path / 'run'}"])
    assert "already holds a run" in err and "resume=true" in err and "overwrite=true" in err
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_overwrite_deletes_only_the_runs_files(tmp_path):
    from mmrl.store import claim_run_dir

    root = tmp_path / "run"
    (root / "checkpoints" / "step-000001").mkdir(parents=True)
    (root / "metrics.jsonl").write_text("{}\n")
    (root / "notes.txt").write_text("mine")
    claim_run_dir(root, resume=True, overwrite=False)  # resuming keeps everything
    assert (root / "metrics.jsonl").exists()
    claim_run_dir(root, resume=False, overwrite=True)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]


def test_demo_on_a_missing_run_directory(tmp_path, cli_error):
    err = cli_error(["demo", str(tmp_path / "nope")])
    assert err == f"mmrl: error: run directory not found: {tmp_path / 'nope'}"


def test_overrides_may_follow_options():
    """``mmrl train TASK --config C key=value``: argparse ends the positional overrides at ``--config``; the ones
    after it are still overrides, and an unknown option is still an error."""
    from mmrl.cli import parse_args

    args = parse_args(["train", "gui_grounding", "grpo.lr=1", "--config", "c.yaml", "grpo.mu=2", "seed=3"])
    assert args.config == "c.yaml" and args.overrides == ["grpo.lr=1", "grpo.mu=2", "seed=3"]
    with pytest.raises(SystemExit):
        parse_args(["train", "gui_grounding", "--config", "c.yaml", "--bogus"])
