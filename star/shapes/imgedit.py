"""ShapeImgEdit scoring: rule-based 1–5 sub-scores standing in for ImgEdit's GPT-4o judge (research/eval.md §3, §10.3).

Data flow: edit item (source scene S, target scene T, edit_type, details) + output image ─▶ parse ─▶ O
    ─▶ match O ↔ T (Hungarian) ─▶ p (preserved non-target objects), e (extra objects), u (unexplained pixels),
       L1_out (|O − T| outside the edited boxes) and the edit's own predicates (full / partial / one / none)
    ─▶ S1 compliance, S2 visual quality, S3 preservation (named per type as ImgEdit's rubric names them)
    ─▶ caps S2 = min(S2, S1), S3 = min(S3, S1) ─▶ sample = round(mean, 2) ─▶ type = round(mean, 2)
    ─▶ overall = mean of the type scores (leaderboard convention; the sample mean is reported too).

The per-item "response" text has ImgEdit's judge format ("Brief reasoning: …" then "Name: n" lines), so ImgEdit's own
step1_get_avgscore.py / step2_typescore.py run unchanged on the result.json written here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage, optimize

from star.shapes import vocab
from star.shapes.parse import SceneGraph, as_rgb_array, parse, srgb_to_lab
from star.shapes.scene import Obj, Scene, relative_position

EDIT_TYPES: tuple[str, ...] = ("add", "remove", "replace", "adjust", "background", "style", "extract", "action",
                               "compose")
SUBSCORE_NAMES: dict[str, tuple[str, str, str]] = {
    "replace": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"),
    "add": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Coherence"),
    "adjust": ("Prompt Compliance", "Visual Seamlessness", "Physical & Detail Fidelity"),
    "remove": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"),
    "style": ("Style Fidelity", "Content Preservation", "Rendering Quality"),
    "action": ("Action Fidelity", "Identity Preservation", "Visual & Anatomical Coherence"),
    "extract": ("Object Identity", "Mask Precision", "Visual Quality"),
    "background": ("Instruction Compliance", "Visual Seamlessness", "Physical Consistency"),
    "compose": ("Instruction Compliance", "Visual Naturalness", "Physical Consistency & Fine Detail"),
}
"""ImgEdit's three rubric names per edit type (Benchmark/Basic/prompts.json)."""

POS_TOL = 0.05  # centre shift (fraction of the side) within which an object counts as in place
SIZE_RATIO = (0.8, 1.25)  # size ratio range within which a preserved object counts as unchanged
REMNANT_FRAC = 0.20  # a removed object whose colour still covers more than this share of its area is a remnant
BG_DELTA_E = 10.0  # background colour match tolerance (ΔE76)
WHITE_DELTA_E = 10.0  # extract: a backdrop pixel within this ΔE of #FFFFFF is pure
L1_DILATE = 0.03  # L1_out: target boxes are grown by this fraction of the side (plus 2 px) before masking
U_LADDER = (0.005, 0.015, 0.04, 0.10)  # S2: u below these → 5, 4, 3, 2; else 1
PURITY_LADDER = (0.99, 0.97, 0.90, 0.75)  # S2 (extract): purity at least these → 5, 4, 3, 2; else 1
L1_LADDER = (0.01, 0.03)  # S3: p = 1 and L1_out below these → 5, 4
P_LADDER = (0.75, 0.5)  # S3: p at least these → 3, 2; else 1
WHITE = (255, 255, 255)


# ----------------------------------------------------------------------------------------------------------------
# Geometry helpers on parsed objects (pixels) and scene objects (normalised)


def _center(graph: SceneGraph, j: int) -> tuple[float, float]:
    x, y = graph.objects[j].center()
    return x / graph.width, y / graph.height


def _dist(graph: SceneGraph, j: int, obj: Obj) -> float:
    cx, cy = _center(graph, j)
    return float(np.hypot(cx - obj.cx, cy - obj.cy))


def _same(graph: SceneGraph, j: int, obj: Obj) -> bool:
    return graph.objects[j].shape == obj.shape and graph.objects[j].color == obj.color


def _intact(graph: SceneGraph, j: int, obj: Obj) -> bool:
    """Is parsed object j exactly `obj`: class, colour, centre within POS_TOL, width and height within SIZE_RATIO?"""
    return _dist(graph, j, obj) <= POS_TOL and _whole(graph, j, obj)


