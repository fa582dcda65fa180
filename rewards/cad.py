"""CAD code-generation rewards: run a model's CadQuery script, collect its solid, measure it against a reference.

The rewards follow CAD-RL ("From Intent to Execution"): *executability* (the script runs and yields a solid),
*geometric accuracy* (volumetric IoU and Chamfer distance against the reference solid) and an *external
evaluation* (a judge model, not in this module). The paper does not publish its reward formulas; the shaping
here (``chamfer_score``) is mmrl's own.

The metrics follow the CAD-Recode / cadrille evaluation protocol (``evaluate.py`` of github.com/col14m/cadrille):

* normalisation (``unit_cube_transform``): the prediction's mesh is translated so that its bounding-box centre
  is at the origin, scaled by ``1 / longest side`` (only when that side is > 1e-7), then translated by
  ``(0.5, 0.5, 0.5)``: the solid lies in ``[0, 1]^3``, centred, its longest side of length 1. (cadrille's
  reference meshes are stored already "normalized to the unit cube"; here both solids go through the same
  transform.) cadrille reads the bounds off the tessellation; here they come from OCC's optimal bounding box;
  the two differ by at most the tessellation tolerance;
* Chamfer distance: 8,192 area-weighted surface samples per mesh, ``cKDTree`` nearest neighbours, the mean
  SQUARED distance in each direction, the two directions' means SUMMED (not averaged); the evaluator reports it
  ×10³ (applied by the caller, not here);
* IoU: volumetric. cadrille intersects trimesh meshes component by component; here the volumes are exact, from
  OCC booleans: ``V(A∩B)`` by ``Shape.intersect`` and ``V(A∪B) = V(A) + V(B) − V(A∩B)``, each solid first fused
  into one (so overlapping solids of one script are not counted twice). For text-to-CAD, where the description
  states absolute dimensions, IoU is taken in the description's own frame by default (``frame="description"``,
  no normalisation); ``frame="unit_cube"`` normalises both solids first, as cadrille does.

Process split: ``script_globals`` and ``collect_solid`` run in a sandboxed child right after the untrusted
script; ``measure_solid`` in a fresh sandboxed child; the rewards (``executability``, ``iou_score``,
``chamfer_score``) in the parent, on the JSON measurement (untrusted data) or ``None`` when the script failed.
CadQuery is imported lazily, only by the functions that need OCC, so importing this module stays cheap.
"""
from __future__ import annotations

import io
import math
import re
from typing import Any

import numpy as np

FRAMES = ("description", "unit_cube")
"""IoU frames: the solids as built, or each normalised into the unit cube (cadrille)."""
SAMPLE_TOLERANCE = 1e-3
"""Linear tessellation tolerance for the Chamfer samples, as a fraction of the solid's longest side."""
ANGULAR_TOLERANCE = 0.1
"""Angular tessellation tolerance in radians (cadrille's ``tessellate(0.001, 0.1)``)."""
_MIN_EXTENT = 1e-7  # cadrille scales only when the longest side exceeds this

_FENCE_RE = re.compile(r"```[^\n`]*(?:\n|\Z)(.*?)(?:```|\Z)", re.DOTALL)
_THINK_END = "</think>"


def extract_code(completion: str) -> str | None:
    """The model's script: the content of the first fenced code block, else ``None``. Never raises.

    A fence is three backticks with an optional info string (```` ```python ````) ending its line; the block runs
    to the next three backticks, or to the end of the text when the last fence is unclosed. When the text holds
    a ``</think>``, only what follows the last one is searched (code sketched while thinking is not the answer).
    A non-``str`` gives ``None``.
    """
    if not isinstance(completion, str):
        return None
    text = completion.rpartition(_THINK_END)[2]
    match = _FENCE_RE.search(text)
    return None if match is None else match.group(1).rstrip()


def script_globals() -> dict:
    """The globals a script runs with (besides builtins), CQ-editor / cq-cli convention.

    ``{"__name__": "__main__", "show_object": fn}``; ``show_object(obj, *args, **kwargs)`` appends ``obj`` to the
    list under ``"__shown__"`` of this same dict (created on the first call), where ``collect_solid`` finds it.
    """
    namespace: dict[str, Any] = {"__name__": "__main__"}

    def show_object(obj: Any, *args: Any, **kwargs: Any) -> None:
        namespace.setdefault("__shown__", []).append(obj)

    namespace["show_object"] = show_object
    return namespace


