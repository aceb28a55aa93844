"""Pixel-exact numpy rasterisation of the few pygame and OpenCV calls upstream's PushT renders with.

Upstream draws its 512x512 canvas with pygame (<= 2.5) and shrinks it with ``cv2.resize``
(INTER_LINEAR). The recorded dataset's images come from exactly those calls, so a policy trained on
them expects their pixels. pygame 2.6 changed its polygon fill (floating-point edge intersections),
which moves edge pixels, so depending on pygame would mean pinning an old release. These functions
reproduce the algorithms of pygame 2.1-2.5 (``draw.polygon``, ``draw.lines`` with width,
``draw.circle`` filled, the blended ``draw.aaline``), OpenCV's fixed-point bilinear resize and its
marker and filled circle instead. Checked against frames rendered by the upstream stack (the
fixture canvas and the recorded dataset's images, bit for bit) and, during development, against
thousands of random primitives drawn by pygame 2.1.3 and 2.5.2.

Images are ``(H, W, 3)`` uint8 arrays, indexed ``img[y, x]``; points are integer ``(x, y)``.
"""

from collections.abc import Sequence
from functools import cache

import numpy as np

Color = tuple[int, int, int]


def _hline(img: np.ndarray, x1: int, y: int, x2: int, color: Color) -> None:
    """One clipped horizontal span, both ends inclusive, in either order."""
    h, w = img.shape[:2]
    if not 0 <= y < h:
        return
    lo, hi = max(min(x1, x2), 0), min(max(x1, x2), w - 1)
    if lo <= hi:
        img[y, lo : hi + 1] = color