def _whole(graph: SceneGraph, j: int, obj: Obj) -> bool:
    """Is parsed object j a whole copy of `obj`, wherever it is: class, colour, width and height within SIZE_RATIO?"""
    if not _same(graph, j, obj):
        return False
    x0, y0, x1, y1 = graph.objects[j].bbox
    bx0, by0, bx1, by1 = obj.box()
    rw = (x1 - x0) / graph.width / (bx1 - bx0)
    rh = (y1 - y0) / graph.height / (by1 - by0)
    return SIZE_RATIO[0] <= rw <= SIZE_RATIO[1] and SIZE_RATIO[0] <= rh <= SIZE_RATIO[1]


def _at(graph: SceneGraph, obj: Obj, tol: float = POS_TOL) -> int | None:
    """The parsed object nearest to obj's centre, if within tol."""
    best = None
    for j in range(len(graph.objects)):
        d = _dist(graph, j, obj)
        if d <= tol and (best is None or d < best[0]):
            best = (d, j)
    return None if best is None else best[1]


def match(target: Scene, graph: SceneGraph) -> dict[int, int]:
    """Hungarian O ↔ T: cost = class mismatch + colour mismatch + centre distance (normalised). {t index: o index}."""
    if not target.objects or not graph.objects:
        return {}
    cost = np.array([[(o.shape != graph.objects[j].shape) + (o.color != graph.objects[j].color) + _dist(graph, j, o)
                      for j in range(len(graph.objects))] for o in target.objects])
    rows, cols = optimize.linear_sum_assignment(cost)
    return {int(r): int(c) for r, c in zip(rows, cols)}


def _bg_delta(graph: SceneGraph, rgb: tuple[int, int, int]) -> float:
    return float(np.linalg.norm(srgb_to_lab(np.array(graph.background_rgb, float)) - srgb_to_lab(np.array(rgb, float))))


def _visible(graph: SceneGraph, scene: Scene) -> bool:
    """Does the parse show exactly `scene` (every object intact, same hollow state and orientation, same background)?
    Used for "output ≈ source"."""
    if _bg_delta(graph, vocab.BACKGROUNDS[scene.background]) > BG_DELTA_E or len(graph.objects) != len(scene.objects):
        return False
    m = match(scene, graph)
    for t, j in m.items():
        o, p = scene.objects[t], graph.objects[j]
        if not _intact(graph, j, o) or p.hollow != o.hollow:
            return False
        if len(vocab.ORIENTATIONS[o.shape]) > 1 and p.orientation != o.orientation:
            return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# Edit operations: which target objects an item touches, and whether the output carries each op out


@dataclass
class _Op:
    kind: str  # add / remove / color / size / replace / background / style / extract / move / flip
    source: Obj | None  # the object in S (None for add / background / style)
    target: Obj | None  # the object in T (None for remove / background / style)
    t_index: int | None  # its index in T
    extra: dict


def _ops(item) -> list[_Op]:
    """Unit operations of an edit item, from its details (indices are into the source scene)."""
    d = item.details
    src, tgt = item.source.objects, item.target.objects
    unit = d["ops"] if d.get("op") == "compose" else [d]
    removed = sorted(u["index"] for u in unit if u.get("op") == "remove")

    def t_index(i: int) -> int:
        return i - sum(r < i for r in removed)

    ops = []
    for u in unit:
        op = u.get("op")
        if op == "add":
            ops.append(_Op("add", None, tgt[-1], len(tgt) - 1, {"relation": u.get("relation"),
                                                                  "reference": u.get("reference")}))
        elif op == "remove":
            ops.append(_Op("remove", src[u["index"]], None, None, {}))
        elif op == "adjust":
            i = u["index"]
            ops.append(_Op("color" if u["attribute"] == "color" else "size", src[i], tgt[t_index(i)], t_index(i), {}))
        elif op == "replace":
            i = u["index"]
            ops.append(_Op("replace", src[i], tgt[t_index(i)], t_index(i),
                           {"color_stated": u.get("color_stated", True)}))
        elif op == "background":
            ops.append(_Op("background", None, None, None, {"to": u["to"], "from": u["from"]}))
        elif op == "style":
            ops.append(_Op("style", None, None, None, {"style": u.get("style", "outline")}))
        elif op == "extract":
            ops.append(_Op("extract", src[u["index"]], tgt[0], 0, {}))
        elif op == "action":
            i = u["index"]
            ops.append(_Op("move" if u["action"] == "move" else "flip", src[i], tgt[t_index(i)], t_index(i), {}))
        else:
            raise ValueError(f"edit item details have an unknown op {op!r}: {d}")
    return ops


