"""Render tessellated solids to PNG-ready views on the CPU: numpy and Pillow only, no GPU, no display.

``render_views`` draws a triangle mesh (``vertices`` [V, 3], ``triangles`` [T, 3] indices, e.g. from CadQuery's
``shape.tessellate(0.1)``) as a row of ``size`` x ``size`` orthographic views on white:

* views (``VIEWS``): ``iso`` looks from the (+x, -y, +z) corner, ``front`` along +y, ``back`` along -y, ``top``
  along -z (x right, y up), ``bottom`` along +z, ``right`` along -x, ``left`` along +x; z is up in the side views;
* one scale for all views of a call (so sizes compare between views), chosen so the widest projection of the
  mesh's axis-aligned bounding box among the views fills the tile less a ``margin(size)`` border; each view is
  centred on its projection of that box. ``bounds=(lo, hi)`` frames the views on a given box instead:
  ``common_bounds`` of a reference's and a prediction's vertices renders both at one scale and position, so
  their images compare pixel for pixel (``silhouette``);
* flat Lambert shading: a triangle's colour is ``colour * (AMBIENT + (1 - AMBIENT) * max(0, n . l)) * (1 -
  DEPTH_CUE * d)`` with ``n`` its normal turned toward the viewer, ``l`` a light fixed relative to the camera
  (``LIGHT``: from the upper left, behind the viewer), and ``d`` in [0, 1] how far back the triangle lies within
  the bounding box's depth range in that view, so faces of one orientation at different depths (a tray's floor and rim
  seen from the top) still differ in shade;
* hidden surfaces by the painter's algorithm: triangles sorted by mean depth and drawn back to front with
  ``ImageDraw.polygon``. Long triangles are first cut into a grid of pieces no longer than ``1 / SUBDIVISIONS``
  of the mesh's largest extent, which keeps the depth order right where a large face meets small ones (a box's
  top face around a boss). The whole triangles are drawn first, in the same order, so pixels that the pieces'
  rasterisation leaves open along shared edges (T-junctions between triangles cut differently) keep a
  surface colour instead of showing the background. When the mesh, its vertices welded by position, is closed
  and consistently wound (every edge used once in each direction, as CadQuery's tessellations are), triangles
  facing away from the camera (outward normal by the signed volume's sign) are culled first; any other mesh is
  drawn two-sided;
* the view's name in small grey letters in the tile's top-left corner (``captions``, tiles of 96 px or more).

Input that cannot be drawn never raises: an empty mesh, or one whose triangles all touch non-finite vertices,
gives a blank image reading "no solid"; zero-area triangles are skipped. ``ValueError`` only for arrays of the
wrong shape (or indices outside the vertex array), naming the shape.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

VIEWS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "iso": ((1.0, -1.0, 1.0), (0.0, 0.0, 1.0)),
    "front": ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    "back": ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "top": ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
    "bottom": ((0.0, 0.0, -1.0), (0.0, -1.0, 0.0)),
    "right": ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "left": ((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
}
"""View name -> (direction from the object toward the camera, up hint), in world coordinates."""

LIGHT = (-0.4, 0.6, 1.0)
"""Direction toward the light in camera coordinates (right, up, toward the viewer)."""
AMBIENT = 0.35
DEPTH_CUE = 0.3
SUBDIVISIONS = 16
MAX_PIECES = 24
"""Most pieces a triangle's edge is cut into."""
BACKGROUND = (255, 255, 255)
TEXT = (90, 90, 90)
LABEL_HEIGHT = 14


def margin(size: int) -> int:
    """Pixels left free at each side of a ``size`` tile."""
    return max(2, round(size * 0.1))


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _basis(view: str) -> np.ndarray:
    """Rows: the camera's right, up and toward-viewer unit vectors in world coordinates."""
    toward, up = (np.array(v, dtype=float) for v in VIEWS[view])
    toward /= np.linalg.norm(toward)
    up = up - up.dot(toward) * toward
    up /= np.linalg.norm(up)
    return np.stack([np.cross(up, toward), up, toward])


def _as_array(values, name: str, dtype) -> np.ndarray:
    """``values`` as an [N, 3] array (objects with ``toTuple()``, such as ``cq.Vector``, allowed)."""
    if isinstance(values, (list, tuple)) and values and hasattr(values[0], "toTuple"):
        values = [v.toTuple() for v in values]
    array = np.asarray(values)
    if array.size == 0:
        return np.zeros((0, 3), dtype=dtype)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{name} must have shape [N, 3], got {list(array.shape)}")
    if dtype is float:
        try:
            return array.astype(float)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numbers, got dtype {array.dtype} with shape {list(array.shape)}")
    if not np.issubdtype(array.dtype, np.integer):
        try:
            floats = array.astype(float)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be integer indices, got dtype {array.dtype} with shape "
                             f"{list(array.shape)}")
        if not np.all(np.isfinite(floats)) or np.any(floats != np.round(floats)):
            raise ValueError(f"{name} must be integer indices, got non-integers in shape {list(array.shape)}")
        array = floats
    return array.astype(np.int64)


