"""Tests for mmrl.vision: Qwen's smart_resize, image loading errors, fit_image's coordinate scale."""
from __future__ import annotations

import itertools

import pytest
import qwen_vl_utils
from PIL import Image

from mmrl.errors import DataError
from mmrl.vision import fit_image, load_image, smart_resize

PROCESSOR_BUDGET = (56 * 56, 28 * 28 * 1280)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        # round(112/28) = 4 -> 112; area 12544 is inside [3136, 1003520]: unchanged.
        (112, 112, (112, 112)),
        # round(100/28) = round(3.571) = 4 -> 112 on both sides; area 12544 inside the budget.
        (100, 100, (112, 112)),
        # 70/28 = 2.5 and Python rounds halves to even: 2 -> 56; area 3136 == min_pixels, not below it.
        (70, 70, (56, 56)),
        # round(20/28) = 1 -> 28, round(30/28) = 1 -> 28; area 784 < 3136, so beta = sqrt(3136/600) = 2.2862;
        # 20*beta = 45.72 -> ceil(1.633) = 2 -> 56; 30*beta = 68.59 -> ceil(2.450) = 3 -> 84.
        (20, 30, (56, 84)),
        # round(1000/28) = 36 -> 1008; 1008^2 = 1016064 > 1003520, so beta = sqrt(1e6/1003520) = 0.998245;
        # 1000/beta = 1001.76 -> floor(35.777) = 35 -> 980.
        (1000, 1000, (980, 980)),
        # round(1080/28) = round(38.57) = 39 -> 1092; round(1920/28) = round(68.57) = 69 -> 1932;
        # area 2109744 > 1003520: beta = sqrt(2073600/1003520) = 1.43747; 1080/beta = 751.3 -> 26*28 = 728;
        # 1920/beta = 1335.7 -> 47*28 = 1316.
        (1080, 1920, (728, 1316)),
    ],
)
def test_smart_resize_hand_checked(height, width, expected):
    assert smart_resize(height, width) == expected


SIDES = [1, 5, 27, 28, 29, 41, 42, 55, 70, 99, 111, 112, 113, 250, 333, 640, 719, 1000, 1081, 1920, 2561, 4000]
BUDGETS = [PROCESSOR_BUDGET, (4 * 28 * 28, 16384 * 28 * 28), (256 * 28 * 28, 512 * 28 * 28), (3136, 3136 * 4)]


@pytest.mark.parametrize(("min_pixels", "max_pixels"), BUDGETS)
@pytest.mark.parametrize("factor", [28, 32])
def test_smart_resize_matches_qwen_vl_utils(min_pixels, max_pixels, factor):
    checked = 0
    for height, width in itertools.product(SIDES + list(range(10, 3000, 97)), repeat=2):
        if max(height, width) / min(height, width) > 200:
            continue
        theirs = qwen_vl_utils.smart_resize(height, width, factor, min_pixels=min_pixels, max_pixels=max_pixels)
        if min(theirs) == 0:  # our documented departure, tested below
            continue
        ours = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        assert ours == theirs, (height, width)
        assert ours[0] % factor == 0 and ours[1] % factor == 0
        checked += 1
    assert checked > 1000


def test_smart_resize_never_returns_a_zero_side():
    # Under a 3136-pixel budget: 28x5012 is too big, beta = sqrt(28*5000/3136) = 6.68, 28/beta = 4.2 -> 0.
    assert qwen_vl_utils.smart_resize(28, 5000, 28, min_pixels=784, max_pixels=3136)[0] == 0
    assert smart_resize(28, 5000, min_pixels=784, max_pixels=3136) == (28, 728)


@pytest.mark.parametrize(("height", "width"), [(1, 201), (402, 2), (0, 10), (10, -1)])
def test_smart_resize_rejects_bad_sizes(height, width):
    with pytest.raises(ValueError):
        smart_resize(height, width)


def _assert_one_line_naming(exc_info, path):
    message = str(exc_info.value)
    assert str(path) in message
    assert "\n" not in message


def test_load_image_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(DataError, match="^image not found: ") as exc_info:
        load_image(path)
    _assert_one_line_naming(exc_info, path)


def test_load_image_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="^cannot read image ") as exc_info:
        load_image(path)
    _assert_one_line_naming(exc_info, path)


def test_load_image_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image\nat all\n")
    with pytest.raises(DataError, match="^cannot read image ") as exc_info:
        load_image(path)
    _assert_one_line_naming(exc_info, path)


def test_load_image_returns_rgb_with_white_behind_transparency(tmp_path):
    path = tmp_path / "rgba.png"
    img = Image.new("RGBA", (4, 3), (255, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 255, 0))
    img.save(path)
    loaded = load_image(str(path))
    assert loaded.mode == "RGB" and loaded.size == (4, 3)
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == (255, 0, 0)


def test_load_image_grayscale_becomes_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (5, 5), 100).save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.getpixel((2, 2)) == (100, 100, 100)


def test_fit_image_size_and_scale():
    img = Image.new("RGB", (100, 50), (10, 20, 30))
    # smart_resize(50, 100): round(50/28) = 2 -> 56, round(100/28) = 4 -> 112; area 6272 is in budget.
    resized, (sx, sy) = fit_image(img, *PROCESSOR_BUDGET)
    assert resized.size == (112, 56)
    assert (sx, sy) == pytest.approx((100 / 112, 50 / 56))
    # The seen image's bottom-right corner maps to the original's.
    assert (112 * sx, 56 * sy) == pytest.approx((100, 50))


def test_fit_image_downscales_to_budget():
    img = Image.new("RGB", (1920, 1080))
    resized, (sx, sy) = fit_image(img, *PROCESSOR_BUDGET)
    assert resized.size == (1316, 728)
    assert sx == pytest.approx(1920 / 1316) and sy == pytest.approx(1080 / 728)
    assert sx > 1 and sy > 1