def _remnant(rgb: np.ndarray, obj: Obj) -> float:
    """Share of obj's footprint (at the output's resolution) still showing obj's colour (within ΔE 20)."""
    from star.shapes.render import object_mask

    res = rgb.shape[0]
    mask = object_mask(obj, res, 4).reshape(res, 4, res, 4).mean(axis=(1, 3)) >= 0.5  # (res, res) footprint
    if not mask.any():
        return 0.0
    lab = srgb_to_lab(rgb[mask])
    d = np.linalg.norm(lab - srgb_to_lab(np.array(vocab.COLORS[obj.color], float)), axis=-1)
    return float((d < 20).mean())


def _left_over(graph: SceneGraph, m: dict[int, int], obj: Obj) -> bool:
    """Is there a whole copy of obj (class, colour, size) that no target object accounts for (obj kept somewhere)?"""
    matched = set(m.values())
    return any(_whole(graph, j, obj) for j in range(len(graph.objects)) if j not in matched)


def _check(op: _Op, item, graph: SceneGraph, rgb: np.ndarray, m: dict[int, int]) -> str:
    """'full' (the op is carried out), 'partial' (right object, wrong value; or a remnant; or a copy left behind),
    or 'none'. Remove, replace and move also need the old object gone: a whole copy of it that no target object
    accounts for (moved instead of removed, kept beside its replacement, copied instead of moved) is not carried
    out; a part of it where it was is a remnant."""
    n = len(graph.objects)
    if op.kind == "add":
        j = m.get(op.t_index)
        if j is None:
            return "none"
        p, t = graph.objects[j], op.target
        rel, ref = op.extra.get("relation"), op.extra.get("reference")
        rel_ok = True
        if rel is not None and ref is not None:
            ref_obj = item.source.objects[ref]
            k = m.get(item.target.objects.index(ref_obj)) if ref_obj in item.target.objects else None
            ref_box = graph.objects[k].bbox if k is not None else tuple(
                v * s for v, s in zip(ref_obj.box(), (graph.width, graph.height) * 2))
            rel_ok = rel in relative_position(p.bbox, ref_box)
        is_new = all(_dist(graph, j, o) > POS_TOL for o in item.source.objects)  # not just an old object
        if p.shape == t.shape and p.color == t.color and rel_ok and is_new:
            return "full"
        return "partial" if is_new and (p.shape == t.shape or p.color == t.color) else "none"
    if op.kind == "remove":
        j = _at(graph, op.source)
        if (j is not None and _intact(graph, j, op.source)) or _left_over(graph, m, op.source):
            return "none"
        return "partial" if _remnant(rgb, op.source) > REMNANT_FRAC else "full"
    if op.kind in ("color", "replace"):
        j = _at(graph, op.target)
        if j is None:
            return "none"
        p, s, t = graph.objects[j], op.source, op.target
        if p.shape == t.shape and p.color == t.color:
            return "partial" if _left_over(graph, m, s) else "full"
        if op.kind == "color":
            return "partial" if p.color != s.color else "none"
        changed_class = p.shape != s.shape
        return "partial" if changed_class and (p.shape == t.shape or p.color == t.color) else "none"
    if op.kind == "size":
        tol = 0.5 * max(op.source.size, op.target.size)
        j = _at(graph, op.target, tol)
        if j is None:
            return "none"
        p, s, t = graph.objects[j], op.source, op.target
        if p.size_band == t.size_band and _same(graph, j, t):
            return "full"
        return "partial" if p.size_band != s.size_band else "none"
    if op.kind == "background":
        if _bg_delta(graph, vocab.BACKGROUNDS[op.extra["to"]]) <= BG_DELTA_E:
            return "full"
        return "partial" if _bg_delta(graph, vocab.BACKGROUNDS[op.extra["from"]]) > BG_DELTA_E else "none"
    if op.kind == "style":
        hollow = [graph.objects[j].hollow for t, j in m.items()]
        if hollow and all(hollow) and len(m) == len(item.target.objects):
            return "full"
        return "partial" if any(hollow) else "none"
    if op.kind == "extract":
        j = m.get(0)
        if j is None or not _same(graph, j, op.target):
            return "none"
        centred = _dist(graph, j, op.target) <= POS_TOL
        white = _bg_delta(graph, WHITE) <= BG_DELTA_E
        same_size = graph.objects[j].size_band == op.target.size_band
        return "full" if (n == 1 and centred and white and same_size) else "partial"
    if op.kind == "move":
        j = _at(graph, op.target)
        if j is not None and _same(graph, j, op.target):
            return "partial" if _left_over(graph, m, op.source) else "full"
        k = _at(graph, op.source)
        moved_away = k is None or not _same(graph, k, op.source)
        present = any(_same(graph, jj, op.target) for jj in range(n))
        return "partial" if moved_away and present else "none"
    if op.kind == "flip":
        j = _at(graph, op.target)
        if j is None or not _same(graph, j, op.target):
            return "none"
        o = graph.objects[j].orientation
        if o == op.target.orientation:
            return "full"
        return "partial" if o != op.source.orientation else "none"
    raise ValueError(f"unknown op {op.kind!r}")


