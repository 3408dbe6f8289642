"""Text generators for ShapeWorld: GenEval prompts, captions, VQA, ShapeWISE knowledge prompts, edit instructions.

Data flow: sample (scenes) -> **text** -> records (training pairs) and the judges (geneval / vqa / wise / imgedit).
Everything is deterministic from a seed or a numpy Generator, lower case, and built from the fixed templates in this
file, so `text_vocabulary()` lists every word any generator can emit (what a word-level tokenizer needs).

GenEval prompts mirror GenEval's prompts/create_prompts.py (research/eval.md §1.1, §10.1): the same six tags, the same
templates, the same draw order per tag and the same de-duplication, over ShapeWorld's 7 classes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np

from star.io import atomic_write
from star.shapes import vocab
from star.shapes.sample import Split, check_split, heldout_pair, heldout_relation, is_heldout
from star.shapes.scene import Obj, Scene, relation_margin, relative_position
from star.shapes.vocab import make_plural, with_article

GENEVAL_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COUNT_WORDS: dict[int, str] = {0: "zero", **vocab.NUMBER_WORDS}
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

# ----------------------------------------------------------------------------------------------------------------
# GenEval prompts (schema and templates exactly as GenEval's create_prompts.py)


def _single_object(cls: str) -> dict:
    return dict(tag="single_object", include=[{"class": cls, "count": 1}], prompt=f"a photo of {with_article(cls)}")


def _two_object(a: str, b: str) -> dict:
    return dict(tag="two_object", include=[{"class": a, "count": 1}, {"class": b, "count": 1}],
                prompt=f"a photo of {with_article(a)} and {with_article(b)}")


def _counting(cls: str, num: int) -> dict:
    return dict(tag="counting", include=[{"class": cls, "count": num}], exclude=[{"class": cls, "count": num + 1}],
                prompt=f"a photo of {COUNT_WORDS[num]} {make_plural(cls)}")


def _colors(cls: str, color: str) -> dict:
    return dict(tag="colors", include=[{"class": cls, "count": 1, "color": color}],
                prompt=f"a photo of {with_article(color)} {cls}")


def _position(a: str, rel: str, b: str) -> dict:
    """"a photo of A rel B", stored as include[0] = B (plain), include[1] = A with position [rel, 0]."""
    return dict(tag="position", include=[{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                prompt=f"a photo of {with_article(a)} {rel} {with_article(b)}")


def _color_attr(a: str, ca: str, b: str, cb: str) -> dict:
    return dict(tag="color_attr",
                include=[{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                prompt=f"a photo of {with_article(ca)} {a} and {with_article(cb)} {b}")


_CLASSES = list(vocab.CLASSES)
_COLORS = list(vocab.COLORS)
_RELS = list(vocab.RELATIONS)


def _draw(tag: str, rng: np.random.Generator) -> dict:
    """One draw of a tag, consuming the generator exactly as GenEval does (ShapeWorld has no "person" to skip)."""
    n = len(_CLASSES)
    if tag == "single_object":
        return _single_object(_CLASSES[int(rng.choice(n))])
    if tag == "two_object":
        a, b = rng.choice(n, size=2, replace=False)
        return _two_object(_CLASSES[a], _CLASSES[b])
    if tag == "counting":
        idx = int(rng.choice(n))
        num = int(rng.integers(2, 4, endpoint=True))
        return _counting(_CLASSES[idx], num)
    if tag == "colors":
        idx = int(rng.choice(n))
        return _colors(_CLASSES[idx], _COLORS[int(rng.choice(len(_COLORS)))])
    if tag == "position":
        a, b = rng.choice(n, size=2, replace=False)
        rel = _RELS[int(rng.choice(len(_RELS)))]
        return _position(_CLASSES[a], rel, _CLASSES[b])
    if tag == "color_attr":
        a, b = rng.choice(n, size=2, replace=False)
        ca, cb = rng.choice(len(_COLORS), size=2, replace=False)
        return _color_attr(_CLASSES[a], _COLORS[ca], _CLASSES[b], _COLORS[cb])
    raise ValueError(f"GenEval tag must be one of {GENEVAL_TAGS}, got {tag!r}")


PAIR_TAGS = ("two_object", "color_attr")


def in_reading_order(meta: dict, scene: Scene) -> dict:
    """A two_object / color_attr prompt whose two phrases name the objects in `scene`'s reading order (top to bottom,
    then left to right: the order a raster-scan generator draws them), so that "first phrase = first object drawn";
    other tags, and prompts already in that order, come back unchanged."""
    if meta["tag"] not in PAIR_TAGS:
        return meta
    a, b = meta["include"]
    first = scene.objects[reading_order(scene)[0]]
    if first.shape == a["class"]:
        return meta
    if first.shape != b["class"]:
        raise ValueError(f"scene's first object ({first.shape}) is named nowhere in {meta['prompt']!r}")
    if meta["tag"] == "two_object":
        return _two_object(b["class"], a["class"])
    return _color_attr(b["class"], b["color"], a["class"], a["color"])


def _key(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True)


def geneval_prompts(seed: int = 43, n: int = 100) -> list[dict]:
    """The ShapeGenEval prompt set: every class once for single_object, then n draws of each other tag, de-duplicated
    keeping first occurrences (7 / ≤42 / ≤21 / ≤70 / ≤100 / ≤100 prompts with the defaults)."""
    rng = np.random.default_rng(seed)
    samples = [_single_object(_CLASSES[i]) for i in rng.choice(len(_CLASSES), size=len(_CLASSES), replace=False)]
    for tag in GENEVAL_TAGS[1:]:
        samples.extend(_draw(tag, rng) for _ in range(n))
    unique, seen = [], set()
    for s in samples:
        if _key(s) not in seen:
            seen.add(_key(s))
            unique.append(s)
    return unique


def random_geneval_metadata(rng: np.random.Generator, tag: str | None = None, split: Split = "train") -> dict:
    """One GenEval-style metadata dict of `tag` (default: uniform over the six tags); split "train" never returns a
    held-out combination (training prompts for T2I)."""
    check_split(split)
    tag = GENEVAL_TAGS[int(rng.integers(len(GENEVAL_TAGS)))] if tag is None else tag
    for _ in range(1000):
        meta = _draw(tag, rng)
        if split != "train" or not is_heldout(meta):
            return meta
    raise RuntimeError(f"could not draw a non-held-out {tag} prompt")  # unreachable with the shipped split




def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write one JSON object per line, atomically."""
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_geneval_metadata(path: str | os.PathLike, prompts: list[dict] | None = None) -> str:
    """Write GenEval's `evaluation_metadata.jsonl` (default: geneval_prompts()) and, next to it, GenEval's
    `generation_prompts.txt` (one prompt per line). `path` is the .jsonl file or a folder; returns the .jsonl path."""
    prompts = geneval_prompts() if prompts is None else prompts
    path = os.fspath(path)
    if os.path.isdir(path) or not path.endswith(".jsonl"):
        path = os.path.join(path, "evaluation_metadata.jsonl")
    write_jsonl(path, prompts)
    atomic_write(os.path.join(os.path.dirname(os.path.abspath(path)), "generation_prompts.txt"),
                      "".join(p["prompt"] + "\n" for p in prompts))
    return path


