"""Renderer: Scene → RGB image at any square resolution, and the canonical shape masks the parser fits against.

Each object is rasterised at `supersample`× the target size (Pillow polygons/ellipses) and reduced by exact area
averaging (BOX filter), so every edge pixel is a convex blend of the two colours it touches: no ringing, nothing
off the line between two palette colours. Deterministic for a given spec.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from star.shapes import vocab
from star.shapes.scene import ASPECTS, Obj, Scene

HOLLOW_WIDTH = 0.15  # ring width of a hollow object, as a fraction of its size


def _star_points(inner: float = 0.4) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        r = 1.0 if i % 2 == 0 else inner
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((r * math.cos(a), r * math.sin(a)))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)) for x, y in pts]  # stretched to fill the unit box


_T = 1 / 3  # cross arm width
# Canonical outlines in the unit box (x right, y down), each touching all four sides.
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "triangle": [(0.5, 0), (1, 1), (0, 1)],
    "diamond": [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)],
    "star": _star_points(),
    "cross": [(_T, 0), (1 - _T, 0), (1 - _T, _T), (1, _T), (1, 1 - _T), (1 - _T, 1 - _T), (1 - _T, 1), (_T, 1),
              (_T, 1 - _T), (0, 1 - _T), (0, _T), (_T, _T)],
    "arrow": [(0, 0.3), (0.55, 0.3), (0.55, 0), (1, 0.5), (0.55, 1), (0.55, 0.7), (0, 0.7)],  # pointing right
}


def _oriented(points: list[tuple[float, float]], orientation: str) -> list[tuple[float, float]]:
    """Rotate/flip canonical points (which point up, or right for the arrow) into `orientation`."""
    transforms = {
        "up": lambda x, y: (x, y), "right": lambda x, y: (x, y),
        "down": lambda x, y: (x, 1 - y),            # vertical flip (triangle, star); arrow-right -> see below
        "left": lambda x, y: (1 - x, y),
    }
    if orientation in ("up", "down") and points is _POLYGONS["arrow"]:
        # arrow up/down: rotate the right-pointing arrow by -90° / +90°
        return [(y, 1 - x) for x, y in points] if orientation == "up" else [(1 - y, x) for x, y in points]
    return [transforms[orientation](x, y) for x, y in points]


def _draw_mask(obj_shape: str, orientation: str, box_px: tuple[float, float, float, float], canvas: int) -> np.ndarray:
    """Binary mask (canvas × canvas) of one shape filling `box_px` (pixel coords at canvas scale)."""
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box_px
    if obj_shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=255)
    else:
        pts = _oriented(_POLYGONS[obj_shape], orientation)
        draw.polygon([(x0 + px * (x1 - x0 - 1), y0 + py * (y1 - y0 - 1)) for px, py in pts], fill=255)
    return np.asarray(img) > 127


def object_mask(obj: Obj, resolution: int, supersample: int = 4) -> np.ndarray:
    """Boolean mask of `obj` at `resolution * supersample` (the hollow ring applied)."""
    canvas = resolution * supersample
    x0, y0, x1, y1 = (v * canvas for v in obj.box())
    mask = _draw_mask(obj.shape, obj.orientation, (round(x0), round(y0), round(x1), round(y1)), canvas)
    if obj.hollow:
        width = max(1, round(HOLLOW_WIDTH * obj.size * canvas))
        mask = mask & ~ndimage.binary_erosion(mask, iterations=width)
    return mask


def render(scene: Scene, resolution: int = vocab.DEFAULT_RESOLUTION, supersample: int = 4) -> Image.Image:
    """Scene → RGB PIL image of `resolution`² pixels."""
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8 px, got {resolution}")
    canvas = resolution * supersample
    rgb = np.empty((canvas, canvas, 3), dtype=np.uint8)
    rgb[:] = vocab.BACKGROUNDS[scene.background]
    for obj in scene.objects:
        rgb[object_mask(obj, resolution, supersample)] = vocab.COLORS[obj.color]
    img = Image.fromarray(rgb, "RGB")
    return img.resize((resolution, resolution), Image.BOX) if supersample > 1 else img


@lru_cache(maxsize=None)
def template(shape: str, orientation: str, n: int = 32) -> np.ndarray:
    """Canonical n×n boolean template of a class in one orientation, filling the square (what the parser fits)."""
    ss = 8
    mask = _draw_mask(shape, orientation, (0, 0, n * ss, n * ss), n * ss)
    return mask.reshape(n, ss, n, ss).mean(axis=(1, 3)) >= 0.5


def demo_scene() -> Scene:
    """The README's demo: one object of every class on the aligned grid."""
    cells = [(0, 0), (3, 0), (6, 0), (0, 3), (3, 3), (6, 3), (3, 6)]
    colors = ["red", "orange", "yellow", "green", "blue", "purple", "pink"]
    return Scene(objects=[Obj.at_cell(s, c, col, row) for s, c, (col, row) in zip(vocab.CLASSES, colors, cells)])


__all__ = ["render", "object_mask", "template", "demo_scene", "ASPECTS"]