# ----------------------------------------------------------------------------------------------------------------
# Scores


def _ladder_below(x: float, ladder: tuple[float, ...]) -> int:
    for score, limit in zip((5, 4, 3, 2), ladder):
        if x < limit:
            return score
    return 1


def _ladder_at_least(x: float, ladder: tuple[float, ...]) -> int:
    for score, limit in zip((5, 4, 3, 2), ladder):
        if x >= limit:
            return score
    return 1


def _target_render(item, resolution: int) -> np.ndarray:
    from star.shapes.edits import render_target

    return np.asarray(render_target(item, resolution), dtype=np.float64) / 255


def _box_mask(objs: list[Obj], res: int) -> np.ndarray:
    mask = np.zeros((res, res), dtype=bool)
    grow = L1_DILATE * res + 2
    for o in objs:
        x0, y0, x1, y1 = (v * res for v in o.box())
        mask[max(int(np.floor(y0 - grow)), 0):int(np.ceil(y1 + grow)),
             max(int(np.floor(x0 - grow)), 0):int(np.ceil(x1 + grow))] = True
    return mask


def score_item(item, image, key: str | None = None) -> dict:
    """Score one edit (an EditItem or anything with source/target/edit_type/details) on its output image.

    Returns {key, edit_type, scores: {name: 1–5}, sample, response, metrics: {p, e, u, l1_out, status, …}}.
    """
    if item.edit_type not in SUBSCORE_NAMES:
        raise ValueError(f"edit_type must be one of {EDIT_TYPES}, got {item.edit_type!r}")
    rgb = as_rgb_array(image)
    if rgb.shape[0] != rgb.shape[1]:
        raise ValueError(f"edited images must be square, got {rgb.shape[1]}×{rgb.shape[0]}")
    res = rgb.shape[0]
    graph = parse(rgb)
    target = item.target
    ops = _ops(item)
    m = match(target, graph)

    # preservation of the objects no op touches
    touched = {op.t_index for op in ops if op.t_index is not None}
    if item.edit_type in ("style", "extract"):
        touched = set(range(len(target.objects)))
    keep = [t for t in range(len(target.objects)) if t not in touched]
    preserved = 0
    for t in keep:
        j = m.get(t)
        if j is None:
            continue
        if _intact(graph, j, target.objects[t]):
            preserved += 1
    p = preserved / len(keep) if keep else 1.0
    e = len(graph.objects) - len(m)

    # L1 outside the edited regions
    edited_objs = [o for op in ops for o in (op.source, op.target) if o is not None]
    if item.edit_type == "style":
        edited_objs += list(item.source.objects)
    outside = ~_box_mask(edited_objs, res)
    diff = np.abs(rgb.astype(np.float64) / 255 - _target_render(item, res)).mean(axis=-1)
    l1_out = float(diff[outside].mean()) if outside.any() else 0.0

    # S1: compliance
    statuses = [_check(op, item, graph, rgb, m) for op in ops]
    if len(ops) == 1:
        status = statuses[0]
    else:
        full = statuses.count("full")
        status = ("full" if full == len(ops) else
                  "partial" if "none" not in statuses else
                  "one" if full >= 1 or "partial" in statuses else "none")
    unchanged = _visible(graph, item.source)
    # unrelated: nothing of the source or target scene anywhere (no object of one of their class-colour pairs), and
    # the edit not made (or "made" by wiping out the kept objects); a wrong object extracted or moved is an attempt
    related = any(_same(graph, j, o) for j in range(len(graph.objects))
                  for o in item.source.objects + target.objects)
    unrelated = not related and (status != "full" or (bool(keep) and p == 0))
    if unchanged or unrelated or (not graph.objects and target.objects):
        s1 = 1
    elif status == "full":
        s1 = 5 if (p == 1 and e == 0) else (4 if (p >= 0.75 and e <= 1) else 3)
    elif status == "partial":
        s1 = 3
    else:
        s1 = 2

    # S2: visual quality (extract: backdrop purity)
    if item.edit_type == "extract":
        objects = np.zeros((res, res), dtype=bool)
        for o in graph.objects:
            objects |= o.mask
        backdrop = ~ndimage.binary_dilation(objects, iterations=2)
        lab = srgb_to_lab(rgb[backdrop]) if backdrop.any() else np.zeros((0, 3))
        white = srgb_to_lab(np.array(WHITE, float))
        purity = float((np.linalg.norm(lab - white, axis=-1) < WHITE_DELTA_E).mean()) if len(lab) else 0.0
        s2 = _ladder_at_least(purity, PURITY_LADDER)
    else:
        purity = None
        s2 = _ladder_below(graph.u, U_LADDER)

    # S3: preservation (action: identity of the moved object; style: class and position of every object)
    if item.edit_type == "action":
        op = ops[0]
        cands = [j for j in range(len(graph.objects)) if graph.objects[j].shape == op.target.shape]
        j = _at(graph, op.target) if _at(graph, op.target) is not None else (
            min(cands, key=lambda jj: _dist(graph, jj, op.target)) if cands else None)
        same = 0 if j is None else sum([graph.objects[j].shape == op.source.shape,
                                        graph.objects[j].color == op.source.color,
                                        graph.objects[j].size_band == op.source.size_band])
        s3 = 5 if same == 3 else (3 if same == 2 else 1)
    else:
        if item.edit_type == "style":
            kept = sum(1 for t, j in m.items() if graph.objects[j].shape == target.objects[t].shape
                       and _dist(graph, j, target.objects[t]) <= POS_TOL)
            p3 = kept / len(target.objects) if target.objects else 1.0
        else:
            p3 = p
        if p3 == 1 and l1_out < L1_LADDER[0]:
            s3 = 5
        elif p3 == 1 and l1_out < L1_LADDER[1]:
            s3 = 4
        else:
            s3 = 3 if p3 >= P_LADDER[0] else (2 if p3 >= P_LADDER[1] else 1)

    raw = (s1, s2, s3)
    s2, s3 = min(s2, s1), min(s3, s1)  # "The second and third score should no higher than first score!!!"
    names = SUBSCORE_NAMES[item.edit_type]
    # s2 is visual quality and s3 preservation; ImgEdit's style and action rubrics name preservation second
    scores = dict(zip(names, (s1, s3, s2) if item.edit_type in ("style", "action") else (s1, s2, s3)))
    reasoning = (f"status={status}" + ("" if len(ops) == 1 else f" {statuses}") +
                 f"; unchanged_source={unchanged}; unrelated={unrelated}; p={p:.2f}; e={e}; u={graph.u:.4f}; "
                 f"L1_out={l1_out:.4f}" +
                 ("" if purity is None else f"; purity={purity:.3f}"))
    response = "Brief reasoning: " + reasoning + "\n" + "\n".join(f"{k}: {v}" for k, v in scores.items())
    return {
        "key": key, "edit_type": item.edit_type, "scores": scores, "sample": round(sum(scores.values()) / 3, 2),
        "response": response,
        "metrics": {"status": status, "op_status": statuses, "unchanged_source": unchanged, "unrelated": unrelated,
                    "p": p, "e": e, "u": graph.u, "l1_out": l1_out, "purity": purity, "raw_scores": list(raw)},
    }


