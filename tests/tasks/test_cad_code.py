"""The cad_code task: its rewards run real scripts in the sandbox (CadQuery workers under bubblewrap), hostile ones
score 0 with a reason while the rest of the batch is scored, and its data and evaluation formats."""
from __future__ import annotations

import json
import math

import pytest

from mmrl.cli import main
from mmrl.errors import ConfigError, DataError
from mmrl.eval.cad import load_cad
from mmrl.plugins import TASKS
from mmrl.sandbox import available
from mmrl.task import opened
from mmrl.types import LoadContext

pytest.importorskip("cadquery")
pytestmark = pytest.mark.skipif(not available(), reason="bubblewrap is not installed (.ci/install-sandbox)")

CUBE = "import cadquery as cq\nresult = cq.Workplane('XY').box(10, 10, 10)"
CTX = LoadContext(3136, 3136, "/nonexistent")


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


@pytest.fixture(scope="module")
def cad_task():
    with opened("cad_code", {"workers": 2, "samples": 256, "limits": {"timeout_s": 3.0, "cpu_s": 2}}) as (task, cfg):
        yield task, cfg


def samples_for(task, cfg, codes: list[str]):
    from mmrl.eval.cad import CadRecord

    return task.samples_from_records([CadRecord(str(i), "a part", code) for i, code in enumerate(codes)], cfg, CTX)


def test_rewards_score_geometry_exactly_and_hostile_scripts_zero(cad_task):
    task, cfg = cad_task
    outputs = [
        fenced(CUBE),                                                                  # the reference itself
        fenced("import cadquery as cq\nresult = cq.Workplane('XY').box(10, 10, 10).translate((5, 0, 0))"),  # 1/3
        fenced("import cadquery as cq\nshow_object(cq.Workplane('XY').cylinder(10, 5))"),  # inside the cube: pi/4
        "the cube is 10 mm",                                                           # no code block
        fenced("result = box(("),                                                      # syntax error
        fenced("import os\nwhile True:\n    os.fork()"),                               # fork bomb
        fenced("import time\ntime.sleep(60)"),                                         # past the timeout
        fenced("import cadquery as cq\nresult = cq.Workplane('XY').rect(3, 3)"),       # no solid
    ]
    samples = samples_for(task, cfg, [CUBE] * len(outputs))
    fields = {"code": [s.fields["code"] for s in samples], "description": [s.fields["description"] for s in samples]}
    rewards = task.reward_functions(cfg)
    iou = rewards["iou"](outputs, **fields)
    assert iou[0] == pytest.approx(1.0) and iou[1] == pytest.approx(1 / 3) and iou[2] == pytest.approx(math.pi / 4)
    assert iou[3:] == [0.0] * 5
    assert rewards["executable"](outputs, **fields) == [1.0, 1.0, 1.0, 0, 0, 0, 0, 0]
    chamfer = rewards["chamfer"](outputs, **fields)
    # unit-cube frame: the moved cube normalises onto the cube (only sampling noise), the cylinder does not
    assert min(chamfer[0], chamfer[1]) > chamfer[2] > 0 and chamfer[3:] == [0.0] * 5
    reasons = [row["reason"] for row in task.diagnose(outputs, samples)]
    assert reasons[:3] == ["", "", ""]
    assert "no ```python code block" in reasons[3]
    assert "SyntaxError" in reasons[4] and "process limit" in reasons[5] and "timed out" in reasons[6]
    assert "no solid" in reasons[7]


def test_a_reference_that_builds_nothing_scores_zero_with_its_reason(cad_task):
    task, cfg = cad_task
    samples = samples_for(task, cfg, ["raise RuntimeError('broken reference')"])
    with pytest.warns(UserWarning, match="reference script builds no solid"):
        rows = task.diagnose([fenced(CUBE)], samples)
    assert rows[0]["iou"] == 0 and "reference script failed" in rows[0]["reason"]
    assert "broken reference" in rows[0]["reason"]