# ----------------------------------------------------------------------------------------------------------------
# Describing scenes: noun phrases, referring expressions, captions, paraphrases

ORIENTATION_PHRASES = {"up": "pointing up", "down": "pointing down", "left": "pointing left", "right": "pointing right"}


def _attrs(o: Obj) -> tuple:
    """What a caption says about an object (objects with equal attrs are counted together)."""
    canonical = o.orientation == vocab.ORIENTATIONS[o.shape][0]
    return (o.size_band, o.hollow, o.color, o.shape, "" if canonical else o.orientation)


def _phrase(attrs: tuple, count: int = 1) -> str:
    band, hollow, color, shape, orient = attrs
    words = ([band] if band != "medium" else []) + (["hollow"] if hollow else []) + [color]
    noun = shape if count == 1 else make_plural(shape)
    text = " ".join(words + [noun]) + (f" {ORIENTATION_PHRASES[orient]}" if orient else "")
    return with_article(text) if count == 1 else f"{COUNT_WORDS[count]} {text}"


def describe(obj: Obj) -> str:
    """Indefinite noun phrase naming everything a caption says about `obj`: "a small hollow red triangle"."""
    return _phrase(_attrs(obj))


def reading_order(scene: Scene) -> list[int]:
    """Object indices top to bottom, then left to right."""
    return sorted(range(len(scene.objects)), key=lambda i: (round(scene.objects[i].cy, 6), scene.objects[i].cx))


def refer(scene: Scene, i: int) -> str | None:
    """Shortest unique definite description of object i ("the circle", "the red circle"), or None if ambiguous."""
    o = scene.objects[i]
    same_class = [p for p in scene.objects if p.shape == o.shape]
    if len(same_class) == 1:
        return f"the {o.shape}"
    if sum(p.color == o.color for p in same_class) == 1:
        return f"the {o.color} {o.shape}"
    return None


def main_relation(a: Obj, b: Obj) -> str | None:
    """The GenEval relation of a to b with the largest margin, or None when relative_position finds none."""
    rels = relative_position(a.box(), b.box())
    return max(sorted(rels), key=lambda r: relation_margin(a.box(), b.box(), r)) if rels else None


def _groups(scene: Scene, order: list[int]) -> list[tuple[tuple, int]]:
    counts: dict[tuple, int] = {}
    for i in order:
        a = _attrs(scene.objects[i])
        counts[a] = counts.get(a, 0) + 1
    return list(counts.items())  # dicts keep first-seen order


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _with_background(text: str, scene: Scene) -> str:
    if scene.background == vocab.DEFAULT_BACKGROUND:
        return text
    return f"{text} on {with_article(scene.background)} background"


def caption(scene: Scene) -> str:
    """The canonical one-sentence description: every object (counted by size, state, colour, class, orientation) in
    reading order; for two different objects, their GenEval relation; the background when it is not the default."""
    if not scene.objects:
        return f"an empty {scene.background} background"
    order = reading_order(scene)
    groups = _groups(scene, order)
    if len(scene.objects) == 2 and len(groups) == 2:
        a, b = (scene.objects[i] for i in order)
        rel = main_relation(a, b)
        if rel is not None:
            return _with_background(f"{describe(a)} {rel} {describe(b)}", scene)
    return _with_background(_join([_phrase(g, c) for g, c in groups]), scene)


PARAPHRASE_TEMPLATES = ("a photo of {x}", "an image of {x}", "a picture showing {x}", "there is {x}")
RELATION_PARAPHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


