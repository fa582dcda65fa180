"""Tests for tasks.cad_render: image layout, projected extents, hidden surfaces, empty and malformed meshes."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from tasks.cad_render import LABEL_HEIGHT, common_bounds, margin, render_views, side_by_side, silhouette

CUBE_VERTICES = [
    [0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],  # bottom, z = 0
    [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1],  # top, z = 1
]
CUBE_TRIANGLES = [  # counter-clockwise seen from outside: outward normals
    [0, 2, 1], [0, 3, 2],  # bottom (-z)
    [4, 5, 6], [4, 6, 7],  # top (+z)
    [0, 1, 5], [0, 5, 4],  # front (-y)
    [2, 3, 7], [2, 7, 6],  # back (+y)
    [1, 2, 6], [1, 6, 5],  # right (+x)
    [3, 0, 4], [3, 4, 7],  # left (-x)
]


def _box(lo, hi):
    """Vertices and outward triangles of the axis-aligned box ``lo``..``hi``."""
    verts = np.array(CUBE_VERTICES, dtype=float) * (np.array(hi) - np.array(lo)) + np.array(lo)
    return verts, np.array(CUBE_TRIANGLES)


def _covered(image):
    """Mask of the pixels that are not background white."""
    return np.any(np.asarray(image) != 255, axis=2)


def _extent(mask):
    """(width, height) in pixels of the covered region's bounding box."""
    rows, cols = np.nonzero(mask)
    return cols.max() - cols.min() + 1, rows.max() - rows.min() + 1


def test_cube_renders_to_the_expected_size():
    image = render_views(CUBE_VERTICES, CUBE_TRIANGLES)
    assert image.mode == "RGB" and image.size == (4 * 160, 160)
    assert render_views(CUBE_VERTICES, CUBE_TRIANGLES, size=64, views=("iso", "top")).size == (128, 64)
    tiles = [_covered(image.crop((i * 160, 0, (i + 1) * 160, 160))) for i in range(4)]
    assert all(tile.mean() > 0.1 for tile in tiles)
    # the iso view shows three faces in three different shades
    iso = np.asarray(image.crop((0, 0, 160, 160))).reshape(-1, 3)
    assert len({tuple(p) for p in iso if tuple(p) != (255, 255, 255)}) >= 3


def test_top_view_of_a_cube_is_a_filled_square():
    size = 100
    image = render_views(CUBE_VERTICES, CUBE_TRIANGLES, size=size, views=("top",), captions=False)
    mask = _covered(image)
    side = size - 2 * margin(size)  # the one view fills the tile less the margins
    width, height = _extent(mask)
    assert abs(width - side) <= 2 and abs(height - side) <= 2
    assert mask.mean() == pytest.approx(side * side / size**2, abs=0.035)
    rows, cols = np.nonzero(mask)
    assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # filled: no holes inside
    assert len({tuple(p) for p in np.asarray(image)[mask]}) == 1  # one flat face, one shade


def test_views_share_one_scale():
    size = 160
    image = render_views(CUBE_VERTICES, CUBE_TRIANGLES, size=size, captions=False)
    # the iso view is the widest: the cube's projection is 4 / sqrt(6) high, so a face is this many pixels
    side = (size - 2 * margin(size)) / (4 / math.sqrt(6))
    for tile in (1, 2, 3):  # front, top, right: one face each
        width, height = _extent(_covered(image.crop((tile * size, 0, (tile + 1) * size, size))))
        assert abs(width - side) <= 2 and abs(height - side) <= 2, tile


def test_nearer_triangles_hide_farther_ones():
    # Box A (y 0..1) stands in front of box B (y 3..4) in the front view (camera at -y); they overlap in x 0.5..1.
    # A's triangles come first in the list, so drawing in list order would paint B over A.
    va, ta = _box((0, 0, 0), (1, 1, 1))
    vb, tb = _box((0.5, 3, 0), (1.5, 4, 1))
    verts, tris = np.concatenate([va, vb]), np.concatenate([ta, tb + len(va)])
    size = 100
    image = np.asarray(render_views(verts, tris, size=size, views=("front",), captions=False)).astype(int)
    scale = (size - 2 * margin(size)) / 1.5  # the front view spans 1.5 in x and 1 in z
    x_of = lambda x: int(size / 2 + (x - 0.75) * scale)  # noqa: E731
    z_mid = size // 2
    only_a, overlap, only_b = image[z_mid, x_of(0.25)], image[z_mid, x_of(0.75)], image[z_mid, x_of(1.25)]
    assert tuple(overlap) == tuple(only_a)  # the nearer front face wins where they overlap
    assert only_b.sum() < only_a.sum() - 30  # the farther face is shaded darker (depth cue)
    # the same holds drawn two-sided: flip every other triangle so the winding check gives up on culling
    flipped = tris.copy()
    flipped[::2] = flipped[::2, ::-1]
    image2 = np.asarray(render_views(verts, flipped, size=size, views=("front",), captions=False)).astype(int)
    assert tuple(image2[z_mid, x_of(0.75)]) == tuple(image2[z_mid, x_of(0.25)])
    assert image2[z_mid, x_of(1.25)].sum() < image2[z_mid, x_of(0.25)].sum() - 30
    # and a consistently inward-wound mesh renders like the outward one
    inward = np.asarray(render_views(verts, tris[:, ::-1], size=size, views=("front",), captions=False))
    assert np.array_equal(inward, image.astype(np.uint8))


