"""CAD rewards: the pure math against hand-computed values, then (with CadQuery) script collection and exact
OCC measurements of solids whose IoU is known in closed form."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from rewards.cad import (
    chamfer_distance,
    chamfer_score,
    collect_solid,
    executability,
    extract_code,
    iou_score,
    measure_solid,
    sample_surface,
    script_globals,
    unit_cube_transform,
    volume_iou,
)


def test_import_is_cheap_and_pure():
    code = "import sys, rewards.cad; print(sorted(m for m in ('cadquery', 'OCP', 'mmrl', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- extract_code -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Here:\n```python\nresult = 1\n```\nDone.", "result = 1"),
        ("```\nresult = 2\n```", "result = 2"),
        ("```py\na = 1\nb = 2\n```\n```python\nc = 3\n```", "a = 1\nb = 2"),  # the first block
        ("<think>a box, then a hole</think>\n```python\nresult = 3\n```", "result = 3"),
        ("<think>draft:\n```python\nresult = 0\n```\n</think>\n```python\nresult = 4\n```", "result = 4"),
        ("```python\nresult = 5\nshow_object(result)", "result = 5\nshow_object(result)"),  # unclosed fence
        ("text ```python\nx = 1``` more", "x = 1"),
        ("```python\n```", ""),
        ("no code at all", None),
        ("<think>```python\nresult = 0\n```</think> and no code after thinking", None),
        ("inline `code` only", None),
        ("", None),
        (None, None),
        (b"```python\nresult = 1\n```", None),
        (42, None),
    ],
)
def test_extract_code(text, expected):
    assert extract_code(text) == expected


def test_extract_code_never_raises_on_odd_text():
    for text in ["```", "``````", "`" * 7, "```\x00\n\ud800```", "</think>" * 3, "```python" + "\n" * 10_000]:
        assert extract_code(text) is None or isinstance(extract_code(text), str)


# --- pure geometry ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "intersection, union, expected",
    [(1.0, 3.0, 1 / 3), (0.0, 5.0, 0.0), (2.0, 2.0, 1.0), (1.0, 0.0, 0.0), (1.0, -1.0, 0.0),
     (3.0, 2.0, 1.0), (-1.0, 2.0, 0.0), (math.nan, 1.0, 0.0), (1.0, math.nan, 0.0), (math.inf, 1.0, 0.0)],
)
def test_volume_iou(intersection, union, expected):
    assert volume_iou(intersection, union) == pytest.approx(expected, abs=1e-12)


def test_unit_cube_transform_centres_and_scales_the_longest_side_to_one():
    offset, scale = unit_cube_transform([-5, -5, -5, 5, 5, 5])
    assert scale == pytest.approx(0.1) and offset == pytest.approx([5, 5, 5])
    bbox = np.array([[2.0, -1.0, 10.0], [6.0, 1.0, 11.0]])  # sides 4, 2, 1
    offset, scale = unit_cube_transform(bbox.ravel())
    low, high = (bbox + offset) * scale
    assert low == pytest.approx([0.0, 0.25, 0.375]) and high == pytest.approx([1.0, 0.75, 0.625])
    assert (low + high) / 2 == pytest.approx([0.5, 0.5, 0.5])


def test_unit_cube_transform_of_a_degenerate_box_only_centres_it():
    offset, scale = unit_cube_transform([3, 3, 3, 3, 3, 3])
    assert scale == 1.0 and offset == pytest.approx([-2.5, -2.5, -2.5])


def test_chamfer_distance_by_hand():
    a, b = np.array([[0.0, 0, 0]]), np.array([[1.0, 0, 0], [3.0, 0, 0]])
    assert chamfer_distance(a, b) == pytest.approx(1 + (1 + 9) / 2)  # a->b: 1²; b->a: (1² + 3²) / 2
    assert chamfer_distance(b, a) == pytest.approx(6.0)
    assert chamfer_distance(b, b) == 0.0


def test_sample_surface_weights_by_area_and_stays_on_the_triangles():
    vertices = np.array([[0, 0, 2], [3, 0, 2], [0, 2, 2], [10, 0, 2], [11, 0, 2], [10, 2, 2]], dtype=float)
    triangles = np.array([[0, 1, 2], [3, 4, 5]])  # areas 3 and 1
    points = sample_surface(vertices, triangles, 40_000, np.random.default_rng(0))
    assert points.shape == (40_000, 3) and np.all(points[:, 2] == 2.0)
    big = points[:, 0] < 5
    assert np.sum(big) / np.sum(~big) == pytest.approx(3.0, rel=0.05)
    x, y = points[big, 0], points[big, 1]
    assert np.all((x >= 0) & (y >= 0) & (x / 3 + y / 2 <= 1 + 1e-12))
    x, y = points[~big, 0] - 10, points[~big, 1]
    assert np.all((x >= 0) & (y >= 0) & (x + y / 2 <= 1 + 1e-12))
    again = sample_surface(vertices, triangles, 40_000, np.random.default_rng(0))
    assert np.array_equal(points, again)


def test_sample_surface_rejects_a_mesh_without_area():
    flat = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=float)
    with pytest.raises(ValueError, match="area"):
        sample_surface(flat, np.array([[0, 1, 2]]), 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="area"):
        sample_surface(flat, np.zeros((0, 3), dtype=int), 10, np.random.default_rng(0))


# --- rewards on a measurement -------------------------------------------------------------------------------


def test_rewards_on_a_measurement():
    good = {"volume": 1.0, "bbox": [0] * 6, "iou": 0.75, "chamfer": 0.01}
    assert executability(good) == 1.0 and executability({"volume": 1.0}) == 1.0 and executability(None) == 0.0
    assert iou_score(good) == 0.75 and iou_score({"volume": 1.0}) == 0.0 and iou_score(None) == 0.0
    assert chamfer_score(good) == pytest.approx(math.exp(-1)) and chamfer_score(good, scale=0.02) == pytest.approx(
        math.exp(-0.5)
    )
    assert chamfer_score({"chamfer": 0.0}) == 1.0 and chamfer_score({"volume": 1.0}) == 0.0
    assert chamfer_score(None) == 0.0


# 10**400: JSON allows any number of digits, and the int overflowed float() (OverflowError; found by fuzzing,
# tests/test_fuzz_rewards.py)
@pytest.mark.parametrize("bad", ["0.5", None, True, math.nan, math.inf, [0.5], {"x": 1},
                                 pytest.param(10**400, id="int-1e400"), pytest.param(-10**400, id="int--1e400")])
def test_rewards_treat_untrusted_values_as_missing(bad):
    assert iou_score({"iou": bad}) == 0.0 and chamfer_score({"chamfer": bad}) == 0.0


def test_rewards_clip_out_of_range_values():
    assert iou_score({"iou": 1.5}) == 1.0 and iou_score({"iou": -0.5}) == 0.0
    assert chamfer_score({"chamfer": -1.0}) == 1.0


def test_show_object_records_into_its_own_globals():
    namespace = script_globals()
    assert namespace["__name__"] == "__main__"
    exec("show_object(1)\nshow_object(2, name='part', options={'color': 'red'})", namespace)
    assert namespace["__shown__"] == [1, 2]
    assert "__shown__" not in script_globals()  # a fresh dict per script


# --- with CadQuery (OCC) ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cq():
    return pytest.importorskip("cadquery", reason="cadquery (OCC) is not installed: CAD geometry tests skipped")


def run_script(code):
    namespace = script_globals()
    exec("import cadquery as cq\n" + code, namespace)
    return collect_solid(namespace)


@pytest.fixture(scope="module")
def solids(cq):
    """BREP bytes of the test solids, built once."""
    scripts = {
        "cube": "result = cq.Workplane().box(10, 10, 10)",
        "shifted": "result = cq.Workplane().box(10, 10, 10).translate((5, 0, 0))",
        "far": "result = cq.Workplane().sphere(3).translate((100, 0, 0))",
        "cylinder": "result = cq.Workplane().cylinder(10, 5)",
        "cube20": "result = cq.Workplane().box(20, 20, 20)",
    }
    return {name: run_script(code) for name, code in scripts.items()}


def test_collect_workplane_and_round_trip_volume(cq):
    measured = measure_solid(run_script("result = cq.Workplane().box(2, 3, 4)"))
    assert measured["volume"] == pytest.approx(24.0, rel=1e-12)
    assert measured["bbox"] == pytest.approx([-1, -1.5, -2, 1, 1.5, 2])
    assert set(measured) == {"volume", "bbox"}
    json.dumps(measured)


def test_collect_last_show_object_and_result_wins(cq):
    shown = run_script("show_object(cq.Workplane().box(1, 1, 1))\nshow_object(cq.Workplane().box(2, 2, 2), name='b')")
    assert measure_solid(shown)["volume"] == pytest.approx(8.0)
    both = run_script("result = cq.Workplane().box(3, 3, 3)\nshow_object(cq.Workplane().box(1, 1, 1))")
    assert measure_solid(both)["volume"] == pytest.approx(27.0)


def test_collect_shape_and_assembly(cq):
    assert measure_solid(run_script("result = cq.Solid.makeBox(1, 2, 3)"))["volume"] == pytest.approx(6.0)
    code = (
        "result = cq.Assembly().add(cq.Workplane().box(1, 1, 1), name='a')"
        ".add(cq.Workplane().box(2, 2, 2), name='b', loc=cq.Location((10, 0, 0)))"
    )
    assert measure_solid(run_script(code))["volume"] == pytest.approx(9.0)


def test_overlapping_solids_of_one_script_are_fused(cq):
    # two 2 mm cubes 1 mm apart on x, kept as separate solids: union 8 + 8 - 4
    data = run_script("result = cq.Workplane().pushPoints([(0, 0), (1, 0)]).box(2, 2, 2, combine=False)")
    assert measure_solid(data)["volume"] == pytest.approx(12.0)


@pytest.mark.parametrize(
    "code, reason",
    [
        ("x = 1", "no `result` variable and no show_object call"),
        ("result = 42", "result is a int, not a CadQuery"),
        ("result = cq.Sketch().rect(2, 2)", "result is a Sketch, not a CadQuery"),
        ("result = cq.Workplane().rect(2, 2)", "no solid with positive volume"),
        ("result = cq.Workplane().box(1, 1, 1).faces('>Z')", "no solid with positive volume"),
        ("show_object(cq.Workplane().circle(1).val())", "no solid with positive volume"),
    ],
)
def test_collect_solid_rejects(cq, code, reason):
    with pytest.raises(ValueError, match=reason.replace("`", ".")):
        run_script(code)


def test_iou_of_a_cube_and_the_cube_moved_half_its_side(solids):
    measured = measure_solid(solids["cube"], solids["shifted"])
    assert measured["iou"] == pytest.approx(1 / 3, abs=1e-9)  # overlap 500, union 1500
    assert measured["volume"] == pytest.approx(1000.0) and measured["bbox"] == pytest.approx([-5] * 3 + [5] * 3)


def test_iou_of_the_inscribed_cylinder(solids):
    measured = measure_solid(solids["cylinder"], solids["cube"])
    assert measured["iou"] == pytest.approx(math.pi / 4, abs=1e-9)  # π·5²·10 / 10³
    assert measured["volume"] == pytest.approx(250 * math.pi, rel=1e-9)


def test_identical_and_disjoint_solids(solids):
    same = measure_solid(solids["cylinder"], solids["cylinder"])
    assert same["iou"] == pytest.approx(1.0, abs=1e-12)
    assert 0 < same["chamfer"] < 1e-3  # only the sampling noise floor of two independent 8,192-point draws
    assert chamfer_score(same) > 0.9
    apart = measure_solid(solids["cube"], solids["far"])
    assert apart["iou"] == 0.0 and apart["chamfer"] > 10 * same["chamfer"]


def test_frames(solids):
    described = measure_solid(solids["cube"], solids["cube20"], samples=256)
    assert described["iou"] == pytest.approx(1 / 8, abs=1e-9)
    normalised = measure_solid(solids["cube"], solids["cube20"], samples=256, frame="unit_cube")
    assert normalised["iou"] == pytest.approx(1.0, abs=1e-9)
    assert normalised["chamfer"] == described["chamfer"]  # the Chamfer distance is always in the unit cube
    with pytest.raises(ValueError, match="frame"):
        measure_solid(solids["cube"], frame="world")


def test_chamfer_is_seeded(solids):
    first, again, other = (measure_solid(solids["cylinder"], solids["cube"], samples=512, seed=s) for s in (1, 1, 2))
    assert first["chamfer"] == again["chamfer"] != other["chamfer"]


def test_mesh_output(solids):
    measured = measure_solid(solids["cylinder"], solids["cube"], samples=64, mesh=True)
    json.dumps(measured)
    for key in ("mesh", "reference_mesh"):
        vertices, triangles = np.array(measured[key]["vertices"]), np.array(measured[key]["triangles"])
        assert vertices.shape[1] == 3 and triangles.shape[1] == 3 and len(triangles) >= 12
        assert triangles.min() >= 0 and triangles.max() < len(vertices)
    assert "reference_mesh" not in measure_solid(solids["cube"], mesh=True)


@pytest.mark.parametrize("data", [b"garbage", b"", "not bytes", None])
def test_measure_rejects_what_is_not_a_brep(cq, data):
    with pytest.raises(ValueError):
        measure_solid(data)


def test_measure_rejects_a_brep_without_a_solid(cq):
    import io

    buffer = io.BytesIO()
    cq.Workplane().rect(2, 3).extrude(1).faces(">Z").val().exportBrep(buffer)
    with pytest.raises(ValueError, match="no solid"):
        measure_solid(buffer.getvalue())
