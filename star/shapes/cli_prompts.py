"""`star shapes prompts`: print or write a ShapeWorld benchmark prompt set as JSONL.

Suites: geneval (GenEval's evaluation_metadata.jsonl schema), wise (ShapeWISE items), vqa (ShapeVQA questions with
their scenes), imgedit (ShapeImgEdit items with source/target scenes). Every line carries what its judge needs;
"heldout" marks items that use the held-out split (report them separately).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from star.shapes.edits import imgedit_items
from star.shapes.sample import is_heldout, random_scene
from star.shapes.text import geneval_prompts, vqa_questions, wise_prompts, write_geneval_metadata, write_jsonl

DEFAULTS = {"geneval": (43, 100), "wise": (0, 200), "vqa": (0, 100), "imgedit": (0, 200)}  # suite: (seed, n)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", required=True, choices=tuple(DEFAULTS), help="which benchmark's prompts")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed (defaults: geneval 43, others 0; the defaults are the benchmark sets)")
    parser.add_argument("--n", type=int, default=None,
                        help="geneval: draws per tag (100); wise: prompts (200); vqa: scenes (100); "
                             "imgedit: items (200)")
    parser.add_argument("--unaligned", action="store_true", help="vqa/imgedit scenes off the grid")
    parser.add_argument("--out", "-o", default=None,
                        help="output .jsonl (default: stdout); for geneval a folder gets evaluation_metadata.jsonl "
                             "+ generation_prompts.txt")


def build(suite: str, seed: int, n: int, aligned: bool = True) -> list[dict]:
    if suite == "geneval":
        return geneval_prompts(seed=seed, n=n)
    if suite == "wise":
        return [dict(item, heldout=is_heldout(item)) for item in wise_prompts(n=n, seed=seed)]
    if suite == "vqa":
        rng = np.random.default_rng(seed)
        rows = []
        for i in range(n):
            scene = random_scene(rng, aligned=aligned, split="eval")
            for q in vqa_questions(scene, rng, split="eval"):
                rows.append({"id": len(rows), "scene_id": i, **q, "scene": scene.to_dict(),
                             "heldout": is_heldout(scene)})
        return rows
    if suite == "imgedit":
        return [{"key": f"{i:05d}", "prompt": it.instruction, "edit_type": it.edit_type, "heldout": is_heldout(it),
                 **{k: v for k, v in it.to_dict().items() if k not in ("instruction", "edit_type")}}
                for i, it in enumerate(imgedit_items(n, seed, aligned=aligned))]
    raise ValueError(f"unknown suite {suite!r}")


def run(args: argparse.Namespace) -> int:
    seed = DEFAULTS[args.suite][0] if args.seed is None else args.seed
    n = DEFAULTS[args.suite][1] if args.n is None else args.n
    if n < 0:
        raise ValueError(f"--n must be >= 0, got {n}")
    rows = build(args.suite, seed, n, aligned=not args.unaligned)
    if args.out is None:
        try:
            for row in rows:
                sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. piped into `head`: not an error
            sys.stdout = open(os.devnull, "w")
    elif args.suite == "geneval":
        path = write_geneval_metadata(args.out, rows)
        print(f"wrote {len(rows)} GenEval prompts to {path}", file=sys.stderr)
    else:
        write_jsonl(args.out, rows)
        print(f"wrote {len(rows)} {args.suite} rows to {args.out}", file=sys.stderr)
    return 0