def test_lists_from_json_render_like_arrays():
    verts, tris = json.loads(json.dumps(CUBE_VERTICES)), json.loads(json.dumps(CUBE_TRIANGLES))
    a = render_views(verts, tris, size=64)
    b = render_views(np.array(CUBE_VERTICES, dtype=np.float32), np.array(CUBE_TRIANGLES, dtype=np.int32), size=64)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def _is_blank_with_text(image, size, n_views):
    assert image.size == (size * n_views, size)
    mask = _covered(image)
    assert 0 < mask.mean() < 0.05  # just the words "no solid"
    rows, cols = np.nonzero(mask)
    assert abs((cols.min() + cols.max()) / 2 - image.width / 2) <= 2  # centred
    return True


def test_empty_and_degenerate_meshes_give_the_blank_image():
    blank = render_views([], [], size=96)
    assert _is_blank_with_text(blank, 96, 4)
    for verts, tris in [
        (CUBE_VERTICES, []),  # no triangles
        (np.zeros((0, 3)), np.zeros((0, 3), dtype=int)),
        ([[0, 0, 0], [0, 0, 0], [0, 0, 0]], [[0, 1, 2]]),  # a point
        ([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]]),  # a line
        ([[0, 0, 0], [1, 0, 0], [0, float("nan"), 0]], [[0, 1, 2]]),  # a non-finite vertex
    ]:
        assert np.array_equal(np.asarray(render_views(verts, tris, size=96)), np.asarray(blank))


def test_wrongly_shaped_arrays_raise():
    with pytest.raises(ValueError, match=r"vertices.*\[8, 2\]"):
        render_views(np.zeros((8, 2)), CUBE_TRIANGLES)
    with pytest.raises(ValueError, match=r"triangles.*\[3\]"):
        render_views(CUBE_VERTICES, [0, 1, 2])
    with pytest.raises(ValueError, match=r"triangles.*\[2, 4\]"):
        render_views(CUBE_VERTICES, [[0, 1, 2, 3], [0, 1, 2, 3]])
    with pytest.raises(ValueError, match="integer"):
        render_views(CUBE_VERTICES, [[0, 1, 2.5]])
    with pytest.raises(ValueError, match="0..7"):
        render_views(CUBE_VERTICES, [[0, 1, 8]])
    with pytest.raises(ValueError, match="views"):
        render_views(CUBE_VERTICES, CUBE_TRIANGLES, views=("perspective",))


def test_common_bounds_frame_two_meshes_alike():
    small_v, small_t = _box((0, 0, 0), (1, 1, 1))
    big_v, big_t = _box((0, 0, 0), (2, 2, 2))
    assert common_bounds([]) is None and common_bounds([[], np.zeros((0, 3))]) is None
    lo, hi = common_bounds([small_v.tolist(), big_v, [[0, 0, float("nan")]]])
    assert lo.tolist() == [0, 0, 0] and hi.tolist() == [2, 2, 2]
    # framed on its own box, a mesh renders as with no bounds at all
    own = render_views(big_v, big_t, size=64, bounds=common_bounds([big_v]))
    assert np.array_equal(np.asarray(own), np.asarray(render_views(big_v, big_t, size=64)))
    # framed together, the small cube covers a quarter of the big one's top view, in its corner
    bounds = common_bounds([small_v, big_v])
    small, big = (silhouette(render_views(v, t, size=100, views=("top",), bounds=bounds))
                  for v, t in ((small_v, small_t), (big_v, big_t)))
    assert small.sum() == pytest.approx(big.sum() / 4, rel=0.1)
    assert (small & big).sum() == small.sum()
    rows, cols = np.nonzero(small)
    assert cols.max() < 55 and rows.min() > 45  # x 0..1 of 0..2 is the left half, y 0..1 the lower half


def test_silhouette_ignores_background_and_text():
    image = render_views(CUBE_VERTICES, CUBE_TRIANGLES, size=100)  # with captions
    mask = silhouette(image)
    assert mask.shape == (100, 400) and mask.dtype == bool
    assert np.array_equal(mask, silhouette(render_views(CUBE_VERTICES, CUBE_TRIANGLES, size=100, captions=False)))
    assert not silhouette(render_views([], [], size=100)).any()


def test_side_by_side_stacks_with_labels():
    top = render_views(CUBE_VERTICES, CUBE_TRIANGLES, size=64)
    bottom = render_views([], [], size=64, views=("iso",))
    out = side_by_side(top, bottom)
    assert out.mode == "RGB" and out.size == (top.width, top.height + bottom.height + 2 * LABEL_HEIGHT)
    assert np.array_equal(np.asarray(out.crop((0, LABEL_HEIGHT, top.width, LABEL_HEIGHT + top.height))),
                          np.asarray(top))
    assert _covered(out.crop((0, 0, out.width, LABEL_HEIGHT))).any()  # the label
    assert isinstance(side_by_side(Image.new("L", (10, 5)), Image.new("RGB", (20, 5)), ("a", "b")), Image.Image)


def test_renders_a_cadquery_box():
    cq = pytest.importorskip("cadquery")
    vertices, triangles = cq.Workplane("XY").box(20, 10, 5).val().tessellate(0.1)
    image = render_views(vertices, triangles)  # cq.Vector lists are accepted as they come
    assert image.size == (640, 160)
    size = 100
    top = render_views([v.toTuple() for v in vertices], triangles, size=size, views=("top",), captions=False)
    width, height = _extent(_covered(top))
    usable = size - 2 * margin(size)  # 20 mm across
    assert abs(width - usable) <= 2 and abs(height - usable / 2) <= 2