def summarize(results: list[dict], heldout: list[bool] | None = None) -> dict:
    """ImgEdit aggregation: type score = round(mean of samples, 2) (step2_typescore.py); overall = mean of the type
    scores (the leaderboard convention, headline); sample_mean = mean over all samples (lmms-eval's convention)."""
    def block(rows: list[dict]) -> dict:
        by_type: dict[str, list[float]] = {}
        for r in rows:
            by_type.setdefault(r["edit_type"], []).append(r["sample"])
        types = {t: round(sum(v) / len(v), 2) for t, v in by_type.items()}
        return {"overall": float(np.mean(list(types.values()))) if types else None,
                "sample_mean": float(np.mean([r["sample"] for r in rows])) if rows else None,
                "types": {t: types[t] for t in EDIT_TYPES if t in types},
                "type_counts": {t: len(by_type[t]) for t in EDIT_TYPES if t in by_type},
                "n": len(rows)}

    out = block(results)
    out["headline"] = "overall = mean of the type scores"
    if heldout is not None:
        out["in_distribution"] = block([r for r, h in zip(results, heldout) if not h])
        out["heldout"] = block([r for r, h in zip(results, heldout) if h])
    out["errors"] = [{"key": r["key"], "reason": r["error"]} for r in results if "error" in r]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Folder scoring: items JSONL (`star shapes prompts --suite imgedit`) + <images>/<key>.png


