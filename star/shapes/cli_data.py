"""`star shapes dataset`: write a ShapeWorld training dataset in the star-records format (docs/data_format.md).

Everything is the train split: held-out colour-class pairs and relations (star.shapes.sample) never appear.
Kinds: t2i (GenEval-style prompt + reference scene, plus some random scenes with a true prompt or caption), edit
(the nine ImgEdit types in ImgEdit's proportions), vqa (ShapeVQA questions), caption (canonical captions and
paraphrases), text_qa (the ShapeWISE facts as text questions). `--kind all` writes --n records of each kind.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from collections.abc import Iterator

import numpy as np

from star.data.records import KINDS, RecordWriter
from star.shapes import vocab
from star.shapes.edits import EXTRACT_BACKDROP, centred, random_edit, render_on, render_target, type_counts
from star.shapes.render import render
from star.shapes.scene import Scene
from star.shapes.sample import geneval_reference_scene, random_scene
from star.shapes.text import (
    caption, in_reading_order, metadata_for_scene, paraphrases, random_geneval_metadata, vqa_questions, wise_fact_qa,
)

BACKGROUND_P = 0.25  # caption/vqa scenes: probability of a non-default background
WHITE_CENTRED_P = 0.5  # t2i on white: share of single objects centred, as extract centres the object it cuts out
VARIED_HOLLOW_P = 0.25  # t2i varied: share of scenes in outline style (every object hollow, as style edits draw them)


def _background(rng: np.random.Generator) -> str:
    if rng.random() < BACKGROUND_P:
        names = list(vocab.BACKGROUNDS)
        return names[int(rng.integers(len(names)))]
    return vocab.DEFAULT_BACKGROUND


PHRASE_ORDERS = ("reading", "drawn")


def on_white_record(rng: np.random.Generator, *, aligned: bool, resolution: int) -> dict:
    """A t2i record drawn on extract's pure-white backdrop, "... on a white background": one medium object (centred
    with probability WHITE_CENTRED_P, as extract draws it) or two, of any train-split colour but white (which would
    vanish). Extract's targets are the only white-backdrop images otherwise, so their codes are learnt from
    extract's few triplets alone; these records teach them with text-to-image's colour binding."""
    while True:
        scene = random_scene(rng, aligned=aligned, n_objects=int(rng.integers(1, 3)))
        if all(o.color != "white" for o in scene.objects):
            break
    if len(scene.objects) == 1 and rng.random() < WHITE_CENTRED_P:
        scene = Scene(objects=[centred(scene.objects[0], aligned)], background=scene.background)
    return {"kind": "t2i", "image": render_on(scene, EXTRACT_BACKDROP, resolution),
            "text": f"{caption(scene)} on a white background",
            "meta": {"tag": "on_white", "scene": scene.to_dict(), "backdrop": list(EXTRACT_BACKDROP)}}


def varied_record(rng: np.random.Generator, *, aligned: bool, resolution: int) -> dict:
    """A t2i record (the scene's caption) over what edits draw but GenEval's prompts never ask for: small and large
    objects (adjust and compose resize), outlines (every object hollow with probability VARIED_HOLLOW_P, as style
    draws them), turned orientations (action's flips) and named backgrounds; one to three objects."""
    scene = random_scene(rng, aligned=aligned, n_objects=int(rng.integers(1, 4)), sizes=tuple(vocab.SIZE_BANDS),
                         background=_background(rng))
    hollow = bool(rng.random() < VARIED_HOLLOW_P)
    turns = [vocab.ORIENTATIONS[o.shape] for o in scene.objects]
    scene = Scene(objects=[replace(o, hollow=hollow, orientation=t[int(rng.integers(len(t)))])
                           for o, t in zip(scene.objects, turns)], background=scene.background)
    return {"kind": "t2i", "image": render(scene, resolution), "text": caption(scene),
            "meta": {"tag": "varied", "scene": scene.to_dict()}}


def generate_records(kind: str, n: int, rng: np.random.Generator, *, aligned: bool = True,
                     resolution: int = vocab.DEFAULT_RESOLUTION, caption_frac: float = 0.1,
                     phrase_order: str = "reading", white_frac: float = 0.0,
                     varied_frac: float = 0.0, edit_types: dict[str, float] | None = None) -> Iterator[dict]:
    """n train-split records of `kind`, images as PIL (RecordWriter.add stores them).

    t2i `phrase_order`: "reading" names a two-object prompt's objects in the image's reading order (the order the
    generator draws them: a colour is then bound by position in the prompt, not looked up by class), "drawn" keeps
    the order the prompt was drawn in (independent of the layout). t2i `white_frac`: share of records drawn on
    extract's white backdrop (on_white_record); `varied_frac`: share of captioned scenes of the sizes, outlines,
    orientations and backgrounds that edits draw (varied_record). edit `edit_types`: weight per edit type (default
    ImgEdit's proportions; a type left out gets no records)."""
    if phrase_order not in PHRASE_ORDERS:
        raise ValueError(f"phrase_order must be one of {PHRASE_ORDERS}, got {phrase_order!r}")
    if kind == "t2i":
        for _ in range(n):
            if white_frac or varied_frac:
                u = rng.random()
                if u < white_frac:
                    yield on_white_record(rng, aligned=aligned, resolution=resolution)
                    continue
                if u < white_frac + varied_frac:
                    yield varied_record(rng, aligned=aligned, resolution=resolution)
                    continue
            if rng.random() < caption_frac:
                scene = random_scene(rng, aligned=aligned)
                meta = metadata_for_scene(scene, rng)
            else:
                meta = random_geneval_metadata(rng, split="train")
                scene = geneval_reference_scene(meta, rng, aligned=aligned, split="train")
            if meta and phrase_order == "reading":
                meta = in_reading_order(meta, scene)
            text, tag = (meta["prompt"], meta["tag"]) if meta else (caption(scene), "caption")
            yield {"kind": "t2i", "image": render(scene, resolution), "text": text,
                   "meta": {"tag": tag, "scene": scene.to_dict()}}
    elif kind == "edit":
        types = [t for t, c in type_counts(n, edit_types).items() for _ in range(c)]
        for i in rng.permutation(len(types)):
            item = random_edit(rng, types[i], aligned=aligned, split="train")
            yield {"kind": "edit", "source": render(item.source, resolution), "target": render_target(item, resolution),
                   "text": item.instruction, "edit_type": item.edit_type,
                   "meta": {"source_scene": item.source.to_dict(), "target_scene": item.target.to_dict(),
                            "details": item.details}}
    elif kind == "vqa":
        made = 0
        while made < n:
            scene = random_scene(rng, aligned=aligned, background=_background(rng))
            image = render(scene, resolution)
            for q in vqa_questions(scene, rng, split="train"):
                if made == n:
                    break
                made += 1
                yield {"kind": "vqa", "image": image, "question": q["question"], "answer": q["answer"],
                       "meta": {"family": q["family"], "scene": scene.to_dict()}}
    elif kind == "caption":
        for _ in range(n):
            scene = random_scene(rng, aligned=aligned, background=_background(rng))
            canonical = caption(scene)
            options = paraphrases(scene, rng)
            text = canonical if not options or rng.random() < 0.5 else options[0]
            yield {"kind": "caption", "image": render(scene, resolution), "text": text,
                   "meta": {"canonical": canonical, "scene": scene.to_dict()}}
    elif kind == "text_qa":
        facts = wise_fact_qa()
        made = 0
        while made < n:
            for i in rng.permutation(len(facts)):
                if made == n:
                    break
                made += 1
                yield {"kind": "text_qa", "question": facts[i]["question"], "answer": facts[i]["answer"],
                       "meta": {"category": facts[i]["category"]}}
    else:
        raise ValueError(f"kind must be one of {tuple(KINDS)} or 'all', got {kind!r}")


def check_t2i_fracs(white_frac: float, varied_frac: float, names: str = "white_frac and varied_frac") -> None:
    """generate_records' t2i shares: each >= 0, together <= 1 (the rest are GenEval-style prompts and captions)."""
    if not (0.0 <= white_frac and 0.0 <= varied_frac and white_frac + varied_frac <= 1.0):
        raise ValueError(f"{names} must be >= 0 with a sum <= 1, got {white_frac} and {varied_frac}")


def parse_edit_types(text: str) -> dict[str, float]:
    """'compose=3,adjust=2' -> {'compose': 3.0, 'adjust': 2.0}; names and weights checked by type_counts."""
    weights = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value) if sep else float("nan")
        except ValueError:
            weights[name.strip()] = float("nan")
    try:
        type_counts(0, weights)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--edit-types {text!r}: write TYPE=WEIGHT pairs joined by commas; {exc}")
    return weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", "-o", required=True, help="dataset folder to write")
    parser.add_argument("--kind", default="all", choices=(*KINDS, "all"), help="record kind (default all)")
    parser.add_argument("--n", type=int, default=1000, help="records per kind (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--resolution", "-r", type=int, default=vocab.DEFAULT_RESOLUTION,
                        help=f"image side in pixels (default {vocab.DEFAULT_RESOLUTION})")
    parser.add_argument("--unaligned", action="store_true", help="continuous placement instead of the grid")
    parser.add_argument("--caption-frac", type=float, default=0.1,
                        help="t2i: share of random scenes with a true prompt or caption (default 0.1)")
    parser.add_argument("--white-frac", type=float, default=0.0,
                        help="t2i: share of records drawn on extract's pure-white backdrop, '... on a white "
                             "background' (default 0)")
    parser.add_argument("--varied-frac", type=float, default=0.0,
                        help="t2i: share of captioned scenes with small/large, hollow, turned objects and named "
                             "backgrounds, as edits draw them (default 0)")
    parser.add_argument("--phrase-order", choices=PHRASE_ORDERS, default="reading",
                        help="t2i: name a two-object prompt's objects in the image's reading order (default) or in "
                             "the order they were drawn")
    parser.add_argument("--edit-types", type=parse_edit_types, default=None, metavar="TYPE=W,...",
                        help="edit: weight per edit type, e.g. compose=3,adjust=2 (types left out get no records; "
                             "default ImgEdit's proportions)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="records per JSONL shard (default 10000)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")


def run(args: argparse.Namespace) -> int:
    if args.n < 0:
        raise ValueError(f"--n must be >= 0, got {args.n}")
    if not 0.0 <= args.caption_frac <= 1.0:
        raise ValueError(f"--caption-frac must be in [0, 1], got {args.caption_frac}")
    check_t2i_fracs(args.white_frac, args.varied_frac, names="--white-frac and --varied-frac")
    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    meta = {"world": "shapeworld", "vocab": vocab.VOCAB_VERSION, "split": "train", "seed": args.seed,
            "resolution": args.resolution, "aligned": not args.unaligned, "kinds": kinds, "n_per_kind": args.n,
            "phrase_order": args.phrase_order, "white_frac": args.white_frac,
            "varied_frac": args.varied_frac, "edit_types": args.edit_types}
    start = time.time()
    try:
        writer = RecordWriter(args.out, shard_size=args.shard_size, meta=meta, overwrite=args.overwrite)
    except FileExistsError as exc:  # a user error: one line, no traceback
        raise ValueError(str(exc)) from exc
    with writer:
        for kind in kinds:
            rng = np.random.default_rng([args.seed, list(KINDS).index(kind)])  # kinds independent of each other
            for record in generate_records(kind, args.n, rng, aligned=not args.unaligned,
                                           resolution=args.resolution, caption_frac=args.caption_frac,
                                           phrase_order=args.phrase_order, white_frac=args.white_frac,
                                           varied_frac=args.varied_frac, edit_types=args.edit_types):
                writer.add(record)
    counts = ", ".join(f"{k} {v}" for k, v in writer.counts.items())
    print(f"wrote {args.out}: {counts}; {len(writer._images)} images; {time.time() - start:.1f}s")
    return 0
