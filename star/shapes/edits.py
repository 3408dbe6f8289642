"""Edit triplets (source scene, instruction, target scene) for the nine ImgEdit edit types (research/eval.md §10.3).

Data flow: sample (source scenes) -> **edits** (exact target scenes, templated instructions from text) -> records
(training triplets) and imgedit (scoring). Because the source scene is known, the target is known exactly.

Types and what changes (everything else is kept exactly):
- add: one new object (class, colour; optionally placed relative to a named object)
- remove: one named object
- replace: a named object becomes another class (optionally another colour), same place and size
- adjust: a named object's colour, or its size band (aligned: the nearest grid block of the new size)
- background: the background colour
- style: outline style, every object hollow (the renderer's style; grayscale/mosaic are not generated)
- extract: only the named object, same size, centred, on pure white #FFFFFF (EXTRACT_BACKDROP; render_target)
- action: a named object moves to a named region, or flips (triangle/star upside down; arrow to a new direction)
- compose: two of remove / recolour / replace / resize on two different named objects
Targets stay valid layouts of the source's placement mode (aligned targets stay on the grid, gaps kept).
"""

from __future__ import annotations

import copy
from fractions import Fraction
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from PIL import Image

from star.shapes import vocab
from star.shapes.render import object_mask, render
from star.shapes.sample import (
    MIN_MARGIN, POSITION_MARGIN, Split, allowed_colors, check_split, fits, is_aligned_scene, is_heldout, layout_ok,
    place, random_scene,
)
from star.shapes.scene import Obj, Scene, relation_margin, relative_position
from star.shapes.text import EDIT_RELATIONS, REGIONS, describe, edit_instruction, refer
from star.shapes.vocab import with_article

EDIT_TYPES: tuple[str, ...] = ("add", "remove", "replace", "adjust", "background", "style", "extract", "action",
                               "compose")
IMGEDIT_COUNTS: dict[str, int] = {"extract": 117, "style": 100, "add": 95, "adjust": 94, "background": 94,
                                  "replace": 92, "remove": 86, "action": 36, "compose": 23}
"""Items per type in ImgEdit's basic suite (737); imgedit_items keeps these proportions."""
EXTRACT_BACKDROP: tuple[int, int, int] = (255, 255, 255)
"""Extract targets render on pure #FFFFFF, which is not a scene background (vocab's 'white' object is 245)."""
EDIT_TRIES = 50
MIN_MOVE = 2 / vocab.GRID  # a move shifts the object by at least two cells on some axis


class EditImpossible(ValueError):
    """This edit type cannot be applied to this source scene (no referable object, no free room, ...)."""


@dataclass(kw_only=True)
class EditItem:
    """One edit triplet. For extract, `target.background` is not drawn: the target renders on EXTRACT_BACKDROP."""

    source: Scene
    instruction: str
    target: Scene
    edit_type: str
    details: dict = field(default_factory=dict)
    """What changed, JSON-serialisable: {"op", "index" (in the source), ...}; compose: {"op", "ops": [d1, d2]}."""

    def to_dict(self) -> dict:
        return {"source": self.source.to_dict(), "instruction": self.instruction, "target": self.target.to_dict(),
                "edit_type": self.edit_type, "details": self.details}

    @classmethod
    def from_dict(cls, d: dict) -> "EditItem":
        return cls(source=Scene.from_dict(d["source"]), instruction=d["instruction"],
                   target=Scene.from_dict(d["target"]), edit_type=d["edit_type"], details=d.get("details", {}))


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def render_on(scene: Scene, backdrop: tuple[int, int, int], resolution: int = vocab.DEFAULT_RESOLUTION,
              supersample: int = 4) -> Image.Image:
    """Render `scene`'s objects on an arbitrary RGB backdrop (same rasteriser and BOX reduction as render.render)."""
    canvas = resolution * supersample
    rgb = np.empty((canvas, canvas, 3), dtype=np.uint8)
    rgb[:] = backdrop
    for obj in scene.objects:
        rgb[object_mask(obj, resolution, supersample)] = vocab.COLORS[obj.color]
    img = Image.fromarray(rgb, "RGB")
    return img.resize((resolution, resolution), Image.BOX) if supersample > 1 else img


