"""Scene samplers: random scenes, GenEval reference scenes and the held-out split, all deterministic from a numpy
Generator.

Data flow: vocab (names, grid) -> **sample** (Scene specs) -> render (pixels); text and edits build on these samplers.

Two placement modes (research/eval.md §9.1, research/feasibility2.md):
- aligned (default): every object fills a k×k block of whole grid cells (k = 1/2/3 for small/medium/large, via
  `Obj.at_cell`), blocks never touch (at least one empty cell between any two blocks), everything inside the image.
  This is what makes a small VQ codebook near-lossless.
- unaligned (`aligned=False`): continuous centres and sizes drawn inside the §9.1 size bands, a gap of at least
  MIN_GAP between boxes and a margin of at least MIN_MARGIN to the image border.

The held-out split: HELDOUT_COLOR_SHAPE and HELDOUT_RELATIONS are never produced by a `split="train"` sampler (no
object, no object pair, no text); `is_heldout` tells evaluation which items to report separately.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np

from star.shapes import vocab
from star.shapes.scene import Obj, Scene, box_gap, relation_margin, relative_position

Split = Literal["train", "eval"]

MIN_GAP = 0.03  # unaligned: least gap between two boxes (normalised)
MIN_MARGIN = 0.02  # unaligned: least margin between a box and the image border
POSITION_MARGIN = 0.7  # least normalised revised offset on the relation's axis in position reference scenes
MAX_TRIES = 200  # scene-level restarts before a sampler gives up with a ValueError
UNALIGNED_TRIES = 300  # placement draws per object in the unaligned mode

# ----------------------------------------------------------------------------------------------------------------
# Held-out split: compositional generalisation is measured on these, never trained on.

HELDOUT_COLOR_SHAPE: frozenset[tuple[str, str]] = frozenset({
    ("purple", "circle"),
    ("orange", "square"),
    ("pink", "triangle"),
    ("yellow", "diamond"),
    ("blue", "star"),
    ("brown", "cross"),
    ("green", "arrow"),
})
"""(colour, class) pairs, one per class: no training object has this colour and class."""

HELDOUT_RELATIONS: frozenset[tuple[str, str, str]] = frozenset({
    ("circle", "left of", "square"),
    ("triangle", "left of", "star"),
    ("arrow", "left of", "diamond"),
    ("star", "above", "cross"),
    ("square", "above", "triangle"),
    ("diamond", "above", "circle"),
})
"""(class A, relation, class B) triples in canonical form ("left of"/"above"); (A left of B) ≡ (B right of A)."""

_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def canonical_relation(a: str, rel: str, b: str) -> tuple[str, str, str]:
    """(A, rel, B) rewritten with rel in {"left of", "above"}: (A right of B) -> (B left of A)."""
    if rel not in _INVERSE:
        raise ValueError(f"relation must be one of {vocab.RELATIONS}, got {rel!r}")
    return (a, rel, b) if rel in ("left of", "above") else (b, _INVERSE[rel], a)


def heldout_pair(color: str, shape: str) -> bool:
    return (color, shape) in HELDOUT_COLOR_SHAPE


def heldout_relation(a: str, rel: str, b: str) -> bool:
    return canonical_relation(a, rel, b) in HELDOUT_RELATIONS


def _pair_heldout(a: Obj, b: Obj) -> bool:
    """Does any GenEval relation between a and b (either order) form a held-out triple?"""
    return any(heldout_relation(a.shape, rel, b.shape) for rel in relative_position(a.box(), b.box()))


def _scene_heldout(scene: Scene) -> bool:
    objs = scene.objects
    if any(heldout_pair(o.color, o.shape) for o in objs):
        return True
    return any(_pair_heldout(objs[i], objs[j]) for i in range(len(objs)) for j in range(i + 1, len(objs)))


def _metadata_heldout(meta: dict) -> bool:
    include = meta.get("include", [])
    if any("color" in r and heldout_pair(r["color"], r["class"]) for r in include):
        return True
    for r in include:
        if "position" in r:
            rel, g = r["position"]
            if heldout_relation(r["class"], rel, include[g]["class"]):
                return True
    return False


def is_heldout(x) -> bool:
    """True when a GenEval metadata dict, a WISE item (its "spec"), a Scene (or its dict), or an edit item (anything
    with .source and .target scenes) contains a held-out colour–class pair or class–relation–class triple."""
    if isinstance(x, Scene):
        return _scene_heldout(x)
    if hasattr(x, "source") and hasattr(x, "target"):
        return is_heldout(x.source) or is_heldout(x.target)
    if isinstance(x, dict):
        if "spec" in x:
            return _metadata_heldout(x["spec"])
        if "include" in x:
            return _metadata_heldout(x)
        if "objects" in x:
            return _scene_heldout(Scene.from_dict(x))
    raise TypeError(f"is_heldout takes GenEval metadata, a WISE item, a Scene or an edit item, got {type(x).__name__}")


def check_split(split: str) -> None:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")


def allowed_colors(shape: str, split: Split = "train") -> list[str]:
    """Colours a sampler may give an object of class `shape` in this split."""
    return [c for c in vocab.COLORS if split != "train" or not heldout_pair(c, shape)]


def random_color(rng: np.random.Generator, shape: str, split: Split = "train", exclude: tuple[str, ...] = ()) -> str:
    colors = [c for c in allowed_colors(shape, split) if c not in exclude]
    return colors[int(rng.integers(len(colors)))]


# ----------------------------------------------------------------------------------------------------------------
# Placement


def is_aligned(obj: Obj) -> bool:
    """Does `obj` fill a whole block of grid cells exactly as Obj.at_cell makes it?"""
    if obj.aspect != "regular" or obj.size_band not in vocab.CELLS_PER_SIZE:
        return False
    return block_of(obj) is not None


def block_of(obj: Obj) -> tuple[int, int, int] | None:
    """(col, row, k) of an aligned object's block, or None when it is not on the grid."""
    g, k = vocab.GRID, vocab.CELLS_PER_SIZE[obj.size_band]
    col, row = round(obj.cx * g - k / 2), round(obj.cy * g - k / 2)
    if not (0 <= col <= g - k and 0 <= row <= g - k):
        return None
    ref = Obj.at_cell(obj.shape, obj.color, col, row, obj.size_band)
    if max(abs(ref.cx - obj.cx), abs(ref.cy - obj.cy), abs(ref.size - obj.size)) > 1e-6:
        return None
    return col, row, k