def _subdivide(corners: np.ndarray, pieces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut triangle ``i`` of ``corners`` [T, 3, 3] into ``pieces[i] ** 2`` similar triangles; returns the new
    corners and the index of each new triangle's parent."""
    out, parent = [], []
    for k in np.unique(pieces):
        idx = np.nonzero(pieces == k)[0]
        weights = _grid(int(k))  # [k*k, 3 corners, 3 barycentric]
        out.append(np.einsum("pcb,tbx->tpcx", weights, corners[idx]).reshape(-1, 3, 3))
        parent.append(np.repeat(idx, len(weights)))
    return np.concatenate(out), np.concatenate(parent)


@lru_cache(maxsize=None)
def _grid(k: int) -> np.ndarray:
    """Barycentric weights of the ``k * k`` sub-triangles of a triangle cut into a ``k`` grid."""
    def w(i, j):
        return ((k - i - j) / k, i / k, j / k)
    tris = []
    for i in range(k):
        for j in range(k - i):
            tris.append((w(i, j), w(i + 1, j), w(i, j + 1)))
            if i + j < k - 1:
                tris.append((w(i + 1, j), w(i + 1, j + 1), w(i, j + 1)))
    return np.array(tris)


def _orientation(corners: np.ndarray, extent: float) -> int:
    """+1 when the triangles ``corners`` [T, 3, 3], welded by position, form a closed, consistently wound mesh
    with outward normals (right-handed winding), -1 when closed and consistent but inward, 0 otherwise."""
    keys = np.round(corners.reshape(-1, 3) / (extent * 1e-7)).astype(np.int64)
    _, ids = np.unique(keys, axis=0, return_inverse=True)
    ids = ids.reshape(-1, 3)
    start, end = ids.reshape(-1), np.roll(ids, -1, axis=1).reshape(-1)
    proper = start != end
    start, end = start[proper], end[proper]
    n = int(ids.max()) + 1
    edges = start * n + end
    if len(np.unique(edges)) != len(edges) or not np.array_equal(np.sort(edges), np.sort(end * n + start)):
        return 0
    volume = np.einsum("ij,ij->", corners[:, 0], np.cross(corners[:, 1], corners[:, 2]))
    return 1 if volume > 0 else -1 if volume < 0 else 0


def common_bounds(vertex_sets) -> tuple[np.ndarray, np.ndarray] | None:
    """``(lo, hi)``, the axis-aligned box around the finite vertices of every [V, 3] array-like in
    ``vertex_sets``, for ``render_views(bounds=...)``; ``None`` when there are none."""
    finite = [v[np.all(np.isfinite(v), axis=1)] for v in (_as_array(vs, "vertices", float) for vs in vertex_sets)]
    points = np.concatenate(finite) if finite else np.zeros((0, 3))
    return (points.min(axis=0), points.max(axis=0)) if len(points) else None


def silhouette(image: Image.Image) -> np.ndarray:
    """[H, W] bool: the pixels a solid covers, i.e. those not neutral grey (background white, captions and "no
    solid" are neutral; the shades of a colour whose channels differ, like the default, never are)."""
    pixels = np.asarray(image.convert("RGB"))
    return (pixels != pixels[..., :1]).any(axis=2)


def _blank(width: int, height: int, text: str) -> Image.Image:
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font(max(8, min(16, height // 8)))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((width - (right - left)) / 2 - left, (height - (bottom - top)) / 2 - top), text, fill=TEXT, font=font)
    return image


def render_views(vertices, triangles, *, size: int = 160, views: tuple[str, ...] = ("iso", "front", "top", "right"),
                 colour=(90, 140, 200), captions: bool = True, bounds=None) -> Image.Image:
    """The mesh drawn as ``len(views)`` tiles of ``size`` x ``size`` side by side (module docstring).

    ``vertices``: [V, 3] floats; ``triangles``: [T, 3] vertex indices (array-likes: lists from JSON work).
    ``bounds``: ``(lo, hi)`` corners of the box the views are framed on (``common_bounds``); default the
    bounding box of the mesh's drawable triangles. ``ValueError`` for wrongly shaped arrays, out-of-range
    indices, unknown views or a size under 8.
    """
    views = tuple(views)
    unknown = [v for v in views if v not in VIEWS]
    if not views or unknown:
        raise ValueError(f"views: unknown or empty {list(views)}; valid: {list(VIEWS)}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    verts = _as_array(vertices, "vertices", float)
    tris = _as_array(triangles, "triangles", np.int64)
    if tris.size and (tris.min() < 0 or tris.max() >= len(verts)):
        raise ValueError(f"triangles index vertices 0..{len(verts) - 1} (vertices shape {list(verts.shape)}), got "
                         f"indices {int(tris.min())}..{int(tris.max())}")
    width = size * len(views)
    corners = verts[tris]  # [T, 3, 3]
    corners = corners[np.all(np.isfinite(corners), axis=(1, 2))]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    lengths = np.linalg.norm(normals, axis=1)
    extent = np.ptp(corners.reshape(-1, 3), axis=0).max() if len(corners) else 0.0
    keep = lengths > max(extent, 1e-300) ** 2 * 1e-12
    corners, normals = corners[keep], normals[keep] / lengths[keep, None]
    if not len(corners):
        return _blank(width, size, "no solid")

    orientation = _orientation(corners, extent)
    edges = np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2).max(axis=1)
    pieces = np.clip(np.ceil(edges * SUBDIVISIONS / extent), 1, MAX_PIECES).astype(int)
    pieces_corners, parent = _subdivide(corners, pieces)

    if bounds is None:
        lo, hi = corners.reshape(-1, 3).min(axis=0), corners.reshape(-1, 3).max(axis=0)
    else:
        lo, hi = (np.asarray(b, dtype=float).reshape(3) for b in bounds)
    points = np.array([[(lo, hi)[(i >> axis) & 1][axis] for axis in range(3)] for i in range(8)])
    bases = [_basis(v) for v in views]
    spans = []
    for basis in bases:
        uv = points @ basis[:2].T
        spans.append((uv.min(axis=0), uv.max(axis=0)))
    widest = max(float((hi - lo).max()) for lo, hi in spans)
    usable = size - 2 * margin(size)
    scale = usable / widest if widest > 0 else 1.0
    light = np.array(LIGHT) / np.linalg.norm(LIGHT)
    colour = np.array(colour, dtype=float)

    image = Image.new("RGB", (width, size), BACKGROUND)
    for tile, (view, basis, (span_lo, span_hi)) in enumerate(zip(views, bases, spans)):
        canvas = Image.new("RGB", (size, size), BACKGROUND)  # its own canvas: nothing spills into the next view
        draw = ImageDraw.Draw(canvas)
        n_cam = normals @ basis.T
        facing = n_cam[:, 2] * orientation > 1e-9 if orientation else np.ones(len(n_cam), dtype=bool)
        n_cam *= np.where(n_cam[:, 2] < 0, -1.0, 1.0)[:, None]
        lambert = AMBIENT + (1 - AMBIENT) * np.clip(n_cam @ light, 0.0, 1.0)
        toward = points @ basis[2]
        near, far = toward.max(), toward.min()
        centre = (span_lo + span_hi) / 2
        for tris, owner in ((corners, np.arange(len(corners))), (pieces_corners, parent)):
            cam = tris @ basis.T  # [N, 3, 3]: right, up, toward
            depth = cam[..., 2].mean(axis=1)
            back = np.clip((near - depth) / (near - far), 0, 1) if near > far else np.zeros(len(depth))
            fills = np.clip(np.round(colour * (lambert[owner] * (1 - DEPTH_CUE * back))[:, None]), 0, 255)
            xs = size / 2 + (cam[..., 0] - centre[0]) * scale
            ys = size / 2 - (cam[..., 1] - centre[1]) * scale
            order = np.argsort(depth, kind="stable")  # farthest (smallest toward) first
            for i in order[facing[owner][order]]:
                fill = tuple(int(c) for c in fills[i])
                draw.polygon(list(zip(xs[i].tolist(), ys[i].tolist())), fill=fill, outline=fill)
        if captions and size >= 96:
            draw.text((3, 1), view, fill=TEXT, font=_font(max(8, margin(size) - 5)))
        image.paste(canvas, (tile * size, 0))
    return image


def side_by_side(left: Image.Image, right: Image.Image, labels: tuple[str, str] = ("reference", "prediction"),
                 ) -> Image.Image:
    """``left`` above ``right`` (despite the name: renders are wide rows), each under a small label strip."""
    width = max(left.width, right.width)
    out = Image.new("RGB", (width, 2 * LABEL_HEIGHT + left.height + right.height), BACKGROUND)
    draw = ImageDraw.Draw(out)
    top = 0
    for image, label in zip((left, right), labels):
        draw.text((3, top + 1), label, fill=TEXT, font=_font(LABEL_HEIGHT - 3))
        out.paste(image.convert("RGB"), (0, top + LABEL_HEIGHT))
        top += LABEL_HEIGHT + image.height
    return out