def read_items(path: str | os.PathLike) -> list[tuple[str, object, bool]]:
    """(key, EditItem, heldout) from an items JSONL written by `star shapes prompts --suite imgedit`."""
    from star.shapes.edits import EditItem

    items = []
    with open(path) as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                item = EditItem.from_dict({**row, "instruction": row.get("instruction", row.get("prompt", ""))})
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"malformed ShapeImgEdit item on line {i} of {path}: {exc}") from exc
            items.append((str(row.get("key", f"{i - 1:05d}")), item, bool(row.get("heldout", False))))
    return items


def score_folder(items_path: str | os.PathLike, images_dir: str | os.PathLike) -> tuple[list[dict], dict]:
    """Score <images_dir>/<key>.png for every item. A missing or unreadable output scores 1/1/1 with its reason
    (as a judge would score a failed edit) and is listed in the summary's errors."""
    from star.shapes.geneval import load_image

    images_dir = os.fspath(images_dir)
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"ShapeImgEdit output folder not found: {images_dir}")
    items = read_items(items_path)
    results, held = [], []
    for key, item, h in items:
        path = os.path.join(images_dir, f"{key}.png")
        try:
            image = load_image(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            names = SUBSCORE_NAMES[item.edit_type]
            reason = f"unreadable image: {type(exc).__name__}: {exc}"
            results.append({"key": key, "edit_type": item.edit_type, "scores": dict.fromkeys(names, 1),
                            "sample": 1.0, "error": reason,
                            "response": "Brief reasoning: " + reason + "\n" + "\n".join(f"{n}: 1" for n in names)})
        else:
            results.append(score_item(item, image, key))
        held.append(h)
    summary = summarize(results, held)
    summary["images_expected"] = len(items)
    summary["images_scored"] = len(results)
    return results, summary


def write_official(results: list[dict], summary: dict, out_dir: str | os.PathLike) -> None:
    """ImgEdit's intermediate files: result.json (key → judge-format text), average_score.json, typescore.json;
    plus summary.json and results.jsonl (everything per item)."""
    from star.io import atomic_write

    out_dir = os.fspath(out_dir)
    atomic_write(os.path.join(out_dir, "result.json"),
                  json.dumps({r["key"]: r["response"] for r in results}, indent=4))
    atomic_write(os.path.join(out_dir, "average_score.json"),
                  json.dumps({r["key"]: r["sample"] for r in results}, indent=2))
    atomic_write(os.path.join(out_dir, "typescore.json"), json.dumps(summary["types"], indent=2))
    atomic_write(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2))
    atomic_write(os.path.join(out_dir, "results.jsonl"), "".join(json.dumps(r) + "\n" for r in results))


__all__ = ["EDIT_TYPES", "SUBSCORE_NAMES", "match", "score_item", "summarize", "read_items", "score_folder",
           "write_official"]