def fill_polygon(img: np.ndarray, points: Sequence[tuple[int, int]], color: Color) -> None:
    """Fill a polygon like ``pygame.draw.polygon(surface, color, points)`` (width 0), pygame <= 2.5.

    Scanline fill over the integer rows: every non-horizontal edge, oriented top to bottom,
    contributes an intersection on rows ``y1 <= y < y2`` (and on the last row if it ends there)
    at ``x1 + trunc((y - y1) * (x2 - x1) / (y2 - y1))`` in integer arithmetic; sorted
    intersections pair up into inclusive spans. Horizontal edges strictly inside the vertical
    range are drawn afterwards, as pygame does.
    """
    pts = [(int(x), int(y)) for x, y in points]
    ys = [y for _, y in pts]
    miny, maxy = min(ys), max(ys)
    xs = [x for x, _ in pts]
    if miny == maxy:
        _hline(img, min(xs), miny, max(xs), color)
        return
    # Edges oriented top to bottom; horizontal ones take no part in the scanline pass.
    edges = []
    for (xa, ya), (xb, yb) in zip(pts[-1:] + pts[:-1], pts, strict=True):
        if ya < yb:
            edges.append((xa, ya, xb, yb))
        elif ya > yb:
            edges.append((xb, yb, xa, ya))
    h, w = img.shape[:2]
    row_lo, row_hi = max(miny, 0), min(maxy, h - 1)
    col_lo, col_hi = max(min(xs), 0), min(max(xs), w - 1)
    if row_lo <= row_hi and col_lo <= col_hi:
        x1, y1, x2, y2 = np.array(edges).T
        rows = np.arange(row_lo, row_hi + 1)[:, None]
        hit = ((rows >= y1) & (rows < y2)) | ((rows == maxy) & (y2 == maxy))
        num = (rows - y1) * (x2 - x1)
        # C integer division truncates toward zero.
        xi = x1 + np.sign(num) * (np.abs(num) // (y2 - y1))
        xi = np.sort(np.where(hit, xi, np.iinfo(np.int64).max), axis=1)
        n_hit = hit.sum(axis=1)
        # Intersections lie between their edge's end points, so within the columns' bounds.
        cols = np.arange(col_lo, col_hi + 1)
        mask = (cols >= xi[:, :1]) & (cols <= xi[:, 1:2])
        for j in range(2, int(n_hit.max()), 2):
            valid = (j + 1 < n_hit)[:, None]
            mask |= valid & (cols >= xi[:, j : j + 1]) & (cols <= xi[:, j + 1 : j + 2])
        img[row_lo : row_hi + 1, col_lo : col_hi + 1][mask] = color

    for i in range(len(pts)):
        y = pts[i][1]
        if miny < y < maxy and pts[i - 1][1] == y:
            _hline(img, pts[i][0], y, pts[i - 1][0], color)


@cache
def _circle_mask(radius: int) -> np.ndarray:
    """Pixels of ``pygame.draw.circle(..., radius)`` (filled) around the centre at index
    ``[radius, radius]``: pygame's midpoint-circle spans, which are nested on each row."""
    mask = np.zeros((2 * radius + 1, 2 * radius + 1), dtype=bool)
    r = radius

    def span(x1: int, y: int, x2: int) -> None:
        # pygame's horizontal lines accept their ends in either order.
        mask[y + r, min(x1, x2) + r : max(x1, x2) + r + 1] = True

    f, ddf_x, ddf_y, x, y = 1 - radius, 0, -2 * radius, 0, radius
    while x < y:
        if f >= 0:
            y -= 1
            ddf_y += 2
            f += ddf_y
        x += 1
        ddf_x += 2
        f += ddf_x + 1
        if f >= 0:
            span(-x, y - 1, x - 1)
            span(-x, -y, x - 1)
        span(-y, x - 1, y - 1)
        span(-y, -x, y - 1)
    return mask


def fill_circle(img: np.ndarray, center: tuple[int, int], radius: int, color: Color) -> None:
    """``pygame.draw.circle(surface, color, center, radius)`` (filled), clipped to the image."""
    if radius < 1:
        return
    _paste_mask(img, center, _circle_mask(radius), color)


@cache
def _cv2_circle_mask(radius: int) -> np.ndarray:
    """Pixels of OpenCV's filled 8-connected circle (``cv2.circle(..., thickness=-1)``)."""
    r = radius
    mask = np.zeros((2 * r + 1, 2 * r + 1), dtype=bool)
    err, dx, dy, plus, minus = 0, r, 0, 1, 2 * r - 1
    while dx >= dy:
        mask[r - dy, r - dx : r + dx + 1] = True
        mask[r + dy, r - dx : r + dx + 1] = True
        mask[r - dx, r - dy : r + dy + 1] = True
        mask[r + dx, r - dy : r + dy + 1] = True
        dy += 1
        err += plus
        plus += 2
        step = -1 if err > 0 else 0
        err -= minus & step
        dx += step
        minus -= step & 2
    return mask


def _paste_mask(img: np.ndarray, center: tuple[int, int], mask: np.ndarray, color: Color) -> None:
    r = mask.shape[0] // 2
    cx, cy = center
    h, w = img.shape[:2]
    y0, x0 = cy - r, cx - r
    ya, yb = max(y0, 0), min(y0 + mask.shape[0], h)
    xa, xb = max(x0, 0), min(x0 + mask.shape[1], w)
    if ya < yb and xa < xb:
        img[ya:yb, xa:xb][mask[ya - y0 : yb - y0, xa - x0 : xb - x0]] = color


def fill_circle_cv2(img: np.ndarray, center: tuple[int, int], radius: int, color: Color) -> None:
    """``cv2.circle(img, center, radius, color, thickness=-1)``, clipped to the image."""
    if radius < 0:
        return
    _paste_mask(img, center, _cv2_circle_mask(radius), color)


def _round_away(v: float) -> int:
    """C's ``(int)(v < 0 ? v - 0.5 : v + 0.5)``."""
    return int(v - 0.5) if v < 0 else int(v + 0.5)


def _clip_line(
    x1: int, y1: int, x2: int, y2: int, w: int, h: int
) -> tuple[int, int, int, int] | None:
    """pygame's Liang-Barsky clip of a segment to the surface (its ``clip_line``)."""
    p1, p3 = x1 - x2, y1 - y2
    p2, p4 = -p1, -p3
    q1, q2, q3, q4 = x1, w - x1, y1, h - y1
    if (p1 == 0 and q1 < 0) or (p2 == 0 and q2 < 0) or (p3 == 0 and q3 < 0) or (p4 == 0 and q4 < 0):
        return None
    nmax, pmin = 0.0, 1.0
    for p, qa, qb in ((p1, q1, q2), (p3, q3, q4)):
        if p:
            r1, r2 = qa / p, qb / -p
            if p < 0:
                nmax, pmin = max(nmax, r1), min(pmin, r2)
            else:
                nmax, pmin = max(nmax, r2), min(pmin, r1)
    if nmax > pmin:
        return None
    return (
        x1 + _round_away(p2 * nmax),
        y1 + _round_away(p4 * nmax),
        x1 + _round_away(p2 * pmin),
        y1 + _round_away(p4 * pmin),
    )


def _thin_line(img: np.ndarray, x1: int, y1: int, x2: int, y2: int, color: Color) -> None:
    """pygame's one-pixel Bresenham line (its ``draw_line``)."""
    h, w = img.shape[:2]
    pts = [(x2, y2)]
    if x1 == x2 or y1 == y2:
        n = max(abs(x2 - x1), abs(y2 - y1))
        sx, sy = (x2 > x1) - (x2 < x1), (y2 > y1) - (y2 < y1)
        pts += [(x1 + sx * k, y1 + sy * k) for k in range(n)]
    else:
        dx, sx = abs(x2 - x1), 1 if x1 < x2 else -1
        dy, sy = abs(y2 - y1), 1 if y1 < y2 else -1
        err = _cdiv(dx if dx > dy else -dy, 2)
        while x1 != x2 or y1 != y2:
            pts.append((x1, y1))
            e2 = err
            if e2 > -dx:
                err -= dy
                x1 += sx
            if e2 < dy:
                err += dx
                y1 += sy
    p = np.array(pts)
    keep = (p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)
    img[p[keep, 1], p[keep, 0]] = color


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _sign(x: int, default: int) -> int:
    return 1 if x > 0 else (-1 if x < 0 else default)


def draw_line(
    img: np.ndarray, p1: tuple[int, int], p2: tuple[int, int], width: int, color: Color
) -> None:
    """One segment of ``pygame.draw.lines(surface, color, False, [p1, p2], width)``, pygame <= 2.5.

    A Bresenham walk from ``p1`` to ``p2`` that stamps a ``width``-pixel run across the minor
    axis at every point (horizontal runs for steep lines, vertical runs otherwise), so the ends
    stay flat.
    """
    if width < 1:
        return
    h, w = img.shape[:2]
    clipped = _clip_line(*p1, *p2, w, h)
    if clipped is None:
        return
    if width == 1:
        _thin_line(img, *clipped, color)
        return
    (x1, y1), (x2, y2) = p1, p2
    dx, sx = abs(x2 - x1), 1 if x1 < x2 else -1
    dy, sy = abs(y2 - y1), 1 if y1 < y2 else -1
    grow_x = dx <= dy
    if clipped == (x1, y1, x2, y2):
        # Unclipped, the walk visits the classic Bresenham points, which have a closed form.
        if dx > dy:
            t = np.arange(dx + 1)
            xs, ys = x1 + sx * t, y1 + sy * ((t * dy + dx - dx // 2 - 1) // dx)
        else:
            t = np.arange(dy + 1)
            xs, ys = x1 + sx * ((t * dx + (dy - 1) // 2) // dy), y1 + sy * t
    else:
        xs, ys = _clipped_walk(p1, p2, clipped, width, (w, h))
    run = np.arange(width) - (width - 1) // 2
    if grow_x:
        px, py = xs[:, None] + run, np.broadcast_to(ys[:, None], (len(ys), width))
    else:
        px, py = np.broadcast_to(xs[:, None], (len(xs), width)), ys[:, None] + run
    keep = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    img[py[keep], px[keep]] = color


def _clipped_walk(
    p1: tuple[int, int],
    p2: tuple[int, int],
    clipped: tuple[int, int, int, int],
    width: int,
    size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """pygame's thick-line walk for a line that crosses the surface border: Bresenham with the
    whole line's slope and initial error, from the clipped start to the clipped end, then on
    towards ``p2`` while a run still touches the surface. Returns the visited ``xs, ys``."""
    w, h = size
    (ox1, oy1), (end_x, end_y) = p1, p2
    dx, sx = abs(end_x - ox1), 1 if ox1 < end_x else -1
    dy, sy = abs(end_y - oy1), 1 if oy1 < end_y else -1
    grow_x = dx <= dy
    err = _cdiv(dx if dx > dy else -dy, 2)
    x, y, x2, y2 = clipped
    lo, hi = -((width - 1) // 2), width // 2
    points = []

    def advance() -> None:
        nonlocal err, x, y
        e2 = err
        if e2 > -dx:
            err -= dy
            x += sx
        if e2 < dy:
            err += dx
            y += sy

    def run_inside() -> bool:
        if grow_x:
            return 0 <= y < h and (0 <= x + lo < w or 0 <= x + hi < w)
        return 0 <= x < w and (0 <= y + lo < h or 0 <= y + hi < h)

    while _sign(x - x2, sx) != sx or _sign(y - y2, sy) != sy:
        points.append((x, y))
        advance()
    while (y != end_y if grow_x else x != end_x) and run_inside():
        points.append((x, y))
        advance()
    points.append((x, y))
    p = np.array(points)
    return p[:, 0], p[:, 1]


def _blend_pixel(img: np.ndarray, x: int, y: int, color: Color, brightness: np.float32) -> None:
    """pygame's blended anti-aliased pixel: ``uint8(b * color + (1 - b) * background)`` in float32."""
    h, w = img.shape[:2]
    if not (0 <= x < w and 0 <= y < h):
        return
    b = np.float32(brightness)
    bg = img[y, x].astype(np.float32)
    img[y, x] = (b * np.float32(color) + (np.float32(1) - b) * bg).astype(np.uint8)


def draw_aaline(
    img: np.ndarray, start: tuple[float, float], end: tuple[float, float], color: Color
) -> None:
    """``pygame.draw.aaline(surface, color, start, end)`` (blended), pygame <= 2.5.

    Xiaolin Wu's line in float32, endpoints weighted by their pixel coverage; every pixel is
    blended with what is already on the canvas, so drawing order matters as in pygame.
    """
    f32 = np.float32
    h, w = img.shape[:2]
    from_x, from_y, to_x, to_y = f32(start[0]), f32(start[1]), f32(end[0]), f32(end[1])
    dx, dy = to_x - from_x, to_y - from_y
    if abs(dx) < 0.0001 and abs(dy) < 0.0001:
        x, y = int(np.floor(from_x + f32(0.5))), int(np.floor(from_y + f32(0.5)))
        _blend_pixel(img, x, y, color, f32(1))
        return
    clip_left, clip_top = f32(-1), f32(-1)
    clip_right, clip_bottom = clip_left + f32(w) + f32(1), clip_top + f32(h) + f32(1)
    steep = abs(dx) < abs(dy)
    if steep:
        from_x, from_y, to_x, to_y, dx, dy = from_y, from_x, to_y, to_x, dy, dx
        clip_left, clip_top, clip_right, clip_bottom = clip_top, clip_left, clip_bottom, clip_right
    if dx < 0:
        from_x, to_x, from_y, to_y, dx, dy = to_x, from_x, to_y, from_y, -dx, -dy
    if to_x <= clip_left or from_x >= clip_right:
        return
    gradient = dy / dx
    if from_x < clip_left:
        from_y += gradient * (clip_left - from_x)
        from_x = clip_left
    if to_x > clip_right:
        to_y += gradient * (clip_right - to_x)
        to_x = clip_right
    if gradient > 0:
        if to_y <= clip_top or from_y >= clip_bottom:
            return
        if from_y < clip_top:
            from_x += (clip_top - from_y) / gradient
            from_y = clip_top
        if to_y > clip_bottom:
            to_x += (clip_bottom - to_y) / gradient
            to_y = clip_bottom
    else:
        if from_y <= clip_top or to_y >= clip_bottom:
            return
        if to_y < clip_top:
            to_x += (clip_top - to_y) / gradient
            to_y = clip_top
        if from_y > clip_bottom:
            from_x += (clip_bottom - from_y) / gradient
            from_y = clip_bottom
    # Shifted down one pixel so that int() truncation acts as floor; drawn one pixel higher.
    from_y += f32(1)
    to_y += f32(1)

    def plot(major: int, minor: int, brightness: np.float32) -> None:
        x, y = (minor, major) if steep else (major, minor)
        _blend_pixel(img, x, y, color, brightness)

    def endpoint(x_pixel: int, y_end: np.float32, x_gap: np.float32) -> None:
        brightness = y_end - f32(int(y_end))
        if f32(int(y_end)) < y_end:
            plot(x_pixel, int(y_end), brightness * x_gap)
        plot(x_pixel, int(y_end) - 1, (f32(1) - brightness) * x_gap)

    x_start = int(from_x)
    intersect_y = from_y + gradient * (f32(x_start) - from_x)
    if to_x > clip_left + f32(1):
        endpoint(x_start, intersect_y, f32(1 + x_start) - from_x)
        intersect_y += gradient
        x_start += 1
    x_end = int(np.ceil(to_x))
    if from_x < clip_right - f32(1):
        y_end = to_y + gradient * (f32(x_end) - to_x)
        endpoint(x_end, y_end, f32(1 - x_end) + to_x)
    for x in range(x_start, x_end):
        y = int(intersect_y)
        brightness = f32(1) - intersect_y + f32(y)
        plot(x, y - 1, brightness)
        if f32(y) < intersect_y:
            plot(x, y, f32(1) - brightness)
        intersect_y += gradient


@cache
def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR source indices and 11-bit fixed-point weights along one axis."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    f = f - i0.astype(np.float32)
    low = i0 < 0
    i0[low], f[low] = 0, 0.0
    high = i0 >= src - 1
    i0[high], f[high] = src - 1, 0.0
    i1 = np.minimum(i0 + 1, src - 1)
    # Each weight is rounded on its own, as OpenCV does; they need not sum to 2048.
    w0 = np.rint((np.float32(1.0) - f) * np.float32(2048)).astype(np.int32)
    w1 = np.rint(f * np.float32(2048)).astype(np.int32)
    return i0, i1, np.stack([w0, w1])


def resize_linear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(img, (width, height))`` for a uint8 ``(H, W, C)`` image, bit for bit.

    OpenCV's 8-bit bilinear path: half-pixel centres, 11-bit weights, a horizontal pass in int32,
    then its vectorised vertical pass ``(((a >> 4) * b0 >> 16) + ((c >> 4) * b1 >> 16) + 2) >> 2``.
    """
    width, height = size
    xi0, xi1, xw = _linear_taps(img.shape[1], width)
    yi0, yi1, yw = _linear_taps(img.shape[0], height)
    # Weights broadcast over the channel axes that follow.
    tail = (1,) * (img.ndim - 2)
    wx0, wx1 = xw[0].reshape((1, -1, *tail)), xw[1].reshape((1, -1, *tail))
    wy0, wy1 = yw[0].reshape((-1, 1, *tail)), yw[1].reshape((-1, 1, *tail))

    def horizontal(rows: np.ndarray) -> np.ndarray:
        src = img[rows].astype(np.int32)
        return src[:, xi0] * wx0 + src[:, xi1] * wx1

    out = (((horizontal(yi0) >> 4) * wy0 >> 16) + ((horizontal(yi1) >> 4) * wy1 >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def draw_marker_cross(
    img: np.ndarray, center: tuple[int, int], size: int, thickness: int, color: Color
) -> None:
    """``cv2.drawMarker(img, center, color, cv2.MARKER_CROSS, size, thickness)``.

    Two axis-aligned strokes of half-length ``size // 2``. Exact for thickness 1 (OpenCV's
    8-connected line); a thicker stroke is drawn as a ``thickness``-pixel band, which is where
    OpenCV's round-capped thick lines differ by a pixel at the ends.
    """
    if thickness < 1:
        return
    h, w = img.shape[:2]
    cx, cy = int(center[0]), int(center[1])
    half = size // 2
    lo, hi = -((thickness - 1) // 2), thickness // 2
    for xa, xb, ya, yb in (
        (cx - half, cx + half, cy + lo, cy + hi),
        (cx + lo, cx + hi, cy - half, cy + half),
    ):
        xa, xb, ya, yb = max(xa, 0), min(xb, w - 1), max(ya, 0), min(yb, h - 1)
        if xa <= xb and ya <= yb:
            img[ya : yb + 1, xa : xb + 1] = color