def test_silhouette_judge_rewards_a_matching_shape_more(tmp_path):
    data = {"workers": 1, "samples": 64, "judge": "silhouette"}
    with opened("cad_code", data) as (task, cfg):
        outputs = [fenced(CUBE), fenced("import cadquery as cq\nresult = cq.Workplane('XY').box(10, 10, 3)"), "none"]
        judge = task.reward_functions(cfg)["judge"](outputs, code=[CUBE] * 3, description=["a cube"] * 3)
    assert judge[0] == pytest.approx(1.0) and 0.2 < judge[1] < 0.9 and judge[2] == 0.0


def test_an_unknown_judge_or_frame_or_sandbox_is_a_config_error():
    with pytest.raises(ConfigError, match="silhouette"):
        with opened("cad_code", {"judge": "gpt"}):
            pass
    with pytest.raises(ConfigError, match="data.frame"):
        with opened("cad_code", {"frame": "world"}):
            pass
    with pytest.raises(ConfigError, match="unsafe_local"):
        with opened("cad_code", {"sandbox": "docker"}):
            pass


def test_synthetic_samples_prompt_and_answer(tmp_path):
    ctx = LoadContext(3136, 3136, str(tmp_path))
    with opened("cad_code", {"synthetic": {"n_train": 12, "n_eval": 4}, "think": True}) as (task, cfg):
        train = task.load("train", cfg, ctx)
        held_out = task.load("eval", cfg, ctx)
    assert len(train) == 12 and len(held_out) == 4 and {s.id for s in train}.isdisjoint(s.id for s in held_out)
    assert "<think>" in train[0].prompt and train[0].fields["description"] in train[0].prompt
    assert train[0].answer.startswith("```python\nimport cadquery as cq\n") and train[0].answer.endswith("```")


@pytest.mark.parametrize("line, message", [
    ('{"id": 1, "description": "x"}', "missing field 'code'"),
    ("{not json", "invalid JSON"),
    ('{"id": true, "description": "x", "code": "y"}', "field 'id'"),
    ('{"id": 2, "description": "x", "code": "y", "images": ["gone.png"]}', "image not found"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "parts.jsonl"
    path.write_text('{"id": 0, "description": "ok", "code": "y"}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"parts.jsonl:2: .*{message}"):
        load_cad(path)


def test_duplicate_ids_are_refused(tmp_path):
    path = tmp_path / "parts.jsonl"
    path.write_text('{"id": "a", "description": "x", "code": "y"}\n{"id": "a", "description": "x", "code": "y"}\n')
    with pytest.raises(DataError, match="parts.jsonl:2: duplicate id 'a'"):
        load_cad(path)


def test_eval_cad_on_predictions_writes_metrics_and_per_sample_rows(tmp_path, capsys):
    data = tmp_path / "parts.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "description": "a 10 mm cube", "code": CUBE}) + "\n"
                            for i in range(4)))
    preds = tmp_path / "preds.jsonl"
    rows = [{"id": "p0", "output": fenced(CUBE)},
            {"id": "p1", "output": fenced("import cadquery as cq\nresult = cq.Workplane('XY').box(10, 10, 5)")},
            {"id": "p2", "output": fenced("import os\nos.system('touch /tmp/mmrl-eval-pwned')")},
            {"id": "zz", "output": "unmatched"}]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, per = tmp_path / "metrics.json", tmp_path / "rows.jsonl"
    main(["eval", "cad", "--data", str(data), "--predictions", str(preds), "--output", str(out), "--per-sample",
          str(per), "--workers", "1"])
    result = json.loads(out.read_text())
    assert result["executable"] == pytest.approx(0.5) and result["iou"] == pytest.approx((1 + 0.5) / 4)
    assert result["n"] == 4 and result["missing"] == 1 and result["unmatched"] == 1
    assert result["chamfer_median"] is not None and result["chamfer_mean"] >= result["chamfer_median"] * 0.5
    per_rows = [json.loads(x) for x in per.read_text().splitlines()]
    assert [r["id"] for r in per_rows] == ["p0", "p1", "p2", "p3"]
    assert per_rows[0]["iou"] == pytest.approx(1.0) and per_rows[2]["executable"] == 0
    assert "no result" in per_rows[2]["reason"] and per_rows[3]["chamfer"] is None
    assert "iou" in capsys.readouterr().out


def test_the_task_is_registered_with_its_renderer_and_benchmark():
    assert TASKS.capability("cad_code", "benchmarks") == ("cad",)
    assert TASKS.capability("cad_code", "renderer") == "cad"