def collect_solid(namespace: dict) -> bytes:
    """The script's solid as BREP bytes: ``namespace["result"]`` if present, else the last ``show_object`` argument.

    Accepted: a ``cq.Workplane`` (the solids of the shapes on its stack), a ``cq.Shape`` (its solids), a
    ``cq.Assembly`` (the solids of ``toCompound()``); several solids become one compound. Raises ``ValueError``
    with a short reason: no result, a non-CadQuery result, or no solid with positive total volume.
    """
    import cadquery as cq

    if "result" in namespace:
        obj = namespace["result"]
    else:
        shown = namespace.get("__shown__")
        if not isinstance(shown, list) or not shown:
            raise ValueError("no `result` variable and no show_object call")
        obj = shown[-1]
    if isinstance(obj, cq.Workplane):
        shapes = [v for v in obj.vals() if isinstance(v, cq.Shape)]
    elif isinstance(obj, cq.Shape):
        shapes = [obj]
    elif isinstance(obj, cq.Assembly):
        shapes = [obj.toCompound()]
    else:
        raise ValueError(f"result is a {type(obj).__name__}, not a CadQuery Workplane, Shape or Assembly")
    solids = [solid for shape in shapes for solid in shape.Solids()]
    shape = solids[0] if len(solids) == 1 else cq.Compound.makeCompound(solids)
    if not shape.Volume() > 0:
        raise ValueError("no solid with positive volume")
    buffer = io.BytesIO()
    shape.exportBrep(buffer)
    return buffer.getvalue()


def measure_solid(
    pred: bytes,
    reference: bytes | None = None,
    *,
    samples: int = 8192,
    seed: int = 0,
    frame: str = "description",
    mesh: bool = False,
    tolerance: float = 0.1,
) -> dict:
    """Measure the predicted solid (BREP bytes), and compare it with ``reference`` when given. JSON-able result.

    Always ``"volume"`` (``V(pred)``) and ``"bbox"`` (``[xmin, ymin, zmin, xmax, ymax, zmax]``), as built.
    With a reference, ``"iou" = V(A∩B) / V(A∪B)`` in ``frame`` (see the module docstring) and
    ``"chamfer" = mean_a min_b |a−b|² + mean_b min_a |a−b|²`` over ``samples`` surface points per solid, both
    normalised into the unit cube, drawn by ``np.random.default_rng(seed)`` (pred first, then reference); with
    ``samples=0`` no ``"chamfer"`` (tessellating two solids finely is most of a measurement's time).
    With ``mesh=True``, ``"mesh"`` (and ``"reference_mesh"``) = ``{"vertices": [[x, y, z], ...], "triangles":
    [[i, j, k], ...]}`` tessellated with linear ``tolerance`` as built. Raises ``ValueError`` for an unknown
    ``frame``, bytes that are not a BREP, or a shape without a solid of positive volume; an OCC failure on a
    readable but broken shape propagates as it is. OCC's BREP reader can loop forever on some truncated input
    and prints its complaints to stdout: run this in a child with a timeout and a separate result channel.
    """
    if frame not in FRAMES:
        raise ValueError(f"unknown frame {frame!r}; expected one of {FRAMES}")
    shape = _read_solid(pred)
    out: dict[str, Any] = {"volume": shape.Volume(), "bbox": _bbox(shape)}
    if mesh:
        out["mesh"] = _mesh_json(shape, tolerance)
    if reference is None:
        return out
    ref = _read_solid(reference)
    unit_shape, unit_ref = _to_unit_cube(shape), _to_unit_cube(ref)
    a, b = (unit_shape, unit_ref) if frame == "unit_cube" else (shape, ref)
    intersection = a.intersect(b).Volume()
    out["iou"] = volume_iou(intersection, a.Volume() + b.Volume() - intersection)
    if samples > 0:
        rng = np.random.default_rng(seed)
        points = [sample_surface(*_triangulation(s, SAMPLE_TOLERANCE), samples, rng) for s in (unit_shape, unit_ref)]
        out["chamfer"] = chamfer_distance(*points)
    if mesh:
        out["reference_mesh"] = _mesh_json(ref, tolerance)
    return out


def _read_solid(data: bytes | str):
    """The solids of BREP ``data`` (bytes, or the text a JSON message carries) fused into one shape; ``ValueError``
    unless their volume is positive."""
    import cadquery as cq

    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"expected BREP bytes, got {type(data).__name__}")
    try:
        shape = cq.Shape.importBrep(io.BytesIO(bytes(data)))
    except Exception as exc:  # OCC reports unreadable input in several ways
        raise ValueError("not a BREP shape") from exc
    solids = shape.Solids()
    if not solids:
        raise ValueError("no solid in the shape")
    fused = solids[0] if len(solids) == 1 else solids[0].fuse(*solids[1:])
    if not fused.Volume() > 0:
        raise ValueError("no solid with positive volume")
    return fused


def _bbox(shape) -> list[float]:
    """``[xmin, ymin, zmin, xmax, ymax, zmax]`` of OCC's optimal bounding box."""
    box = shape.BoundingBox()
    return [box.xmin, box.ymin, box.zmin, box.xmax, box.ymax, box.zmax]


def _to_unit_cube(shape):
    """``shape`` moved and scaled by ``unit_cube_transform`` of its bounding box."""
    import cadquery as cq

    offset, scale = unit_cube_transform(_bbox(shape))
    return shape.translate(cq.Vector(*offset.tolist())).scale(scale)


