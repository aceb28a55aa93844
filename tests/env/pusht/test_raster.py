"""The pygame/OpenCV-compatible rasteriser: hand-derived pixels and internal consistency.

The end-to-end oracle (frames rendered by upstream's pygame + cv2 stack) is checked in
test_pusht_env.py / test_pusht_image_env.py; here each primitive is pinned on small cases.
"""

import numpy as np
import pytest

from diffusion_policy_mlx.env.pusht import raster

BLACK = (0, 0, 0)


def blank(h: int = 12, w: int = 12) -> np.ndarray:
    return np.full((h, w, 3), 255, dtype=np.uint8)


def ink(img: np.ndarray) -> np.ndarray:
    """Boolean mask of pixels that are not white."""
    return (img != 255).any(axis=-1)


def test_fill_polygon_rectangle_is_inclusive():
    img = blank()
    raster.fill_polygon(img, [(2, 3), (6, 3), (6, 5), (2, 5), (2, 3)], BLACK)
    expected = np.zeros((12, 12), dtype=bool)
    expected[3:6, 2:7] = True
    np.testing.assert_array_equal(ink(img), expected)


def test_fill_polygon_triangle_truncates_toward_zero():
    # Edges (0,0)-(4,4) and (0,0)-(-4,4) shifted by 5: row y spans x = 5 - y .. 5 + y, where
    # the intersections are exact; a shallower edge (0,0)-(3,4) gives 5 + trunc(3y/4).
    img = blank()
    raster.fill_polygon(img, [(5, 0), (9, 4), (1, 4)], BLACK)
    for y in range(5):
        np.testing.assert_array_equal(np.nonzero(ink(img)[y])[0], np.arange(5 - y, 6 + y))
    img = blank()
    raster.fill_polygon(img, [(5, 0), (8, 4), (5, 4)], BLACK)
    for y in range(5):
        np.testing.assert_array_equal(np.nonzero(ink(img)[y])[0], np.arange(5, 6 + 3 * y // 4))


def test_fill_polygon_one_row_and_clipping():
    img = blank()
    raster.fill_polygon(img, [(3, 7), (9, 7), (5, 7)], BLACK)
    expected = np.zeros((12, 12), dtype=bool)
    expected[7, 3:10] = True
    np.testing.assert_array_equal(ink(img), expected)
    img = blank()
    raster.fill_polygon(img, [(-5, -5), (20, -5), (20, 20), (-5, 20)], BLACK)
    assert ink(img).all()


def test_fill_polygon_concave_has_two_spans():
    # A "U": rows 4..7 are split into two spans by the notch x = 4..6.
    img = blank()
    u = [(1, 1), (9, 1), (9, 8), (6, 8), (6, 4), (4, 4), (4, 8), (1, 8)]
    raster.fill_polygon(img, u, BLACK)
    row = np.nonzero(ink(img)[6])[0]
    np.testing.assert_array_equal(row, [1, 2, 3, 4, 6, 7, 8, 9])


@pytest.mark.parametrize(
    "radius, rows",
    [
        # Row extents (dy: x offsets lo..hi) of pygame's midpoint-circle spans.
        (1, {-1: (-1, 0), 0: (-1, 0)}),
        (2, {-2: (-1, 0), -1: (-2, 1), 0: (-2, 1), 1: (-1, 0)}),
    ],
)
def test_fill_circle_spans(radius, rows):
    img = blank()
    raster.fill_circle(img, (5, 5), radius, BLACK)
    expected = np.zeros((12, 12), dtype=bool)
    for dy, (lo, hi) in rows.items():
        expected[5 + dy, 5 + lo : 5 + hi + 1] = True
    np.testing.assert_array_equal(ink(img), expected)


def test_fill_circle_large_is_a_disc_and_clips():
    img = blank(64, 64)
    raster.fill_circle(img, (32, 32), 15, BLACK)
    ys, xs = np.nonzero(ink(img))
    # pygame's disc is centred on the pixel corner (32, 32) - 0.5 and has radius 15.
    r = np.hypot(xs - 31.5, ys - 31.5)
    assert r.max() <= 15.5 and ink(img).sum() == pytest.approx(np.pi * 15**2, rel=0.03)
    img = blank()
    raster.fill_circle(img, (0, 0), 3, BLACK)
    assert ink(img)[0, 0] and not ink(img)[5:].any()


def test_fill_circle_cv2_plus_shape():
    img = blank()
    raster.fill_circle_cv2(img, (5, 5), 1, BLACK)
    expected = np.zeros((12, 12), dtype=bool)
    expected[5, 4:7] = expected[4:7, 5] = True
    np.testing.assert_array_equal(ink(img), expected)


def test_draw_line_thick_runs():
    # Shallow line: vertical 4-pixel runs from y-1 to y+2 at every x.
    img = blank()
    raster.draw_line(img, (1, 5), (8, 5), 4, BLACK)
    expected = np.zeros((12, 12), dtype=bool)
    expected[4:8, 1:9] = True
    np.testing.assert_array_equal(ink(img), expected)
    # Steep diagonal: horizontal 3-pixel runs from x-1 to x+1.
    img = blank()
    raster.draw_line(img, (5, 2), (8, 5), 3, BLACK)
    for k in range(4):
        np.testing.assert_array_equal(np.nonzero(ink(img)[2 + k])[0], [4 + k, 5 + k, 6 + k])


def _walk(p1, p2):
    """The plain Bresenham walk of pygame's draw_line (reference for the closed form)."""
    (x1, y1), (x2, y2) = p1, p2
    dx, sx = abs(x2 - x1), 1 if x1 < x2 else -1
    dy, sy = abs(y2 - y1), 1 if y1 < y2 else -1
    err = dx // 2 if dx > dy else -(dy // 2)
    pts = [(x1, y1)]
    while (x1, y1) != (x2, y2):
        e2 = err
        if e2 > -dx:
            err -= dy
            x1 += sx
        if e2 < dy:
            err += dx
            y1 += sy
        pts.append((x1, y1))
    return pts


def test_draw_line_closed_form_matches_bresenham_walk():
    rng = np.random.default_rng(0)
    for _ in range(300):
        p1 = tuple(int(v) for v in rng.integers(0, 40, 2))
        p2 = tuple(int(v) for v in rng.integers(0, 40, 2))
        img = blank(40, 40)
        raster.draw_line(img, p1, p2, 2, BLACK)
        expected = blank(40, 40)
        grow_x = abs(p1[0] - p2[0]) <= abs(p1[1] - p2[1])
        for x, y in _walk(p1, p2):
            xs, ys = ([x, x + 1], [y, y]) if grow_x else ([x, x], [y, y + 1])
            for xx, yy in zip(xs, ys, strict=True):
                if 0 <= xx < 40 and 0 <= yy < 40:
                    expected[yy, xx] = BLACK
        np.testing.assert_array_equal(img, expected, err_msg=f"{p1} -> {p2}")


def test_draw_line_clipped_stays_on_the_line():
    img = blank(20, 20)
    raster.draw_line(img, (-10, 5), (30, 5), 2, BLACK)
    expected = np.zeros((20, 20), dtype=bool)
    expected[5:7, :] = True
    np.testing.assert_array_equal(ink(img), expected)


def test_draw_aaline_integer_horizontal_is_solid():
    img = blank()
    raster.draw_aaline(img, (2, 3), (6, 3), BLACK)
    expected = np.zeros((12, 12), dtype=bool)
    expected[3, 2:7] = True
    np.testing.assert_array_equal(ink(img), expected)
    assert (img[3, 2:7] == 0).all()


def test_draw_aaline_blends_half_pixel_offset():
    # A horizontal line at y = 3.5 covers rows 3 and 4 at half brightness each:
    # uint8(0.5 * 0 + 0.5 * 255) = 127.
    img = blank()
    raster.draw_aaline(img, (2.0, 3.5), (6.0, 3.5), BLACK)
    np.testing.assert_array_equal(img[3:5, 3:6, 0], np.full((2, 3), 127))
    assert not ink(img)[:3].any() and not ink(img)[5:].any()


def test_resize_linear_half_is_rounded_box_average():
    # At exactly 1/2 scale the bilinear taps are the 2x2 block with weights 1024 each, and the
    # fixed-point vertical pass reduces to (a + b + c + d + 2) >> 2.
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    out = raster.resize_linear(img, (5, 4))
    blocks = img.reshape(4, 2, 5, 2, 3).astype(int).sum(axis=(1, 3))
    np.testing.assert_array_equal(out, (blocks + 2) >> 2)


def test_resize_linear_constant_and_weights():
    img = np.full((512, 512, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(raster.resize_linear(img, (96, 96)), 77)
    # 512 -> 96: the first output pixel samples x = 0.5 * 512 / 96 - 0.5 = 2.1667, i.e. source
    # pixels 2 and 3 with 11-bit weights round(0.8333 * 2048) = 1707 and round(0.1667 * 2048) = 341.
    i0, i1, w = raster._linear_taps(512, 96)
    assert (i0[0], i1[0], w[0, 0], w[1, 0]) == (2, 3, 1707, 341)
    assert i1[-1] == 509


def test_draw_marker_cross():
    img = np.zeros((20, 20, 3), dtype=np.uint8)
    raster.draw_marker_cross(img, (10, 8), 8, 1, (255, 0, 0))
    red = img[..., 0] == 255
    expected = np.zeros((20, 20), dtype=bool)
    expected[8, 6:15] = expected[4:13, 10] = True
    np.testing.assert_array_equal(red, expected)
