"""Scene specs: JSON-serialisable dataclasses for objects and scenes, plus the geometry the judges share.

Coordinates are normalised to the image side (x right, y down, both in [0, 1]), so one spec renders at any
resolution. An object is drawn to fill its box exactly (every class touches all four sides of its box), so the
box *is* the object's bounding box: `Obj.box()` is what a perfect detector would report.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from star.shapes import vocab

ASPECTS: dict[str, tuple[float, float]] = {"regular": (1.0, 1.0), "wide": (1.0, 0.5), "tall": (0.5, 1.0)}


@dataclass(kw_only=True)
class Obj:
    """One shape. `size` is the max side of its box over the image side (the size-band quantity)."""

    shape: str
    """Class name, one of vocab.CLASSES."""
    color: str
    """Fill colour, one of vocab.COLORS."""
    cx: float
    """Centre x, normalised."""
    cy: float
    """Centre y, normalised."""
    size: float
    """Max box side / image side."""
    orientation: str = ""
    """One of vocab.ORIENTATIONS[shape]; empty means the canonical one."""
    aspect: str = "regular"
    """regular (1:1), wide (2:1) or tall (1:2)."""
    hollow: bool = False
    """Drawn as a ring of width 15% of its size instead of filled."""

    def __post_init__(self) -> None:
        if self.shape not in vocab.CLASSES:
            raise ValueError(f"Obj.shape must be one of {vocab.CLASSES}, got {self.shape!r}")
        if self.color not in vocab.COLORS:
            raise ValueError(f"Obj.color must be one of {tuple(vocab.COLORS)}, got {self.color!r}")
        if not self.orientation:
            self.orientation = vocab.ORIENTATIONS[self.shape][0]
        if self.orientation not in vocab.ORIENTATIONS[self.shape]:
            raise ValueError(
                f"Obj.orientation for a {self.shape} must be one of {vocab.ORIENTATIONS[self.shape]}, "
                f"got {self.orientation!r}"
            )
        if self.aspect not in ASPECTS:
            raise ValueError(f"Obj.aspect must be one of {tuple(ASPECTS)}, got {self.aspect!r}")
        if not 0.0 < self.size <= 1.0:
            raise ValueError(f"Obj.size must be in (0, 1], got {self.size}")

    @property
    def size_band(self) -> str:
        return vocab.size_band(self.size)

    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1), normalised."""
        fw, fh = ASPECTS[self.aspect]
        hw, hh = self.size * fw / 2, self.size * fh / 2
        return (self.cx - hw, self.cy - hh, self.cx + hw, self.cy + hh)

    @classmethod
    def at_cell(cls, shape: str, color: str, col: int, row: int, band: str = "medium", **kw) -> "Obj":
        """An aligned object filling the k×k block of grid cells whose top-left cell is (col, row)."""
        k = vocab.CELLS_PER_SIZE[band]
        if not (0 <= col <= vocab.GRID - k and 0 <= row <= vocab.GRID - k):
            raise ValueError(f"a {band} block at cell ({col}, {row}) does not fit the {vocab.GRID}x{vocab.GRID} grid")
        g = vocab.GRID
        return cls(shape=shape, color=color, cx=(col + k / 2) / g, cy=(row + k / 2) / g, size=k / g * vocab.FILL, **kw)


@dataclass(kw_only=True)
class Scene:
    """A background and a list of objects (drawn in list order)."""

    objects: list[Obj] = field(default_factory=list)
    background: str = vocab.DEFAULT_BACKGROUND
    version: str = vocab.VOCAB_VERSION

    def __post_init__(self) -> None:
        if self.background not in vocab.BACKGROUNDS:
            raise ValueError(f"Scene.background must be one of {tuple(vocab.BACKGROUNDS)}, got {self.background!r}")
        if self.version != vocab.VOCAB_VERSION:
            raise ValueError(f"scene vocabulary {self.version!r} does not match this code's {vocab.VOCAB_VERSION!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        known = {f.name for f in fields(Obj)}
        objects = []
        for i, o in enumerate(d.get("objects", [])):
            extra = set(o) - known
            if extra:
                raise ValueError(f"scene object {i} has unknown fields {sorted(extra)}")
            objects.append(Obj(**o))
        return cls(
            objects=objects,
            background=d.get("background", vocab.DEFAULT_BACKGROUND),
            version=d.get("version", vocab.VOCAB_VERSION),
        )

    @classmethod
    def from_json(cls, text: str) -> "Scene":
        return cls.from_dict(json.loads(text))


# ----------------------------------------------------------------------------------------------------------------
# Geometry shared by samplers and judges


def relative_position(box_a, box_b, threshold: float = 0.1) -> set[str]:
    """GenEval's relation of A to B for boxes (x0, y0, x1, y1) in any consistent unit (image y points down).

    Port of GenEval's rule: offsets between centres are shrunk by threshold·(dimA + dimB) per axis, then divided by
    the *unrevised* offset norm; a component beyond ±0.5 names a relation.
    """
    ca = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    cb = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    da = (abs(box_a[2] - box_a[0]), abs(box_a[3] - box_a[1]))
    db = (abs(box_b[2] - box_b[0]), abs(box_b[3] - box_b[1]))
    off = (ca[0] - cb[0], ca[1] - cb[1])
    rev = [max(abs(o) - threshold * (a + b), 0.0) * math.copysign(1.0, o) if o != 0 else 0.0
           for o, a, b in zip(off, da, db)]
    if all(abs(r) < 1e-3 for r in rev):
        return set()
    norm = math.hypot(*off)
    dx, dy = rev[0] / norm, rev[1] / norm
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def relation_margin(box_a, box_b, relation: str, threshold: float = 0.1) -> float:
    """The normalised revised offset along the relation's axis (positive when the relation holds): |dx| or |dy|."""
    ca = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    cb = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    axis = 0 if relation in ("left of", "right of") else 1
    sign = -1.0 if relation in ("left of", "above") else 1.0
    off = (ca[0] - cb[0], ca[1] - cb[1])
    dim = abs(box_a[2 + axis] - box_a[axis]) + abs(box_b[2 + axis] - box_b[axis])
    o = off[axis]
    rev = max(abs(o) - threshold * dim, 0.0) * math.copysign(1.0, o) if o != 0 else 0.0
    norm = math.hypot(*off)
    return sign * rev / norm if norm > 0 else 0.0


def box_gap(box_a, box_b) -> float:
    """Chebyshev gap between two boxes (negative when they overlap)."""
    gx = max(box_b[0] - box_a[2], box_a[0] - box_b[2])
    gy = max(box_b[1] - box_a[3], box_a[1] - box_b[3])
    return max(gx, gy)