def paraphrases(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Template paraphrases of caption(scene), all true of the scene, distinct, in a seeded order (the canonical
    caption itself is not included)."""
    base = caption(scene)
    order = reading_order(scene)
    groups = _groups(scene, order)
    alts: list[str] = []  # other wordings of the scene content, background added below
    if len(scene.objects) == 2 and len(groups) == 2:
        a, b = (scene.objects[i] for i in order)
        rel = main_relation(a, b)
        if rel is not None:
            alts += [f"{describe(b)} {INVERSE_RELATION[rel]} {describe(a)}",
                     f"{describe(a)} {RELATION_PARAPHRASES[rel]} {describe(b)}",
                     f"{describe(b)} {RELATION_PARAPHRASES[INVERSE_RELATION[rel]]} {describe(a)}"]
        else:
            alts.append(f"{describe(b)} and {describe(a)}")
    elif len(groups) > 1:
        perm = [groups[i] for i in rng.permutation(len(groups))]
        alts.append(_join([_phrase(g, c) for g, c in perm]))
    cores = [base] + [_with_background(a, scene) for a in alts]
    out = []
    for core in cores:
        plural_first = words(core)[0] in ("two", "three", "four")
        for t in PARAPHRASE_TEMPLATES:
            out.append((t.replace("there is", "there are") if plural_first else t).format(x=core))
        out.append(core)
    out = list(dict.fromkeys(o for o in out if o != base))
    return [out[i] for i in rng.permutation(len(out))]


def metadata_for_scene(scene: Scene, rng: np.random.Generator) -> dict | None:
    """A GenEval-style metadata dict (tag, include, exclude, prompt) that a perfect detector would judge correct on
    `scene` and whose tag matches the scene's structure, or None when no tag fits (3+ mixed objects, empty scene)."""
    objs = scene.objects
    classes = [o.shape for o in objs]
    if len(objs) == 1:
        o = objs[0]
        return _single_object(o.shape) if rng.random() < 0.5 else _colors(o.shape, o.color)
    if 2 <= len(objs) <= 4 and len(set(classes)) == 1:
        return _counting(classes[0], len(objs))
    if len(objs) == 2 and classes[0] != classes[1]:
        options = ["two_object"]
        if objs[0].color != objs[1].color:
            options.append("color_attr")
        pairs = [(a, b, r) for a, b in ((objs[0], objs[1]), (objs[1], objs[0]))
                 for r in sorted(relative_position(a.box(), b.box()))]
        if pairs:
            options.append("position")
        tag = options[int(rng.integers(len(options)))]
        a, b = (objs[0], objs[1]) if rng.random() < 0.5 else (objs[1], objs[0])
        if tag == "two_object":
            return _two_object(a.shape, b.shape)
        if tag == "color_attr":
            return _color_attr(a.shape, a.color, b.shape, b.color)
        a, b, rel = pairs[int(rng.integers(len(pairs)))]
        return _position(a.shape, rel, b.shape)
    return None


def prompt_for_scene(scene: Scene, rng: np.random.Generator) -> str:
    """A GenEval-template prompt true of `scene` (see metadata_for_scene); falls back to caption(scene)."""
    meta = metadata_for_scene(scene, rng)
    return meta["prompt"] if meta is not None else caption(scene)


# ----------------------------------------------------------------------------------------------------------------
# ShapeVQA (research/eval.md §10.7): questions with exact single-word answers

VQA_FAMILIES: tuple[str, ...] = ("count", "color", "shape", "relation", "exist")
VQA_TEMPLATES = {
    "count": "how many {plural} are there?",
    "color": "what colour is the {shape}?",
    "shape": "what shape is the {color} object?",
    "relation": "is the {a} {rel} the {b}?",
    "exist": "is there {obj}?",
}
VQA_RELATION_MIN_MARGIN = 0.15  # relation questions stay this far from GenEval's 0.5 boundary


def vqa_questions(scene: Scene, rng: np.random.Generator, *, split: Split = "train") -> list[dict]:
    """Questions about `scene` with exact answers, as dicts {question, answer, family}.

    count: one present and one absent class ("two" / "zero"); color: of a class that occurs once; shape: of a colour
    that occurs once; relation: yes/no between two classes that occur once, by relative_position on the boxes
    (asked only when the normalised offset is at least VQA_RELATION_MIN_MARGIN from the 0.5 boundary); exist: one
    present and one absent colour-class pair. Split "train" never mentions a held-out pair or relation.
    """
    check_split(split)
    objs = scene.objects
    out: list[dict] = []

    def pick(seq):
        return seq[int(rng.integers(len(seq)))] if seq else None

    def ask(family: str, answer: str, **slots) -> None:
        out.append({"question": VQA_TEMPLATES[family].format(**slots), "answer": answer, "family": family})

    classes = [o.shape for o in objs]
    present = sorted(set(classes), key=classes.index)
    absent = [c for c in vocab.CLASSES if c not in present]
    for cls in (pick(present), pick(absent)):
        if cls is not None:
            ask("count", COUNT_WORDS[classes.count(cls)], plural=make_plural(cls))
    unique_cls = [c for c in present if classes.count(c) == 1]
    cls = pick(unique_cls)
    if cls is not None:
        ask("color", objs[classes.index(cls)].color, shape=cls)
    colors = [o.color for o in objs]
    color = pick([c for c in dict.fromkeys(colors) if colors.count(c) == 1])
    if color is not None:
        ask("shape", objs[colors.index(color)].shape, color=color)
    if len(unique_cls) >= 2:
        cands = []
        for a in unique_cls:
            for b in unique_cls:
                if a == b:
                    continue
                box_a, box_b = objs[classes.index(a)].box(), objs[classes.index(b)].box()
                for rel in vocab.RELATIONS:
                    if split == "train" and heldout_relation(a, rel, b):
                        continue
                    if abs(relation_margin(box_a, box_b, rel) - 0.5) >= VQA_RELATION_MIN_MARGIN:
                        cands.append((a, rel, b, rel in relative_position(box_a, box_b)))
        want = bool(rng.random() < 0.5)
        choice = pick([c for c in cands if c[3] == want]) or pick(cands)
        if choice is not None:
            a, rel, b, holds = choice
            ask("relation", "yes" if holds else "no", a=a, rel=rel, b=b)
    pairs = {(o.color, o.shape) for o in objs}
    yes = pick(sorted(pairs))
    if yes is not None:
        ask("exist", "yes", obj=with_article(f"{yes[0]} {yes[1]}"))
    no_pairs = [(c, s) for s in vocab.CLASSES for c in vocab.COLORS
                if (c, s) not in pairs and not (split == "train" and heldout_pair(c, s))]
    no = pick(no_pairs)
    if no is not None:
        ask("exist", "no", obj=with_article(f"{no[0]} {no[1]}"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# ShapeWISE (research/eval.md §10.5): knowledge prompts whose answer is a scene


@dataclass(frozen=True)
class Fact:
    """One piece of world knowledge whose answer is a ShapeWorld word."""

    category: str
    subcategory: str
    kind: str
    """color | count | shape | relation: what the answer is."""
    phrase: str
    """color/shape: a noun phrase ("a stop sign"); count: what is counted ("days in a weekend"); relation: a
    template with {a} and {b} (indefinite noun phrases of the two carrier classes)."""
    question: str
    answer: str
    """The single-word answer to `question` (a colour, class, number word, or above/below/left/right)."""
    relation: str = ""
    """relation facts: the GenEval relation of {a} to {b} that the fact implies."""


def _color(cat, sub, phrase, answer):
    return Fact(cat, sub, "color", phrase, f"what colour is {phrase}?", answer)


def _shape(cat, sub, phrase, answer):
    return Fact(cat, sub, "shape", phrase, f"what shape is {phrase}?", answer)


def _count(cat, sub, phrase, question, answer):
    return Fact(cat, sub, "count", phrase, question, answer)


def _rel(cat, sub, template, relation, question, answer):
    return Fact(cat, sub, "relation", template, question, answer, relation)


WISE_CATEGORIES: tuple[tuple[str, float], ...] = (
    ("Cultural", 0.4), ("Time", 0.167), ("Space", 0.133), ("Biology", 0.1), ("Physics", 0.1), ("Chemistry", 0.1),
)
"""WISE's six categories in id order, with the legacy proportions (= the legacy Overall weights)."""

C, T, S, B, P, CH = (c for c, _ in WISE_CATEGORIES)
FACTS: tuple[Fact, ...] = (
    # Cultural
    _color(C, "Life", "a stop sign", "red"),
    _color(C, "Life", "the traffic light that means go", "green"),
    _color(C, "Life", "the traffic light that means stop", "red"),
    _color(C, "Life", "a new york taxi", "yellow"),
    _color(C, "Life", "a london double decker bus", "red"),
    _color(C, "Life", "a traditional western wedding dress", "white"),
    _color(C, "Life", "traditional western mourning clothes", "black"),
    _color(C, "Festival", "a christmas tree", "green"),
    _color(C, "Festival", "a halloween pumpkin", "orange"),
    _color(C, "Festival", "the envelopes given at chinese new year", "red"),
    _color(C, "Festival", "the clover worn on saint patrick's day", "green"),
    _color(C, "Sports", "the card a referee shows to send a football player off", "red"),
    _color(C, "Sports", "the jersey of the tour de france leader", "yellow"),
    _color(C, "Sports", "a basketball", "orange"),
    _color(C, "Sports", "the chess pieces that move first", "white"),
    _color(C, "Art", "kermit the frog", "green"),
    _color(C, "Art", "garfield the cat", "orange"),
    _color(C, "Art", "the smurfs", "blue"),
    _color(C, "Construction", "the golden gate bridge", "orange"),
    _color(C, "Construction", "a british telephone box", "red"),
    _color(C, "Craft", "the painted decoration of delft pottery", "blue"),
    _shape(C, "Festival", "the topper of a christmas tree", "star"),
    _shape(C, "Festival", "the tip of cupid's projectile", "arrow"),
    _shape(C, "Life", "the mathematical symbol for addition", "cross"),
    _shape(C, "Life", "a sheriff's badge", "star"),
    _shape(C, "Life", "the card suit that is not hearts, clubs or spades", "diamond"),
    _shape(C, "Life", "a yield sign", "triangle"),
    _shape(C, "Life", "the symbol on a one way street sign", "arrow"),
    _shape(C, "Life", "a wedding ring seen from the front", "circle"),
    _shape(C, "Life", "the symbol on the flag of switzerland", "cross"),
    _shape(C, "Sports", "a baseball infield", "diamond"),
    _shape(C, "Sports", "a chessboard", "square"),
    _shape(C, "Construction", "an egyptian pyramid seen from the side", "triangle"),
    _count(C, "Life", "wheels on a bicycle", "how many wheels does a bicycle have?", "two"),
    _count(C, "Life", "wheels on a tricycle", "how many wheels does a tricycle have?", "three"),
    _count(C, "Life", "leaves on a lucky clover", "how many leaves does a lucky clover have?", "four"),
    _count(C, "Art", "members of the beatles", "how many members did the beatles have?", "four"),
    _count(C, "Art", "musketeers in the title of the novel by dumas", "how many musketeers are in the title of "
           "the novel by dumas?", "three"),
    _count(C, "Art", "primary colours of paint", "how many primary colours of paint are there?", "three"),
    _count(C, "Craft", "strings on a violin", "how many strings does a violin have?", "four"),
    _count(C, "Sports", "players on a tennis doubles team", "how many players are on a tennis doubles team?", "two"),
    _rel(C, "Life", "{a} and {b} as the first and second words of an english sentence", "left of",
         "in english, is the second word left or right of the first?", "right"),
    _rel(C, "Life", "{a} and {b} as the first and second letters of an arabic word", "right of",
         "in arabic, is the second letter left or right of the first?", "left"),
    # Time
    _color(T, "Horizontal", "the clear sky at midnight", "black"),
    _color(T, "Horizontal", "the midday sun in a child's drawing", "yellow"),
    _color(T, "Longitudinal", "fresh snow in winter", "white"),
    _color(T, "Longitudinal", "an oak leaf in summer", "green"),
    _shape(T, "Horizontal", "the face of a wall clock", "circle"),
    _shape(T, "Longitudinal", "the full moon", "circle"),
    _count(T, "Longitudinal", "days in a weekend", "how many days are there in a weekend?", "two"),
    _count(T, "Longitudinal", "months in a quarter of a year", "how many months are there in a quarter of a year?",
           "three"),
    _count(T, "Longitudinal", "seasons in a year", "how many seasons are there in a year?", "four"),
    _count(T, "Longitudinal", "weeks in a fortnight", "how many weeks are there in a fortnight?", "two"),
    _count(T, "Longitudinal", "years between consecutive summer olympic games",
           "how many years are there between consecutive summer olympic games?", "four"),
    _count(T, "Longitudinal", "years in a us presidential term", "how many years are there in a us presidential term?",
           "four"),
    _count(T, "Longitudinal", "trimesters in a pregnancy", "how many trimesters are there in a pregnancy?", "three"),
    _count(T, "Horizontal", "halves in a football match", "how many halves are there in a football match?", "two"),
    _count(T, "Horizontal", "quarters in a basketball game", "how many quarters are there in a basketball game?",
           "four"),
    _rel(T, "Horizontal", "on a clock face, {a} at twelve o'clock and {b} at six o'clock", "above",
         "on a clock face, is twelve above or below six?", "above"),
    _rel(T, "Horizontal", "on a clock face, {a} at three o'clock and {b} at nine o'clock", "right of",
         "on a clock face, is three left or right of nine?", "right"),
    _rel(T, "Horizontal", "{a} for the morning sun and {b} for the evening sun, on a map with north up", "right of",
         "on a map with north up, is the rising sun on the left or on the right?", "right"),
    _rel(T, "Longitudinal", "on a calendar row, {a} for monday and {b} for tuesday", "left of",
         "in a calendar row, is tuesday left or right of monday?", "right"),
    _rel(T, "Longitudinal", "on a timeline read from left to right, {a} for the past and {b} for the future",
         "left of", "on a timeline read from left to right, is the future on the left or on the right?", "right"),
    # Space
    _color(S, "geographical location", "the sea on a world map", "blue"),
    _shape(S, "different view", "a cone seen from directly above", "circle"),
    _shape(S, "different view", "a cylinder seen from directly above", "circle"),
    _shape(S, "different view", "a cube seen face on", "square"),
    _shape(S, "different view", "a four sided pyramid seen from the side", "triangle"),
    _shape(S, "different view", "a four sided pyramid seen from directly above", "square"),
    _count(S, "attribute inference", "dimensions of a flat drawing", "how many dimensions does a flat drawing have?",
           "two"),
    _count(S, "attribute inference", "dimensions of the space we live in",
           "how many dimensions does the space we live in have?", "three"),
    _count(S, "geographical location", "cardinal directions on a compass",
           "how many cardinal directions are there on a compass?", "four"),
    _count(S, "geographical location", "hemispheres the equator divides the earth into",
           "how many hemispheres does the equator divide the earth into?", "two"),
    _rel(S, "geographical location", "{a} north of {b} on a map", "above",
         "on a map, is north above or below the centre?", "above"),
    _rel(S, "geographical location", "{a} south of {b} on a map", "below",
         "on a map, is south above or below the centre?", "below"),
    _rel(S, "geographical location", "{a} east of {b} on a map", "right of",
         "on a map, is east on the left or on the right?", "right"),
    _rel(S, "geographical location", "{a} west of {b} on a map", "left of",
         "on a map, is west on the left or on the right?", "left"),
    _rel(S, "geographical location", "{a} for canada and {b} for mexico on a map", "above",
         "on a map, is canada above or below mexico?", "above"),
    _rel(S, "geographical location", "{a} for norway and {b} for italy on a map", "above",
         "on a map, is norway above or below italy?", "above"),
    _rel(S, "geographical location", "{a} for japan and {b} for china on a map", "right of",
         "on a map, is japan left or right of china?", "right"),
    _rel(S, "geographical location", "{a} for portugal and {b} for spain on a map", "left of",
         "on a map, is portugal left or right of spain?", "left"),
    _rel(S, "different view", "the mirror image, left to right, of {a} left of {b}", "right of",
         "in a left to right mirror image, does the left side end up on the left or on the right?", "right"),
    _rel(S, "different view", "the picture of {a} above {b}, turned upside down", "below",
         "when a picture is turned upside down, does its top end up above or below?", "below"),
    _rel(S, "different view", "a person facing you holding {a} in their right hand and {b} in their left hand, "
         "as you see them", "left of", "when a person faces you, is their right hand on your left or on your right?",
         "left"),
    # Biology
    _color(B, "State", "chlorophyll", "green"),
    _color(B, "State", "a ripe banana", "yellow"),
    _color(B, "State", "blood", "red"),
    _color(B, "State", "a flamingo", "pink"),
    _color(B, "State", "a crow", "black"),
    _color(B, "State", "the fur of a polar bear", "white"),
    _color(B, "State", "a ripe carrot", "orange"),
    _color(B, "State", "an eggplant", "purple"),
    _color(B, "State", "a grizzly bear", "brown"),
    _color(B, "State", "the wing cases of a ladybird", "red"),
    _color(B, "State", "lavender flowers", "purple"),
    _shape(B, "State", "a starfish", "star"),
    _shape(B, "State", "the pupil of a human eye", "circle"),
    _shape(B, "State", "the dorsal fin of a shark", "triangle"),
    _count(B, "State", "wings on a bird", "how many wings does a bird have?", "two"),
    _count(B, "State", "legs on a horse", "how many legs does a horse have?", "four"),
    _count(B, "State", "chambers in a human heart", "how many chambers does a human heart have?", "four"),
    _count(B, "State", "humps on a bactrian camel", "how many humps does a bactrian camel have?", "two"),
    _count(B, "State", "body segments of an insect", "how many body segments does an insect have?", "three"),
    _count(B, "State", "pairs of legs on an insect", "how many pairs of legs does an insect have?", "three"),
    _count(B, "State", "stomach compartments of a cow", "how many stomach compartments does a cow have?", "four"),
    _rel(B, "State", "{a} for the roots of a plant and {b} for its flower", "below",
         "are the roots of a plant above or below its flower?", "below"),
    _rel(B, "Behavior", "{a} for a sleeping bat and {b} for the branch it hangs from", "below",
         "does a sleeping bat hang above or below its branch?", "below"),
    # Physics
    _color(P, "Optics", "light of the shorter visible wavelength, red or blue", "blue"),
    _color(P, "Optics", "light of the longest visible wavelength", "red"),
    _color(P, "Optics", "the clear daytime sky", "blue"),
    _color(P, "Optics", "the surface that absorbs the most sunlight", "black"),
    _color(P, "Optics", "the surface that reflects the most light", "white"),
    _color(P, "Thermodynamics", "the hottest of red, yellow and blue suns", "blue"),
    _color(P, "Thermodynamics", "the coolest of red, yellow and blue suns", "red"),
    _color(P, "Thermodynamics", "iron glowing at about six hundred degrees", "red"),
    _color(P, "Physical Properties", "a mix of blue and yellow paint", "green"),
    _color(P, "Physical Properties", "a mix of red and white paint", "pink"),
    _color(P, "Physical Properties", "a mix of red and blue paint", "purple"),
    _color(P, "Physical Properties", "a mix of red and yellow paint", "orange"),
    _shape(P, "Optics", "a glass prism that splits light, seen end on", "triangle"),
    _shape(P, "Optics", "a lens seen face on", "circle"),
    _shape(P, "Mechanics", "the symbol drawn for a force", "arrow"),
    _count(P, "Physical Properties", "poles of a magnet", "how many poles does a magnet have?", "two"),
    _count(P, "Physical Properties", "common states of matter", "how many common states of matter are there?",
           "three"),
    _count(P, "Optics", "primary colours of light", "how many primary colours of light are there?", "three"),
    _rel(P, "Mechanics", "a cork drawn as {a} and a stone drawn as {b}, at rest in a glass of water", "above",
         "in water, does a cork rest above or below a stone?", "above"),
    _rel(P, "Thermodynamics", "hot air drawn as {a} and cold air drawn as {b} in a still room", "above",
         "in a still room, does hot air collect above or below cold air?", "above"),
    # Chemistry
    _color(CH, "Metal Corrosion", "rust", "brown"),
    _color(CH, "Metal Corrosion", "the patina of the statue of liberty", "green"),
    _color(CH, "Solution reaction", "copper sulfate solution", "blue"),
    _color(CH, "Solution reaction", "litmus paper dipped in acid", "red"),
    _color(CH, "Solution reaction", "litmus paper dipped in a strong base", "blue"),
    _color(CH, "Solution reaction", "phenolphthalein in a base", "pink"),
    _color(CH, "Solution reaction", "potassium permanganate solution", "purple"),
    _color(CH, "Chemical Properties", "sulfur", "yellow"),
    _color(CH, "Chemical Properties", "table salt", "white"),
    _color(CH, "Chemical Properties", "pure gold", "yellow"),
    _color(CH, "Combustion", "charcoal", "black"),
    _color(CH, "Combustion", "the flame of burning sodium", "yellow"),
    _color(CH, "Combustion", "the flame of burning potassium", "purple"),
    _color(CH, "Combustion", "the flame of burning strontium", "red"),
    _count(CH, "Chemical Properties", "hydrogen atoms in a water molecule",
           "how many hydrogen atoms are in a water molecule?", "two"),
    _count(CH, "Chemical Properties", "atoms in a water molecule", "how many atoms are in a water molecule?", "three"),
    _count(CH, "Chemical Properties", "atoms in an ozone molecule", "how many atoms are in an ozone molecule?",
           "three"),
    _count(CH, "Chemical Properties", "hydrogen atoms in a methane molecule",
           "how many hydrogen atoms are in a methane molecule?", "four"),
    _count(CH, "Chemical Properties", "oxygen atoms in a carbon dioxide molecule",
           "how many oxygen atoms are in a carbon dioxide molecule?", "two"),
    _count(CH, "Chemical Properties", "bonds a carbon atom usually forms",
           "how many bonds does a carbon atom usually form?", "four"),
    _rel(CH, "Solution reaction", "oil drawn as {a} and water drawn as {b}, settled in one glass", "above",
         "when oil and water settle in a glass, is the oil above or below the water?", "above"),
    _rel(CH, "Chemical Properties", "mercury drawn as {a} and water drawn as {b}, settled in one glass", "below",
         "when mercury and water settle in a glass, is the mercury above or below the water?", "below"),
)
"""The ShapeWISE fact table: every answer is a ShapeWorld word (colour, class, count 2–4, relation)."""

WISE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": ("{cls} in the colour of {phrase}", "{cls} coloured like {phrase}",
              "a photo of {cls} the same colour as {phrase}"),
    "count": ("as many {plural} as there are {phrase}", "a photo of as many {plural} as there are {phrase}",
              "{plural}, one for each of the {phrase}"),
    "shape": ("{color} shape like {phrase}", "a photo of {color} object shaped like {phrase}",
              "{phrase}, drawn as {color} shape"),
    "relation": ("{x}", "a photo of {x}"),
}
_NUM = {w: n for n, w in COUNT_WORDS.items()}


def _wise_item(fact: Fact, rng: np.random.Generator) -> tuple[str, dict, str]:
    """(prompt, GenEval-style spec, explanation) for one fact with random carriers."""
    template = WISE_TEMPLATES[fact.kind][int(rng.integers(len(WISE_TEMPLATES[fact.kind])))]
    if fact.kind == "color":
        cls = _CLASSES[int(rng.integers(len(_CLASSES)))]
        prompt = template.format(cls=with_article(cls), phrase=fact.phrase)
        spec = _colors(cls, fact.answer)
    elif fact.kind == "count":
        cls = _CLASSES[int(rng.integers(len(_CLASSES)))]
        prompt = template.format(plural=make_plural(cls), phrase=fact.phrase)
        spec = _counting(cls, _NUM[fact.answer])
    elif fact.kind == "shape":
        color = _COLORS[int(rng.integers(len(_COLORS)))]
        prompt = template.format(color=with_article(color), phrase=fact.phrase)
        # the prompt names the colour, not the class: without the excludes, one object of every class would pass
        spec = {**_colors(fact.answer, color), "exclude": [{"class": c, "count": 1} for c in _CLASSES
                                                           if c != fact.answer]}
    else:
        a, b = rng.choice(len(_CLASSES), size=2, replace=False)
        a, b = _CLASSES[a], _CLASSES[b]
        prompt = template.format(x=fact.phrase.format(a=with_article(a), b=with_article(b)))
        spec = _position(a, fact.relation, b)
    scene_text = spec["prompt"].removeprefix("a photo of ")
    explanation = f"{fact.question.capitalize()} {fact.answer.capitalize()}. So the image shows {scene_text}."
    return prompt, spec, explanation


def _category_counts(n: int) -> list[int]:
    """Split n over the WISE categories by the legacy proportions (largest remainder; 200 -> 80/33/27/20/20/20)."""
    weights = [round(w * 1000) for _, w in WISE_CATEGORIES]  # 400/167/133/100/100/100: exact integer arithmetic
    counts = [n * w // 1000 for w in weights]
    remainders = [n * w % 1000 for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: -remainders[i])[: n - sum(counts)]:
        counts[i] += 1
    return counts


WISE_DEFAULT_N, WISE_DEFAULT_SEED = 200, 0


def wise_prompts(n: int = WISE_DEFAULT_N, seed: int = WISE_DEFAULT_SEED, *, split: Split = "eval") -> list[dict]:
    """ShapeWISE items {prompt_id, Prompt, Explanation, Category, Subcategory, spec, knowledge}.

    Ids are 1..n in contiguous category ranges (Cultural first) with the legacy proportions (200 -> 80/33/27/20/20/20);
    facts are cycled in a seeded order so each category covers its facts evenly; prompts are distinct. "spec" is the
    GenEval-style metadata of the scene that answers the prompt; "knowledge" = {kind, question, answer}.
    Split "eval" is the benchmark. Split "train" (for teaching the base to answer knowledge prompts with a plain
    prompt) never repeats a prompt of the default benchmark set and never names a held-out combination.
    """
    check_split(split)
    rng = np.random.default_rng(seed if split == "eval" else seed + 1_000_003)
    banned = set() if split == "eval" else {p["Prompt"] for p in wise_prompts()}
    items: list[dict] = []
    seen: set[str] = set()
    for (cat, _), count in zip(WISE_CATEGORIES, _category_counts(n)):
        facts = [f for f in FACTS if f.category == cat]
        made, tries = 0, 0
        while made < count:
            tries += 1
            if tries > 1000 * max(count, 1):
                raise ValueError(f"cannot make {count} distinct {cat} prompts")
            order = rng.permutation(len(facts))
            for fi in order:
                if made == count:
                    break
                prompt, spec, explanation = _wise_item(facts[fi], rng)
                if prompt in seen or prompt in banned or (split == "train" and is_heldout(spec)):
                    continue
                seen.add(prompt)
                made += 1
                fact = facts[fi]
                items.append({
                    "prompt_id": len(items) + 1, "Prompt": prompt, "Explanation": explanation, "Category": cat,
                    "Subcategory": fact.subcategory, "spec": spec,
                    "knowledge": {"kind": fact.kind, "question": fact.question, "answer": fact.answer},
                })
    return items


def wise_answer_prompt(item: dict) -> str:
    """The plain GenEval-template prompt that answers a ShapeWISE item ("a photo of a red square"): the target of
    the base's implicit-reasoning answer."""
    return item["spec"]["prompt"]


def wise_fact_qa() -> list[dict]:
    """Every fact as text-only QA {question, answer, category} so a base can learn the knowledge itself."""
    return [{"question": f.question, "answer": f.answer, "category": f.category} for f in FACTS]


# ----------------------------------------------------------------------------------------------------------------
# Edit instructions (used by star.shapes.edits)

EDIT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": ("add {obj}", "put {obj} in the picture", "draw {obj}"),
    "add_rel": ("add {obj} {rel} {ref}", "put {obj} {rel} {ref}", "draw {obj} {rel} {ref}"),
    "remove": ("remove {ref}", "delete {ref}", "take away {ref}", "erase {ref}"),
    "replace": ("replace {ref} with {obj}", "turn {ref} into {obj}", "change {ref} into {obj}"),
    "color": ("make {ref} {color}", "change the colour of {ref} to {color}", "paint {ref} {color}",
              "recolour {ref} {color}"),
    "size": ("make {ref} {band}", "resize {ref} to {band}", "change the size of {ref} to {band}"),
    "background": ("change the background to {bg}", "make the background {bg}", "set the background colour to {bg}"),
    "style": ("make every object hollow", "draw every shape as an outline", "turn all the shapes into outlines",
              "render the picture in outline style"),
    "extract": ("extract {ref}", "cut out {ref} onto a white background", "isolate {ref} on a white background"),
    "move": ("move {ref} to {region}", "put {ref} in {region}", "shift {ref} to {region}"),
    "flip": ("flip {ref} upside down", "turn {ref} upside down"),
    "point": ("turn {ref} to point {dir}", "rotate {ref} so it points {dir}"),
    "compose": ("{first} and {second}", "{first}, then {second}"),
}
EDIT_RELATIONS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
REGIONS: tuple[str, ...] = ("the top left corner", "the top right corner", "the bottom left corner",
                            "the bottom right corner", "the centre")


def edit_instruction(op: str, rng: np.random.Generator, **slots) -> str:
    """A templated edit instruction for `op` (a key of EDIT_TEMPLATES), template chosen by `rng`."""
    options = EDIT_TEMPLATES[op]
    return options[int(rng.integers(len(options)))].format(**slots)


# ----------------------------------------------------------------------------------------------------------------
# Words

_WORD_RE = re.compile(r"[a-z]+|\d+|[^\sa-z\d]")


def words(text: str) -> list[str]:
    """Split text the way text_vocabulary counts words: lower-case letter runs, digit runs, single punctuation."""
    return _WORD_RE.findall(text.lower())


def text_vocabulary() -> list[str]:
    """Every word (in the sense of `words`) that any generator in this module or star.shapes.edits can emit."""
    strings: list[str] = ["a an and photo of", "an empty background", "yes no", "on a background"]
    strings += list(vocab.CLASSES) + [make_plural(c) for c in vocab.CLASSES] + list(vocab.COLORS)
    strings += list(vocab.BACKGROUNDS) + list(vocab.SIZE_BANDS) + ["hollow"] + list(vocab.RELATIONS)
    strings += list(COUNT_WORDS.values()) + list(ORIENTATION_PHRASES.values()) + ["up down left right"]
    strings += list(PARAPHRASE_TEMPLATES) + ["there are", ","] + list(RELATION_PARAPHRASES.values())
    strings += list(VQA_TEMPLATES.values())
    for f in FACTS:
        strings += [f.phrase, f.question, f.answer, f.category, f.subcategory]
    for group in (WISE_TEMPLATES, EDIT_TEMPLATES):
        for templates in group.values():
            strings += list(templates)
    strings += ["so the image shows ."] + list(EDIT_RELATIONS.values()) + list(REGIONS)
    vocab_words: set[str] = set()
    for s in strings:
        vocab_words.update(words(re.sub(r"\{[a-z_]+\}", " ", s)))
    return sorted(vocab_words)


__all__ = [
    "GENEVAL_TAGS", "COUNT_WORDS", "geneval_prompts", "random_geneval_metadata",
    "write_jsonl",
    "write_geneval_metadata", "describe", "refer", "reading_order", "main_relation", "caption", "paraphrases",
    "metadata_for_scene", "prompt_for_scene", "VQA_FAMILIES", "vqa_questions", "Fact", "FACTS", "WISE_CATEGORIES",
    "wise_prompts", "wise_answer_prompt", "wise_fact_qa", "EDIT_TEMPLATES", "REGIONS", "edit_instruction", "words",
    "text_vocabulary",
]