def is_aligned_scene(scene: Scene) -> bool:
    return all(is_aligned(o) for o in scene.objects)


def fits(obj: Obj, others: list[Obj], aligned: bool) -> bool:
    """Is `obj` inside the image and far enough from every object in `others` for this placement mode?"""
    x0, y0, x1, y1 = obj.box()
    if aligned:
        if not is_aligned(obj):
            return False
        min_gap = 1.0 / vocab.GRID - 1e-9  # one whole empty cell between blocks (plus the fill margins)
    else:
        if min(x0, y0) < MIN_MARGIN - 1e-9 or max(x1, y1) > 1 - MIN_MARGIN + 1e-9:
            return False
        min_gap = MIN_GAP - 1e-9
    return all(box_gap(obj.box(), o.box()) >= min_gap for o in others)


def layout_ok(objects: list[Obj], aligned: bool) -> bool:
    """Every object fits against every other one (used to validate edit targets)."""
    return all(fits(o, objects[:i] + objects[i + 1:], aligned) for i, o in enumerate(objects))


def place(
    rng: np.random.Generator,
    shape: str,
    color: str,
    band: str,
    others: list[Obj],
    *,
    aligned: bool = True,
    accept: Callable[[Obj], bool] | None = None,
    **obj_kw,
) -> Obj | None:
    """A new object of `band` that fits among `others` and passes `accept`, or None if there is no room.

    Aligned: uniform over every valid grid block (exhaustive, so None means truly impossible). Unaligned: up to
    UNALIGNED_TRIES draws of size (uniform in the band) and centre (uniform inside the border margin).
    """
    if band not in vocab.SIZE_BANDS:
        raise ValueError(f"size band must be one of {tuple(vocab.SIZE_BANDS)}, got {band!r}")
    if aligned:
        g, k = vocab.GRID, vocab.CELLS_PER_SIZE[band]
        half = k / g * vocab.FILL / 2
        boxes = [o.box() for o in others]
        cands = []
        for row in range(g - k + 1):
            for col in range(g - k + 1):
                cx, cy = (col + k / 2) / g, (row + k / 2) / g
                box = (cx - half, cy - half, cx + half, cy + half)
                if any(box_gap(box, b) < 1.0 / g - 1e-9 for b in boxes):  # the same test as fits(), cheaper
                    continue
                o = Obj.at_cell(shape, color, col, row, band, **obj_kw)
                if accept is None or accept(o):
                    cands.append(o)
        return cands[int(rng.integers(len(cands)))] if cands else None
    lo, hi = vocab.SIZE_BANDS[band]
    for _ in range(UNALIGNED_TRIES):
        size = float(rng.uniform(lo, hi))
        half = size / 2
        cx = float(rng.uniform(MIN_MARGIN + half, 1 - MIN_MARGIN - half))
        cy = float(rng.uniform(MIN_MARGIN + half, 1 - MIN_MARGIN - half))
        o = Obj(shape=shape, color=color, cx=cx, cy=cy, size=size, **obj_kw)
        if fits(o, others, False) and (accept is None or accept(o)):
            return o
    return None