def render_source(item: EditItem, resolution: int = vocab.DEFAULT_RESOLUTION) -> Image.Image:
    return render(item.source, resolution)


def render_target(item: EditItem, resolution: int = vocab.DEFAULT_RESOLUTION) -> Image.Image:
    """The ground-truth edited image (extract: the object on pure white)."""
    if item.edit_type == "extract":
        return render_on(item.target, EXTRACT_BACKDROP, resolution)
    return render(item.target, resolution)


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def _pick(rng: np.random.Generator, seq):
    if not seq:
        raise EditImpossible("nothing to choose from")
    return seq[int(rng.integers(len(seq)))]


def _referable(scene: Scene, exclude_white: bool = False) -> list[int]:
    return [i for i, o in enumerate(scene.objects)
            if refer(scene, i) is not None and not (exclude_white and o.color == "white")]


def _centre(o: Obj) -> list[float]:
    return [round(o.cx, 6), round(o.cy, 6)]


def _obj_at(o: Obj, cx: float, cy: float, size: float | None = None, **kw) -> Obj:
    return replace(o, cx=cx, cy=cy, size=o.size if size is None else size, **kw)


def centred(o: Obj, aligned: bool) -> Obj:
    """`o` moved to the image centre (on the grid's central block when aligned), as extract places it."""
    return _obj_at(o, *_region_centre("the centre", o.size, aligned))


