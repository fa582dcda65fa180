"""Tests for tasks.synthetic_cad: determinism, the row format, and descriptions that rebuild the reference solid.

The volume test execs every family's reference code with CadQuery and checks the solid's volume against the
analytic volume computed from the description's numbers alone, so a description that misstates or omits a
dimension (or a hole that overlaps another or breaks the plate's edge) fails it.
"""
from __future__ import annotations

import ast
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest

import tasks.synthetic_cad as synthetic_cad
from tasks.synthetic_cad import FAMILIES, generate, make_part, write_jsonl

SIGNED = re.compile(r"-?\d+(?:\.\d+)?")
UNSIGNED = re.compile(r"\d+(?:\.\d+)?")


def _numbers(description):
    return [float(x) for x in SIGNED.findall(description)]


def _expected(family, description):
    """(volume, bounding box (xmin, ymin, zmin, xmax, ymax, zmax), points inside, points outside) from the
    description's numbers, in the per-family order the module docstring promises."""
    n = _numbers(description)
    if family == "cylinder":
        h, r = n
        return math.pi * r * r * h, (-r, -r, -h / 2, r, r, h / 2), [(0, 0, 0)], [(r + 1, 0, 0)]
    length, width, height = n[:3]
    box = (-length / 2, -width / 2, -height / 2, length / 2, width / 2, height / 2)
    volume = length * width * height
    if family == "box":
        return volume, box, [(0, 0, 0)], []
    if family == "plate_with_holes":
        d, coords = n[3], n[4:]
        assert len(coords) % 2 == 0 and 2 <= len(coords) <= 8, description
        centres = [(coords[i], coords[i + 1], 0) for i in range(0, len(coords), 2)]
        return volume - len(centres) * math.pi * (d / 2) ** 2 * height, box, [], centres
    if family == "filleted_box":
        r = n[3]
        corner = (length / 2 - r / 10, width / 2 - r / 10, 0)  # cut away by the fillet
        return volume - (4 - math.pi) * r * r * height, box, [(0, 0, 0)], [corner]
    if family == "boss":
        r, b = n[3:5]
        top = (*box[:5], height / 2 + b)
        return volume + math.pi * r * r * b, top, [(0, 0, height / 2 + b / 2)], [(r + 0.5, 0, height / 2 + b / 2)]
    if family == "shell":
        t = n[3]
        cavity = (length - 2 * t) * (width - 2 * t) * (height - t)
        return volume - cavity, box, [(length / 2 - t / 2, 0, 0)], [(0, 0, 0)]
    raise AssertionError(family)


def _exec(code):
    namespace = {}
    exec(compile(code, "<reference>", "exec"), namespace)
    return namespace["result"]


CASES = [(family, seed, 5, 40) for family in FAMILIES for seed in (0, 1, 2)]
CASES += [(family, seed, 4, 6) for family in FAMILIES for seed in (3, 4)]  # the smallest parts allowed


@pytest.mark.parametrize("family,seed,min_size,max_size", CASES)
def test_reference_code_builds_the_described_solid(family, seed, min_size, max_size):
    cq = pytest.importorskip("cadquery")
    part = make_part(family, random.Random(seed), min_size=min_size, max_size=max_size)
    volume, box, inside, outside = _expected(family, part["description"])
    result = _exec(part["code"])
    assert result.solids().size() == 1, part
    shape = result.val()
    assert shape.isValid(), part
    assert shape.Volume() == pytest.approx(volume, rel=1e-6), part
    bb = shape.BoundingBox()
    assert (bb.xmin, bb.ymin, bb.zmin, bb.xmax, bb.ymax, bb.zmax) == pytest.approx(box, abs=1e-6), part
    solid = shape.Solids()[0]
    for point in inside:
        assert solid.isInside(cq.Vector(*point)), (point, part)
    for point in outside:
        assert not solid.isInside(cq.Vector(*point)), (point, part)


def test_descriptions_state_every_number_of_the_code():
    for row in generate(300, seed=11):
        assert row["code"].startswith("import cadquery as cq\nresult = cq.Workplane(\"XY\")."), row
        stated = {float(x) for x in UNSIGNED.findall(row["description"])}
        for number in UNSIGNED.findall(row["code"]):
            assert ".0" not in number
            assert float(number) in stated, (number, row)


def test_sizes_stay_in_range():
    for row in generate(300, seed=5, min_size=8, max_size=20):
        numbers = _numbers(row["description"])
        if row["family"] == "cylinder":
            assert 8 <= numbers[0] <= 20 and 4 <= numbers[1] <= 10
        elif row["family"] == "plate_with_holes":
            assert all(8 <= v <= 20 for v in numbers[:2]) and 1 <= numbers[2] <= min(numbers[:2]) // 4
        else:
            assert all(8 <= v <= 20 for v in numbers[:3]), row


def test_short_descriptions():
    for row in generate(200, seed=3):
        words = len(row["description"].split())
        assert words < (30 if row["family"] in ("box", "cylinder") else 45), row


def test_same_seed_same_rows_and_more_rows_extend_fewer():
    rows = generate(40, seed=7)
    assert rows == generate(40, seed=7)
    assert generate(10, seed=7) == rows[:10]
    assert [r["id"] for r in rows[:2]] == ["part-7-00000", "part-7-00001"]
    assert len({r["description"] for r in rows}) > 30  # templates and sizes vary


def test_different_seeds_differ():
    a, b = generate(10, seed=1), generate(10, seed=2)
    assert [r["code"] for r in a] != [r["code"] for r in b]


def test_families_drawn_uniformly_and_restricted():
    counts = Counter(r["family"] for r in generate(1200, seed=0))
    assert set(counts) == set(FAMILIES)
    assert all(140 <= c <= 260 for c in counts.values()), counts
    assert {r["family"] for r in generate(30, seed=0, families=("box", "shell"))} == {"box", "shell"}


def test_each_family_uses_several_templates():
    for family in FAMILIES:
        rows = generate(30, seed=1, families=(family,))
        openings = {" ".join(SIGNED.sub("#", r["description"]).split()[:3]) for r in rows}
        assert len(openings) == len(synthetic_cad.TEMPLATES[family]), (family, openings)


def test_unknown_family_and_bad_sizes():
    with pytest.raises(ValueError, match="sphere.*valid.*plate_with_holes"):
        make_part("sphere", random.Random(0))
    with pytest.raises(ValueError, match="sphere"):
        generate(3, seed=0, families=("box", "sphere"))
    with pytest.raises(ValueError, match="families"):
        generate(3, seed=0, families=())
    with pytest.raises(ValueError, match="min_size"):
        generate(3, seed=0, min_size=3)
    with pytest.raises(ValueError, match="min_size"):
        make_part("box", random.Random(0), min_size=20, max_size=10)


def test_write_jsonl_round_trips(tmp_path):
    rows = generate(5, seed=2)
    path = write_jsonl(rows, tmp_path / "sub" / "parts.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows


def test_module_does_not_import_cadquery():
    tree = ast.parse(Path(synthetic_cad.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "cadquery" not in imported
