"""Seeded synthetic CAD parts: a short natural-language description and the CadQuery script that builds it.

Families (``FAMILIES``):

* ``box``: ``box(L, W, H)``, a rectangular block;
* ``cylinder``: ``cylinder(H, R)``, axis along z;
* ``plate_with_holes``: a thin ``box(L, W, T)`` drilled through in z by 1 to 4 holes of one diameter ``D``
  (``.faces(">Z").workplane().pushPoints([...]).hole(D)``);
* ``filleted_box``: ``box(L, W, H)`` with its four vertical edges rounded, ``.edges("|Z").fillet(R)``;
* ``boss``: ``box(L, W, H)`` with a cylinder of radius ``R`` and height ``B`` extruded from the centre of its
  top face (``.faces(">Z").workplane().circle(R).extrude(B)``, which CadQuery unions with the box);
* ``shell``: ``box(L, W, H)`` hollowed into an open-top tray with walls and floor ``T`` thick
  (``.faces(">Z").shell(-T)``, inward, so the outside stays ``L x W x H``).

Every part is centred on the origin (the box or cylinder it starts from; a boss sits on top of its box) with
``L`` along x, ``W`` along y and heights along z. Hole centres are ``(x, y)`` in the same frame.

Dimensions are whole millimetres. ``L``, ``W`` and ``H`` (and ``2 R`` of a cylinder, up to rounding) lie in
``[min_size, max_size]``; the features are derived so every part is a valid single solid: plate thickness
``T <= min(L, W) // 4``; holes keep at least ``MARGIN`` mm of material to the plate's edges and to each other;
fillet radius and boss radius ``<= (min(L, W) - 1) // 2``, so strictly under half the smaller side; shell
thickness ``<= (min(L, W, H) - 1) // 3``, strictly under a third of the smallest side; boss height in
``[min_size // 2, max_size // 2]`` (at least 1).

A description states every dimension in mm, and its numbers always appear in one order per family (holes: their
count is written as a word, so only coordinates are digits):

* ``box``, ``filleted_box``, ``shell``: ``L W H`` then ``R`` / ``T``; ``boss``: ``L W H R B``;
* ``cylinder``: ``H R``; ``plate_with_holes``: ``L W T D`` then ``x y`` of each hole.

The reference code is canonical CadQuery: it starts with ``import cadquery as cq`` and leaves the solid in
``result``. This module only writes text; it never imports cadquery. Row ``i`` of ``generate`` depends only on
``(seed, i)`` and the settings, so the same seed regenerates the same rows and more rows extend fewer.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

FAMILIES = ("box", "cylinder", "plate_with_holes", "filleted_box", "boss", "shell")
MARGIN = 1
"""Millimetres of material a hole keeps to the plate's edges and to the next hole."""
MAX_HOLES = 4
MAX_TRIES = 100
"""Rejection-sampling attempts per hole before the plate keeps fewer holes."""
COUNT_WORDS = ("no", "one", "two", "three", "four")
HEADER = "import cadquery as cq\n"

TEMPLATES: dict[str, tuple[str, ...]] = {
    "box": (
        "A rectangular box {L} mm long in x, {W} mm wide in y and {H} mm tall in z, centred on the origin.",
        "A {L} x {W} x {H} mm block (x by y by z), centred at the origin.",
        "Make a box centred on the origin: {L} mm along x, {W} mm along y and {H} mm along z.",
    ),
    "cylinder": (
        "A cylinder {H} mm tall with a radius of {R} mm, its axis along z, centred on the origin.",
        "A round rod of height {H} mm and radius {R} mm, axis along z, centred at the origin.",
        "Make a cylinder centred on the origin with its axis along z: height {H} mm, radius {R} mm.",
    ),
    "plate_with_holes": (
        "A flat plate {L} mm in x by {W} mm in y, {T} mm thick in z, centred on the origin, with {count} "
        "through-{holes} of diameter {D} mm at (x, y) = {points}.",
        "A {L} x {W} mm plate, {T} mm thick (z), centred at the origin; {count} {D} mm {holes} drilled through "
        "it in z, centred at {points}.",
        "Make a plate centred on the origin, {L} mm along x, {W} mm along y and {T} mm thick in z, with {count} "
        "{holes} of {D} mm diameter going through it at (x, y) = {points}.",
    ),
    "filleted_box": (
        "A box {L} mm long in x, {W} mm wide in y and {H} mm tall in z, centred on the origin, with its four "
        "vertical edges rounded to a {R} mm radius.",
        "A {L} x {W} x {H} mm block (x by y by z) centred at the origin, its vertical edges filleted with "
        "radius {R} mm.",
        "Make a box centred on the origin, {L} mm along x, {W} mm along y and {H} mm along z, and fillet the "
        "four edges parallel to z with a {R} mm radius.",
    ),
    "boss": (
        "A box {L} mm long in x, {W} mm wide in y and {H} mm tall in z, centred on the origin, with a "
        "cylindrical boss of radius {R} mm rising {B} mm from the centre of its top face.",
        "A {L} x {W} x {H} mm block (x by y by z) centred at the origin, topped at its centre by a round boss "
        "{R} mm in radius and {B} mm high.",
        "Make a box centred on the origin, {L} mm along x, {W} mm along y and {H} mm along z, then extrude a "
        "circle of radius {R} mm up by {B} mm from the middle of the top face.",
    ),
    "shell": (
        "An open-top box {L} mm long in x, {W} mm wide in y and {H} mm tall in z, centred on the origin, "
        "hollowed out with walls and floor {T} mm thick.",
        "A {L} x {W} x {H} mm tray (x by y by z) centred at the origin, open at the top, with {T} mm thick "
        "walls and floor.",
        "Make a box centred on the origin, {L} mm along x, {W} mm along y and {H} mm along z, and shell it "
        "inward to {T} mm walls, removing the top face.",
    ),
}
"""Description templates per family; every one names the same numbers in the same order (module docstring)."""