def _triangulation(shape, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices (V, 3) float, triangles (T, 3) int)`` of ``shape.tessellate(tolerance)``."""
    vertices, triangles = shape.tessellate(tolerance, ANGULAR_TOLERANCE)
    return (
        np.array([v.toTuple() for v in vertices], dtype=float).reshape(-1, 3),
        np.array(triangles, dtype=np.int64).reshape(-1, 3),
    )


def _mesh_json(shape, tolerance: float) -> dict:
    """``{"vertices": [[x, y, z], ...], "triangles": [[i, j, k], ...]}`` of ``shape`` at ``tolerance``."""
    vertices, triangles = _triangulation(shape, tolerance)
    return {"vertices": vertices.tolist(), "triangles": triangles.tolist()}


def volume_iou(intersection: float, union: float) -> float:
    """``intersection / union`` clipped to ``[0, 1]``; 0 when ``union <= 0`` or the ratio is not finite."""
    if not union > 0:
        return 0.0
    ratio = intersection / union
    return min(max(ratio, 0.0), 1.0) if math.isfinite(ratio) else 0.0


def unit_cube_transform(bbox) -> tuple[np.ndarray, float]:
    """``(offset, scale)`` such that ``(p + offset) * scale`` maps the box into the unit cube, as cadrille does.

    With centre ``c`` and longest side ``e`` of ``bbox = [xmin, ymin, zmin, xmax, ymax, zmax]``, cadrille maps
    ``p -> (p − c) / e + 0.5``, so ``scale = 1 / e`` and ``offset = 0.5·e − c``; when ``e <= 1e-7`` it does not
    scale: ``scale = 1``, ``offset = 0.5 − c``.
    """
    low, high = np.asarray(bbox, dtype=float).reshape(2, 3)
    extent = float(np.max(high - low))
    if not extent > _MIN_EXTENT:
        extent = 1.0
    return 0.5 * extent - (low + high) / 2.0, 1.0 / extent


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points, (n, 3), uniform on the mesh surface: a triangle with probability ``area / total area``, then
    ``p = A + u·(B − A) + v·(C − A)`` with ``u, v ~ U(0, 1)`` reflected to ``1 − u, 1 − v`` when ``u + v > 1``.
    ``ValueError`` when the total area is not positive.
    """
    corners = np.asarray(vertices, dtype=float)[np.asarray(triangles, dtype=np.int64)]
    origin, edge1, edge2 = corners[:, 0], corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    areas = 0.5 * np.linalg.norm(np.cross(edge1, edge2), axis=1)
    total = float(areas.sum()) if len(areas) else 0.0
    if not total > 0:
        raise ValueError("mesh has no surface area to sample")
    chosen = rng.choice(len(areas), size=n, p=areas / total)
    uv = rng.random((n, 2))
    flip = uv.sum(axis=1) > 1
    uv[flip] = 1 - uv[flip]
    return origin[chosen] + uv[:, :1] * edge1[chosen] + uv[:, 1:] * edge2[chosen]


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``mean_{p∈a} min_{q∈b} |p−q|² + mean_{q∈b} min_{p∈a} |p−q|²`` (the two directions summed, as cadrille)."""
    from scipy.spatial import cKDTree

    a, b = np.asarray(a, dtype=float).reshape(-1, 3), np.asarray(b, dtype=float).reshape(-1, 3)
    a_to_b = cKDTree(b).query(a, k=1)[0]
    b_to_a = cKDTree(a).query(b, k=1)[0]
    return float(np.mean(np.square(a_to_b)) + np.mean(np.square(b_to_a)))


def _finite(measurement: dict | None, key: str) -> float | None:
    """``measurement[key]`` as a float when it is a finite real number (the measurement is untrusted data)."""
    if not isinstance(measurement, dict):
        return None
    value = measurement.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an int too large for a float (JSON allows any number of digits)
        return None
    return value if math.isfinite(value) else None


def executability(measurement: dict | None) -> float:
    """1.0 when the script yielded a measured solid (``measurement is not None``), else 0.0."""
    return 0.0 if measurement is None else 1.0


def iou_score(measurement: dict | None) -> float:
    """``measurement["iou"]`` clipped to ``[0, 1]``; 0.0 when the measurement or a finite IoU is missing."""
    iou = _finite(measurement, "iou")
    return 0.0 if iou is None else min(max(iou, 0.0), 1.0)


def chamfer_score(measurement: dict | None, scale: float = 0.01) -> float:
    """``exp(−chamfer / scale)`` in ``(0, 1]`` (a negative chamfer counts as 0); 0.0 when it is missing.

    This shaping is mmrl's: CAD-RL's exact reward formulas are not public. ``scale = 0.01`` is 10 on the
    evaluator's ×10³ scale, while identical solids score near the sampling noise floor (~0.5 ×10³ for a cube).
    """
    chamfer = _finite(measurement, "chamfer")
    return 0.0 if chamfer is None else math.exp(-max(chamfer, 0.0) / scale)
