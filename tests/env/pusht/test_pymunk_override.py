"""Upstream's pymunk debug-draw recipe on numpy canvases: colours, rounding, shapes."""

import numpy as np
import pymunk

from diffusion_policy_mlx.env.pusht.pymunk_override import (
    draw_fat_segment,
    draw_shape,
    light_color,
    to_pygame,
)


def test_light_color_rounds_the_float32_product():
    # 1.2 * (119, 136, 153) = (142.8, 163.2, 183.6) -> (143, 163, 184); blue is capped at 255.
    assert light_color((119, 136, 153)) == (143, 163, 184)
    assert light_color((65, 105, 225)) == (78, 126, 255)


def test_to_pygame_rounds_half_to_even():
    assert to_pygame((2.5, 3.5)) == (2, 4)
    assert to_pygame((-0.5, 10.49)) == (0, 10)


def test_fat_segment_has_round_caps():
    img = np.zeros((30, 30, 3), dtype=np.uint8)
    draw_fat_segment(img, (5, 15), (25, 15), 2, (255, 255, 255))
    ink = img[..., 0] > 0
    # Body: the 4-wide thick line covers rows 14..17; the band polygon adds rows 13..17.
    assert ink[13:18, 6:25].all() and not ink[18:, 6:25].any() and not ink[:13].any()
    # Caps: radius-2 discs around the ends reach x = 3 and x = 26.
    assert ink[15, 3] and ink[15, 26] and not ink[15, 2] and not ink[15, 27]


def test_draw_shape_polygon_has_light_fill_and_dark_outline():
    body = pymunk.Body(1, 1)
    body.position = (20, 20)
    box = pymunk.Poly.create_box(body, (20, 20))
    img = np.full((40, 40, 3), 255, dtype=np.uint8)
    draw_shape(img, box, (119, 136, 153))
    np.testing.assert_array_equal(img[20, 20], [143, 163, 184])
    np.testing.assert_array_equal(img[10, 20], [119, 136, 153])
    np.testing.assert_array_equal(img[20, 30], [119, 136, 153])
    np.testing.assert_array_equal(img[2, 2], [255, 255, 255])
