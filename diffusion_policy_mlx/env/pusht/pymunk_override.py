"""Upstream's debug drawing of pymunk shapes (its ``pymunk_override.DrawOptions``), on numpy canvases.

Upstream renders PushT by letting pymunk call a pygame ``DrawOptions``: polygons get a lighter fill
and a 4-pixel outline made of thick lines, polygons and round caps; circles get a lighter inner
disc; segments are drawn as fat segments. The same recipe, through :mod:`.raster`, gives the same
pixels without pygame. Coordinates are pymunk's (y down, as pygame's surface), rounded with
Python's ``round`` exactly as upstream's ``to_pygame`` does.
"""

from collections.abc import Sequence

import numpy as np
import pymunk

from diffusion_policy_mlx.env.pusht import raster

# pygame's named colours used by upstream (https://htmlcolorcodes.com/color-names).
COLORS: dict[str, raster.Color] = {
    "LightGreen": (144, 238, 144),
    "LightSlateGray": (119, 136, 153),
    "RoyalBlue": (65, 105, 225),
    "LightGray": (211, 211, 211),
}


def to_pygame(p: Sequence[float]) -> tuple[int, int]:
    """pymunk point to integer pixel; ``round`` is half-to-even, as in upstream."""
    return round(p[0]), round(p[1])


def light_color(color: raster.Color) -> raster.Color:
    """Upstream's lighter fill: 1.2x in float32, capped at 255, then rounded."""
    c = np.minimum(1.2 * np.float32(color), np.float32(255))
    return round(float(c[0])), round(float(c[1])), round(float(c[2]))


def draw_fat_segment(
    img: np.ndarray, a: Sequence[float], b: Sequence[float], radius: float, color: raster.Color
) -> None:
    """A thick line with a polygon body and round caps, as upstream's ``draw_fat_segment``."""
    p1, p2 = to_pygame(a), to_pygame(b)
    width = round(max(1, radius * 2))
    raster.draw_line(img, p1, p2, width, color)
    if width <= 2:
        return
    # Upstream takes absolute values here, so the band is not always perpendicular; kept as is.
    ox, oy = abs(p2[1] - p1[1]), abs(p2[0] - p1[0])
    if ox == 0 and oy == 0:
        return
    scale = radius / (ox * ox + oy * oy) ** 0.5
    ox, oy = round(ox * scale), round(oy * scale)
    band = [
        (p1[0] - ox, p1[1] - oy),
        (p1[0] + ox, p1[1] + oy),
        (p2[0] + ox, p2[1] + oy),
        (p2[0] - ox, p2[1] - oy),
    ]
    raster.fill_polygon(img, band, color)
    raster.fill_circle(img, p1, round(radius), color)
    raster.fill_circle(img, p2, round(radius), color)


def draw_polygon(img: np.ndarray, verts: Sequence[Sequence[float]], color: raster.Color) -> None:
    """A filled polygon with upstream's light fill and a 2-radius outline."""
    points = [to_pygame(v) for v in verts]
    raster.fill_polygon(img, points + [points[0]], light_color(color))
    for i in range(len(verts)):
        draw_fat_segment(img, verts[i], verts[(i + 1) % len(verts)], 2, color)


def draw_circle(img: np.ndarray, pos: Sequence[float], radius: float, color: raster.Color) -> None:
    """A disc with a lighter disc 4 px inside it, as upstream's ``draw_circle``."""
    p = to_pygame(pos)
    raster.fill_circle(img, p, round(radius), color)
    raster.fill_circle(img, p, round(radius - 4), light_color(color))


def draw_shape(img: np.ndarray, shape: pymunk.Shape, color: raster.Color) -> None:
    """Draw one pymunk shape the way pymunk's debug draw calls upstream's ``DrawOptions``."""
    body = shape.body
    if isinstance(shape, pymunk.Poly):
        draw_polygon(img, [body.local_to_world(v) for v in shape.get_vertices()], color)
    elif isinstance(shape, pymunk.Circle):
        draw_circle(img, body.local_to_world(shape.offset), shape.radius, color)
    elif isinstance(shape, pymunk.Segment):
        a, b = body.local_to_world(shape.a), body.local_to_world(shape.b)
        draw_fat_segment(img, a, b, shape.radius, color)
    else:
        raise TypeError(
            f"cannot draw a {type(shape).__name__}; PushT only uses Poly, Circle and Segment"
        )