def fmt(value: float) -> str:
    """A number as the code and descriptions write it: integers without ``.0``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown CAD part family {family!r}; valid: {list(FAMILIES)}")


def check_settings(min_size: int, max_size: int, families: tuple[str, ...] = FAMILIES) -> None:
    """``ValueError`` naming the first bad setting."""
    if not families:
        raise ValueError(f"families: empty; valid: {list(FAMILIES)}")
    for family in families:
        _check_family(family)
    if not 4 <= min_size <= max_size:
        raise ValueError(f"need 4 <= min_size <= max_size (mm), got {min_size}, {max_size}")


def _sides(rng: random.Random, min_size: int, max_size: int, n: int = 3) -> list[int]:
    return [rng.randint(min_size, max_size) for _ in range(n)]


def _point_list(points: list[tuple[int, int]]) -> str:
    """``(-8, 4), (8, -4) and (0, 0)``."""
    parts = [f"({fmt(x)}, {fmt(y)})" for x, y in points]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _holes(rng: random.Random, length: int, width: int, diameter: int, count: int) -> list[tuple[int, int]]:
    """Up to ``count`` integer hole centres, each ``MARGIN`` mm clear of the edges and of the other holes."""
    x_max = int((length - diameter) / 2 - MARGIN)
    y_max = int((width - diameter) / 2 - MARGIN)
    points: list[tuple[int, int]] = []
    for _ in range(count):
        for _ in range(MAX_TRIES):
            x, y = rng.randint(-x_max, x_max), rng.randint(-y_max, y_max)
            if all((x - px) ** 2 + (y - py) ** 2 >= (diameter + MARGIN) ** 2 for px, py in points):
                points.append((x, y))
                break
    return points


def make_part(family: str, rng: random.Random, *, min_size: int = 5, max_size: int = 40) -> dict:
    """One part of ``family`` drawn from ``rng``: ``{"description": str, "code": str}``. ``ValueError`` for an
    unknown family or bad sizes."""
    check_settings(min_size, max_size, (family,))
    wp = 'cq.Workplane("XY")'
    if family == "cylinder":
        height = rng.randint(min_size, max_size)
        radius = rng.randint(max(1, min_size // 2), max(1, max_size // 2))
        values = {"H": height, "R": radius}
        code = f"{wp}.cylinder({height}, {radius})"
    elif family == "plate_with_holes":
        length, width = _sides(rng, min_size, max_size, 2)
        thick = rng.randint(max(1, min_size // 4), max(1, min(length, width) // 4))
        diameter = rng.randint(1, max(1, (min(length, width) - 2 * MARGIN) // 3))
        points = _holes(rng, length, width, diameter, rng.randint(1, MAX_HOLES))
        values = {"L": length, "W": width, "T": thick, "D": diameter, "points": _point_list(points),
                  "count": COUNT_WORDS[len(points)], "holes": "hole" if len(points) == 1 else "holes"}
        pts = ", ".join(f"({fmt(x)}, {fmt(y)})" for x, y in points)
        code = f'{wp}.box({length}, {width}, {thick}).faces(">Z").workplane().pushPoints([{pts}]).hole({diameter})'
    else:
        length, width, height = _sides(rng, min_size, max_size)
        values = {"L": length, "W": width, "H": height}
        code = f"{wp}.box({length}, {width}, {height})"
        if family == "filleted_box":
            values["R"] = rng.randint(1, max(1, (min(length, width) - 1) // 2))
            code += f'.edges("|Z").fillet({values["R"]})'
        elif family == "boss":
            values["R"] = rng.randint(1, max(1, (min(length, width) - 1) // 2))
            values["B"] = rng.randint(max(1, min_size // 2), max(1, max_size // 2))
            code += f'.faces(">Z").workplane().circle({values["R"]}).extrude({values["B"]})'
        elif family == "shell":
            values["T"] = rng.randint(1, max(1, (min(length, width, height) - 1) // 3))
            code += f'.faces(">Z").shell(-{values["T"]})'
    template = TEMPLATES[family][rng.randrange(len(TEMPLATES[family]))]
    text = {k: fmt(v) if isinstance(v, int) else v for k, v in values.items()}
    return {"description": template.format(**text), "code": f"{HEADER}result = {code}"}


def generate(n: int, seed: int, families: tuple[str, ...] = FAMILIES, min_size: int = 5,
             max_size: int = 40) -> list[dict]:
    """``n`` rows ``{"id", "family", "description", "code"}``, families drawn uniformly from ``families``.
    ``ValueError`` for unknown families or bad sizes."""
    families = tuple(families)
    check_settings(min_size, max_size, families)
    rows = []
    for i in range(n):
        rng = random.Random(f"synthetic-cad-{seed}-{i}")
        family = families[rng.randrange(len(families))]
        part = make_part(family, rng, min_size=min_size, max_size=max_size)
        rows.append({"id": f"part-{seed}-{i:05d}", "family": family, **part})
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write ``rows`` to ``path``, one JSON object a line (UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path