def _train_ok(obj: Obj, others: list[Obj]) -> bool:
    return not heldout_pair(obj.color, obj.shape) and not any(_pair_heldout(obj, o) for o in others)


# ----------------------------------------------------------------------------------------------------------------
# Samplers


def random_scene(
    rng: np.random.Generator,
    *,
    aligned: bool = True,
    n_objects: int | None = None,
    split: Split = "train",
    background: str | None = None,
    sizes: tuple[str, ...] = ("medium",),
    classes: tuple[str, ...] = vocab.CLASSES,
) -> Scene:
    """A random scene of `n_objects` (default: 1–4) objects of random class and colour, sizes drawn from `sizes`."""
    check_split(split)
    n = int(rng.integers(1, 5)) if n_objects is None else n_objects
    if n < 0:
        raise ValueError(f"n_objects must be >= 0, got {n}")
    background = vocab.DEFAULT_BACKGROUND if background is None else background
    for _ in range(MAX_TRIES):
        objs: list[Obj] = []
        for _ in range(n):
            shape = classes[int(rng.integers(len(classes)))]
            color = random_color(rng, shape, split)
            band = sizes[int(rng.integers(len(sizes)))]
            accept = (lambda o, objs=objs: _train_ok(o, objs)) if split == "train" else None
            obj = place(rng, shape, color, band, objs, aligned=aligned, accept=accept)
            if obj is None:
                break
            objs.append(obj)
        else:
            return Scene(objects=objs, background=background)
    raise ValueError(f"could not place {n} objects of sizes {sizes} ({'aligned' if aligned else 'unaligned'}) "
                     f"after {MAX_TRIES} tries")