def _region_centre(region: str, size: float, aligned: bool) -> tuple[float, float]:
    """Centre of a square object of max side `size` placed in a named region."""
    if aligned:
        g = vocab.GRID
        k = round(size / vocab.FILL * g)
        lo, hi, mid = k / 2 / g, (g - k / 2) / g, ((g - k) // 2 + k / 2) / g
    else:
        pad = MIN_MARGIN + 0.03
        lo, hi, mid = pad + size / 2, 1 - pad - size / 2, 0.5
    return {
        "the top left corner": (lo, lo), "the top right corner": (hi, lo), "the bottom left corner": (lo, hi),
        "the bottom right corner": (hi, hi), "the centre": (mid, mid),
    }[region]


# Per-object operations used by adjust / replace / remove and by compose. Each edits `objs` (a copy of the source
# objects) in place and returns (instruction, details); removal only marks the object (None), so indices stay valid.


def _op_remove(src: Scene, objs: list, i: int, rng, aligned: bool, split: Split):
    ref = refer(src, i)
    objs[i] = None
    return edit_instruction("remove", rng, ref=ref), {"op": "remove", "index": i, "object": asdict(src.objects[i])}


def _op_color(src: Scene, objs: list, i: int, rng, aligned: bool, split: Split):
    o = objs[i]
    new = _pick(rng, [c for c in allowed_colors(o.shape, split) if c != o.color])
    objs[i] = replace(o, color=new)
    return (edit_instruction("color", rng, ref=refer(src, i), color=new),
            {"op": "adjust", "attribute": "color", "index": i, "from": o.color, "to": new})


def _op_replace(src: Scene, objs: list, i: int, rng, aligned: bool, split: Split):
    o = objs[i]
    shape = _pick(rng, [c for c in vocab.CLASSES if c != o.shape])
    keep_color = o.color in allowed_colors(shape, split) and rng.random() < 0.5
    color = o.color if keep_color else _pick(rng, [c for c in allowed_colors(shape, split) if c != o.color])
    objs[i] = replace(o, shape=shape, color=color, orientation="")  # "" = the new class's canonical orientation
    phrase = with_article(shape) if keep_color else with_article(f"{color} {shape}")
    return (edit_instruction("replace", rng, ref=refer(src, i), obj=phrase),
            {"op": "replace", "index": i, "from": {"shape": o.shape, "color": o.color},
             "to": {"shape": shape, "color": color}, "color_stated": not keep_color})


def _op_size(src: Scene, objs: list, i: int, rng, aligned: bool, split: Split):
    o = objs[i]
    band = _pick(rng, [b for b in vocab.SIZE_BANDS if b != o.size_band])
    others = [p for j, p in enumerate(objs) if j != i and p is not None]
    if aligned:  # the grid block of the new size whose centre is nearest the old centre (ties: random)
        g, k = vocab.GRID, vocab.CELLS_PER_SIZE[band]
        cands = []
        for row in range(g - k + 1):
            for col in range(g - k + 1):
                p = Obj.at_cell(o.shape, o.color, col, row, band, orientation=o.orientation, hollow=o.hollow)
                if fits(p, others, True):
                    cands.append((round(abs(p.cx - o.cx) + abs(p.cy - o.cy), 6), p))
        best = min((d for d, _ in cands), default=None)
        if best is None or best > 1.0 / g:
            raise EditImpossible(f"no room to make object {i} {band}")
        new = _pick(rng, [p for d, p in cands if d == best])
    else:
        lo, hi = vocab.SIZE_BANDS[band]
        new = _obj_at(o, o.cx, o.cy, float(rng.uniform(lo, hi)))
        if not fits(new, others, False):
            raise EditImpossible(f"no room to make object {i} {band}")
    objs[i] = new
    return (edit_instruction("size", rng, ref=refer(src, i), band=band),
            {"op": "adjust", "attribute": "size", "index": i, "from": o.size_band, "to": band})


_COMPOSE_OPS = {"remove": _op_remove, "color": _op_color, "replace": _op_replace, "size": _op_size}


# ----------------------------------------------------------------------------------------------------------------
# The nine edit types: each returns (target objects or scene, instruction, details) or raises EditImpossible.


def _edit_add(src: Scene, rng, aligned: bool, split: Split):
    shape = _pick(rng, list(vocab.CLASSES))
    color = _pick(rng, allowed_colors(shape, split))
    refs = _referable(src)
    rel = r = None
    if refs and rng.random() < 0.6:
        r, rel = _pick(rng, refs), _pick(rng, list(vocab.RELATIONS))
    ref_box = src.objects[r].box() if r is not None else None

    def accept(o: Obj) -> bool:
        if ref_box is None:
            return True
        return (relative_position(o.box(), ref_box) == {rel}
                and relation_margin(o.box(), ref_box, rel) >= POSITION_MARGIN)

    new = place(rng, shape, color, "medium", src.objects, aligned=aligned, accept=accept)
    if new is None:
        raise EditImpossible("no room to add an object")
    if r is None:
        text = edit_instruction("add", rng, obj=describe(new))
    else:
        text = edit_instruction("add_rel", rng, obj=describe(new), rel=EDIT_RELATIONS[rel], ref=refer(src, r))
    details = {"op": "add", "index": len(src.objects), "object": asdict(new), "relation": rel, "reference": r}
    return src.objects + [new], text, details


def _single(op: str):
    def edit(src: Scene, rng, aligned: bool, split: Split):
        objs = list(src.objects)
        i = _pick(rng, _referable(src))
        text, details = _COMPOSE_OPS[op](src, objs, i, rng, aligned, split)
        return [o for o in objs if o is not None], text, details
    return edit


def _edit_adjust(src: Scene, rng, aligned: bool, split: Split):
    return _single("color" if rng.random() < 0.6 else "size")(src, rng, aligned, split)


def _edit_background(src: Scene, rng, aligned: bool, split: Split):
    bg = _pick(rng, [b for b in vocab.BACKGROUNDS if b != src.background])
    return (Scene(objects=list(src.objects), background=bg), edit_instruction("background", rng, bg=bg),
            {"op": "background", "from": src.background, "to": bg})


def _edit_style(src: Scene, rng, aligned: bool, split: Split):
    if not src.objects or all(o.hollow for o in src.objects):
        raise EditImpossible("outline style needs at least one filled object")
    return ([replace(o, hollow=True) for o in src.objects], edit_instruction("style", rng),
            {"op": "style", "style": "outline"})


def _edit_extract(src: Scene, rng, aligned: bool, split: Split):
    i = _pick(rng, _referable(src, exclude_white=True))  # a white object would vanish on the white backdrop
    o = src.objects[i]
    return ([centred(o, aligned)], edit_instruction("extract", rng, ref=refer(src, i)),
            {"op": "extract", "index": i, "object": asdict(o), "backdrop": list(EXTRACT_BACKDROP)})


def _edit_action(src: Scene, rng, aligned: bool, split: Split):
    i = _pick(rng, _referable(src))
    o, ref = src.objects[i], refer(src, i)
    objs = list(src.objects)
    if len(vocab.ORIENTATIONS[o.shape]) > 1 and rng.random() < 0.4:
        new_orient = _pick(rng, [d for d in vocab.ORIENTATIONS[o.shape] if d != o.orientation])
        objs[i] = replace(o, orientation=new_orient)
        if o.shape == "arrow":
            text = edit_instruction("point", rng, ref=ref, dir=new_orient)
        else:
            text = edit_instruction("flip", rng, ref=ref)
        return objs, text, {"op": "action", "action": "flip", "index": i, "from": o.orientation, "to": new_orient}
    others = [p for j, p in enumerate(src.objects) if j != i]
    regions = [REGIONS[j] for j in rng.permutation(len(REGIONS))]
    for region in regions:
        cx, cy = _region_centre(region, o.size, aligned)
        new = _obj_at(o, cx, cy)
        if max(abs(cx - o.cx), abs(cy - o.cy)) >= MIN_MOVE and fits(new, others, aligned):
            objs[i] = new
            return (objs, edit_instruction("move", rng, ref=ref, region=region),
                    {"op": "action", "action": "move", "index": i, "region": region, "from": _centre(o),
                     "to": _centre(new)})
    raise EditImpossible("no free region to move to")


def _edit_compose(src: Scene, rng, aligned: bool, split: Split):
    refs = _referable(src)
    if len(refs) < 2:
        raise EditImpossible("compose needs two referable objects")
    i, j = (refs[k] for k in rng.choice(len(refs), size=2, replace=False))
    objs = list(src.objects)
    ops = [_pick(rng, list(_COMPOSE_OPS)) for _ in range(2)]
    if ops == ["remove", "remove"]:
        ops[1] = "color"
    t1, d1 = _COMPOSE_OPS[ops[0]](src, objs, i, rng, aligned, split)
    # The second object is named as in the source; that name must still pick it out after the first op.
    middle = [o for o in objs if o is not None]
    if refer(Scene(objects=middle, background=src.background), middle.index(objs[j])) != refer(src, j):
        raise EditImpossible("the first op makes the second object's name ambiguous")
    t2, d2 = _COMPOSE_OPS[ops[1]](src, objs, j, rng, aligned, split)
    text = edit_instruction("compose", rng, first=t1, second=t2)
    return [o for o in objs if o is not None], text, {"op": "compose", "ops": [d1, d2]}


_EDITS = {
    "add": _edit_add, "remove": _single("remove"), "replace": _single("replace"), "adjust": _edit_adjust,
    "background": _edit_background, "style": _edit_style, "extract": _edit_extract, "action": _edit_action,
    "compose": _edit_compose,
}


def make_edit(scene: Scene, edit_type: str, rng: np.random.Generator, *, split: Split = "train",
              aligned: bool | None = None) -> EditItem:
    """An edit of `edit_type` applied to `scene`, with a templated instruction and the exact target scene.

    `aligned` defaults to whether every source object sits on the grid. Split "train" never produces a target (or
    instruction) with a held-out combination. Raises EditImpossible when the type cannot apply to this scene.
    """
    if edit_type not in _EDITS:
        raise ValueError(f"edit_type must be one of {EDIT_TYPES}, got {edit_type!r}")
    check_split(split)
    if split == "train" and is_heldout(scene):
        raise ValueError("the source scene contains a held-out combination, not allowed in split 'train'")
    aligned = is_aligned_scene(scene) if aligned is None else aligned
    last: Exception | None = None
    for _ in range(EDIT_TRIES):
        src = copy.deepcopy(scene)
        try:
            result, text, details = _EDITS[edit_type](src, rng, aligned, split)
        except EditImpossible as exc:
            last = exc
            continue
        target = result if isinstance(result, Scene) else Scene(objects=result, background=scene.background)
        if not layout_ok(target.objects, aligned):
            last = EditImpossible("target layout invalid")
            continue
        if split == "train" and is_heldout(target):
            last = EditImpossible("target has a held-out combination")
            continue
        return EditItem(source=copy.deepcopy(scene), instruction=text, target=target, edit_type=edit_type,
                        details=_jsonable(details))
    raise EditImpossible(f"cannot apply a {edit_type!r} edit to this scene: {last}")


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return x


# ----------------------------------------------------------------------------------------------------------------
# Sets

_SOURCE_OBJECTS = {"add": (1, 3), "remove": (2, 4), "compose": (2, 4)}  # other types: 1-4 objects


def type_counts(n: int, weights: dict[str, float] | None = None) -> dict[str, int]:
    """n split over edit types in proportion to `weights` (default ImgEdit's counts), largest remainder first;
    types left out of `weights` get none."""
    weights = dict(IMGEDIT_COUNTS if weights is None else weights)
    unknown = sorted(set(weights) - set(EDIT_TYPES))
    if unknown or not all(np.isfinite(w) and w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"edit type weights need types from {EDIT_TYPES} with finite weights >= 0 and a positive "
                         f"sum, got {weights}")
    total = sum(Fraction(w) for w in weights.values())
    exact = {t: n * Fraction(w) / total for t, w in weights.items()}  # exact: ties keep the dict's order
    counts = {t: int(x) for t, x in exact.items()}
    for t in sorted(exact, key=lambda t: -(exact[t] - counts[t]))[: n - sum(counts.values())]:
        counts[t] += 1
    return counts


def random_edit(rng: np.random.Generator, edit_type: str, *, aligned: bool = True, split: Split = "train",
                background_p: float = 0.25) -> EditItem:
    """A fresh random source scene (background non-default with probability background_p) and an edit of it."""
    lo, hi = _SOURCE_OBJECTS.get(edit_type, (1, 4))
    for _ in range(EDIT_TRIES):
        bg = (_pick(rng, list(vocab.BACKGROUNDS)) if rng.random() < background_p else vocab.DEFAULT_BACKGROUND)
        src = random_scene(rng, aligned=aligned, n_objects=int(rng.integers(lo, hi + 1)), split=split, background=bg)
        try:
            return make_edit(src, edit_type, rng, split=split, aligned=aligned)
        except EditImpossible:
            continue
    raise EditImpossible(f"no random scene admitted a {edit_type!r} edit")


def imgedit_items(n: int = 200, seed: int = 0, *, aligned: bool = True, split: Split = "eval") -> list[EditItem]:
    """The ShapeImgEdit set: n items in ImgEdit's type proportions (type order shuffled by the seed).
    Split "eval" (the benchmark) may contain held-out combinations; report them with sample.is_heldout(item)."""
    rng = np.random.default_rng(seed)
    types = [t for t, c in type_counts(n).items() for _ in range(c)]
    types = [types[i] for i in rng.permutation(len(types))]
    return [random_edit(rng, t, aligned=aligned, split=split) for t in types]


__all__ = [
    "EDIT_TYPES", "IMGEDIT_COUNTS", "EXTRACT_BACKDROP", "EditImpossible", "EditItem", "centred", "render_on",
    "render_source", "render_target", "make_edit", "random_edit", "type_counts", "imgedit_items",
]