def _validate_metadata(meta: dict) -> list[dict]:
    include = meta.get("include")
    if not include:
        raise ValueError(f"GenEval metadata needs a non-empty 'include' list: {meta}")
    for i, r in enumerate(include):
        if r.get("class") not in vocab.CLASSES:
            raise ValueError(f"include[{i}].class must be one of {vocab.CLASSES}, got {r.get('class')!r}")
        if not isinstance(r.get("count"), int) or r["count"] < 1:
            raise ValueError(f"include[{i}].count must be an integer >= 1, got {r.get('count')!r}")
        if "color" in r and r["color"] not in vocab.COLORS:
            raise ValueError(f"include[{i}].color must be one of {tuple(vocab.COLORS)}, got {r['color']!r}")
        if "position" in r:
            rel, g = r["position"]
            if rel not in vocab.RELATIONS or not isinstance(g, int) or not 0 <= g < i:
                raise ValueError(f"include[{i}].position must be [relation, earlier group index], got {r['position']}")
    totals: dict[str, int] = {}
    for r in include:
        totals[r["class"]] = totals.get(r["class"], 0) + r["count"]
    for r in meta.get("exclude", []):
        if totals.get(r["class"], 0) >= r["count"]:
            raise ValueError(f"metadata includes {totals[r['class']]} {r['class']} but excludes >= {r['count']}")
    return include


def geneval_reference_scene(
    metadata: dict,
    rng: np.random.Generator,
    *,
    aligned: bool = True,
    split: Split = "train",
    sizes: tuple[str, ...] = ("medium",),
    background: str | None = None,
) -> Scene:
    """A scene that satisfies GenEval `metadata` exactly, with margins from every judge boundary.

    Exactly the included objects (no extras, so every exclude holds); named colours as given, others random;
    objects never touch; for a position clause (rel, g) every object of the clause and every object of group g
    have relative_position == {rel} and relation_margin >= POSITION_MARGIN. In split "train" the scene avoids every
    held-out pair and relation (and metadata that names one is an error).
    """
    check_split(split)
    include = _validate_metadata(metadata)
    if split == "train" and _metadata_heldout(metadata):
        raise ValueError(f"metadata names a held-out combination, not allowed in split 'train': {metadata['prompt']!r}"
                         if "prompt" in metadata else "metadata names a held-out combination")
    background = vocab.DEFAULT_BACKGROUND if background is None else background
    for _ in range(MAX_TRIES):
        objs: list[Obj] = []
        groups: list[list[Obj]] = []
        ok = True
        for r in include:
            group: list[Obj] = []
            targets = groups[r["position"][1]] if "position" in r else []
            rel = r["position"][0] if "position" in r else None
            for _ in range(r["count"]):
                color = r.get("color") or random_color(rng, r["class"], split)
                band = sizes[int(rng.integers(len(sizes)))]

                def accept(o: Obj, objs=objs, targets=targets, rel=rel) -> bool:
                    if split == "train" and not _train_ok(o, objs):
                        return False
                    for t in targets:
                        if relative_position(o.box(), t.box()) != {rel}:
                            return False
                        if relation_margin(o.box(), t.box(), rel) < POSITION_MARGIN:
                            return False
                    return True

                obj = place(rng, r["class"], color, band, objs, aligned=aligned, accept=accept)
                if obj is None:
                    ok = False
                    break
                objs.append(obj)
                group.append(obj)
            if not ok:
                break
            groups.append(group)
        if ok:
            # Objects were placed group by group; shuffle the drawing order so it carries no information.
            order = rng.permutation(len(objs))
            return Scene(objects=[objs[i] for i in order], background=background)
    raise ValueError(f"no {'aligned' if aligned else 'unaligned'} scene satisfies {metadata.get('prompt', metadata)!r} "
                     f"after {MAX_TRIES} tries")


__all__ = [
    "HELDOUT_COLOR_SHAPE", "HELDOUT_RELATIONS", "MIN_GAP", "MIN_MARGIN", "POSITION_MARGIN",
    "canonical_relation", "heldout_pair", "heldout_relation", "is_heldout", "check_split", "allowed_colors",
    "random_color",
    "is_aligned", "block_of", "is_aligned_scene", "fits", "layout_ok", "place", "random_scene",
    "geneval_reference_scene",
]
