"""Benchmark the ShapeWorld scorer: (a) parser accuracy on random scenes, clean and blurred + JPEG; (b) the speed of
`star shapes score --suite geneval` on a folder with 4 images per prompt; (c) the GenEval oracle at several sizes;
(d) optionally, the literal research/eval.md §9.3 shape fit against this parser's.

    python scripts/bench_score.py --oracle 64 256 --compare-literal 150   # the figures in docs/scoring.md
    python scripts/bench_score.py --scenes 200 --skip-speed

Accuracy: a scene counts as correct when star.shapes.parse.roundtrip_report is ok: the same multiset of
(class, colour) (so every count is right), each object's centre within 3% of the side, and every pairwise GenEval
relation equal. Pairs within 0.05 of the 0.5 boundary are ambiguous by construction and skipped; their number is
printed, and "strict" accuracy compares them too. Scenes: star.shapes.sample.random_scene, half aligned, half
unaligned, 1-5 objects of all three size bands, a non-default background in a quarter of them, split "eval".
Degradation: Gaussian blur sigma = 1 px, then JPEG q75.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np
from PIL import Image, ImageFilter

from star.shapes import vocab
from scipy import ndimage

from star.shapes.parse import RELATION_TOL, match_objects, parse, roundtrip_report
from star.shapes.render import render, template
from star.shapes.sample import random_scene
from star.shapes.scene import relation_margin


def degrade(image: Image.Image, sigma: float = 1.0, quality: int = 75) -> Image.Image:
    """Gaussian blur (σ px) then a JPEG round trip at `quality`."""
    buf = io.BytesIO()
    image.filter(ImageFilter.GaussianBlur(sigma)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def scenes(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        bg = str(rng.choice(list(vocab.BACKGROUNDS))) if rng.random() < 0.25 else vocab.DEFAULT_BACKGROUND
        k = int(rng.integers(1, 6))
        for tries in range(20):
            try:
                out.append(random_scene(rng, aligned=i % 2 == 0, n_objects=max(1, k - tries), split="eval",
                                        background=bg, sizes=tuple(vocab.SIZE_BANDS)))
                break
            except ValueError:
                continue
    return out


def ambiguous_pairs(scene, side: int) -> int:
    boxes = [tuple(v * side for v in o.box()) for o in scene.objects]
    return sum(abs(relation_margin(a, b, rel) - 0.5) < RELATION_TOL
               for i, a in enumerate(boxes) for j, b in enumerate(boxes) if i != j for rel in vocab.RELATIONS)


def accuracy(scene_list, resolution: int, degraded: bool) -> dict:
    ok, strict, fails, confs, conf_ok = 0, 0, Counter(), [], 0
    examples = []
    t0 = time.time()
    for scene in scene_list:
        image = render(scene, resolution)
        if degraded:
            image = degrade(image)
        graph = parse(image)
        rep = roundtrip_report(scene, graph)
        ok += rep["ok"]
        strict += roundtrip_report(scene, graph, relation_tol=0.0)["ok"]
        if not rep["ok"]:
            kind = "objects" if not rep["objects_ok"] else ("centres" if not rep["centers_ok"] else "relations")
            fails[kind] += 1
            if len(examples) < 5:
                examples.append({"expected": rep["expected"], "parsed": rep["parsed"], "failed": kind})
        if rep["objects_ok"]:
            confs += [o.confidence for o in graph.objects]
            conf_ok += 1
    n = len(scene_list)
    c = np.array(confs) if confs else np.zeros(1)
    return {"resolution": resolution, "degraded": degraded, "scenes": n, "correct": ok, "accuracy": ok / n,
            "accuracy_strict": strict / n,
            "failures": dict(fails), "examples": examples,
            "confidence_min": float(c.min()), "confidence_p1": float(np.percentile(c, 1)),
            "confidence_above_0.9": float((c > 0.9).mean()),
            "ms_per_image": 1000 * (time.time() - t0) / n}


def literal_fit(mask: np.ndarray) -> tuple[str, float]:
    """research/eval.md §9.3 step 4 as written: fill holes, crop the mask to its bbox, resize to 32×32, IoU against
    render.template(class, orientation, 32); (class, best IoU)."""
    filled = ndimage.binary_fill_holes(mask)
    ys, xs = np.nonzero(filled)
    crop = Image.fromarray(filled[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8) * 255)
    small = np.asarray(crop.resize((32, 32), Image.BILINEAR)) >= 128
    ious = {(s, o): (small & template(s, o, 32)).sum() / (small | template(s, o, 32)).sum()
            for s in vocab.CLASSES for o in vocab.ORIENTATIONS[s]}
    best = max(ious, key=ious.get)
    return best[0], float(ious[best])


def compare_literal(scene_list, resolutions=(64, 128, 256)) -> list[dict]:
    """Class errors and share of confidences > 0.9 for the literal §9.3 fit and for this parser's fit, on the same
    instances (the parser's masks), clean and blurred + JPEG."""
    rows = []
    for res in resolutions:
        for degraded in (False, True):
            n = err_lit = err_fit = 0
            conf_lit, conf_fit = [], []
            for scene in scene_list:
                image = render(scene, res)
                graph = parse(degrade(image) if degraded else image)
                for i, j in match_objects(scene, graph):
                    cls, c = literal_fit(graph.objects[j].mask)
                    n += 1
                    err_lit += cls != scene.objects[i].shape
                    err_fit += graph.objects[j].shape != scene.objects[i].shape
                    conf_lit.append(c)
                    conf_fit.append(graph.objects[j].confidence)
            rows.append({"resolution": res, "degraded": degraded, "objects": n,
                         "literal_class_errors": err_lit,
                         "literal_conf_above_0.9": float(np.mean(np.array(conf_lit) > 0.9)),
                         "parser_class_errors": err_fit,
                         "parser_conf_above_0.9": float(np.mean(np.array(conf_fit) > 0.9))})
    return rows


def speed(resolution: int, workers: list[int], images_per_prompt: int) -> list[dict]:
    from star.shapes.geneval import reference_folder

    out = []
    with tempfile.TemporaryDirectory() as d:
        folder = os.path.join(d, "images")
        reference_folder(folder, images_per_prompt=images_per_prompt, resolution=resolution)
        for w in workers:
            cmd = [sys.executable, "-m", "star.cli", "shapes", "score", "--suite", "geneval", "--images", folder,
                   "--out", os.path.join(d, f"out{w}"), "--workers", str(w), "--quiet"]
            t0 = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            wall = time.time() - t0
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr)
            with open(os.path.join(d, f"out{w}", "summary.json")) as f:
                summary = json.load(f)
            out.append({"workers": w, "images": summary["images_scored"], "wall_s": round(wall, 2),
                        "images_per_s": summary["images_scored"] / wall, "overall": summary["overall"],
                        "command": f"star shapes score --suite geneval --images DIR --workers {w} --quiet"})
    return out


def oracle(resolution: int) -> dict:
    from star.shapes.geneval import evaluate_folder, reference_folder, summary_scores

    with tempfile.TemporaryDirectory() as d:
        reference_folder(d, images_per_prompt=1, resolution=resolution)
        results, info = evaluate_folder(d)
        s = summary_scores(results, images_found=info["images_found"])
    return {"resolution": resolution, "overall": s["overall"], "tasks": s["tasks"], "images": s["images_scored"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=2000)
    ap.add_argument("--resolution", type=int, default=vocab.DEFAULT_RESOLUTION)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--images-per-prompt", type=int, default=4)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--oracle", type=int, nargs="*", default=[], help="also run the GenEval oracle at these sizes")
    ap.add_argument("--compare-literal", type=int, default=0, metavar="N",
                    help="also compare the literal §9.3 shape fit with this parser's on N scenes at 64/128/256")
    ap.add_argument("--json", help="write all figures to this JSON file")
    args = ap.parse_args()
    report: dict = {}
    if not args.skip_accuracy:
        scene_list = scenes(args.scenes, args.seed)
        amb = sum(ambiguous_pairs(s, args.resolution) for s in scene_list)
        checks = sum(len(s.objects) * (len(s.objects) - 1) * len(vocab.RELATIONS) for s in scene_list)
        print(f"{len(scene_list)} scenes ({sum(len(s.objects) for s in scene_list)} objects); {amb} of {checks} "
              f"(pair, relation) checks skipped as ambiguous (true margin within {RELATION_TOL} of 0.5)")
        for degraded in (False, True):
            r = accuracy(scene_list, args.resolution, degraded)
            report["accuracy_" + ("blur_jpeg" if degraded else "clean")] = r
            print(f"parser accuracy {'blur σ=1 + JPEG q75' if degraded else 'clean':<20} {r['resolution']}px: "
                  f"{r['accuracy']:.2%} ({r['correct']}/{r['scenes']}), failures {r['failures']}, "
                  f"strict (no ambiguous pairs skipped) {r['accuracy_strict']:.2%}, "
                  f"confidence min {r['confidence_min']:.3f} p1 {r['confidence_p1']:.3f} "
                  f">0.9 {r['confidence_above_0.9']:.2%}, {r['ms_per_image']:.1f} ms/image")
            for ex in r["examples"]:
                print("   ", ex)
    if args.compare_literal:
        for r in compare_literal(scenes(args.compare_literal, args.seed + 1)):
            report.setdefault("compare_literal", []).append(r)
            kind = "blur+JPEG" if r["degraded"] else "clean"
            print(f"shape fit {r['resolution']}px {kind} ({r['objects']} objects): "
                  f"literal §9.3: {r['literal_class_errors']} class errors, {r['literal_conf_above_0.9']:.1%} > 0.9; "
                  f"parser: {r['parser_class_errors']} errors, {r['parser_conf_above_0.9']:.1%} > 0.9")
    for res in args.oracle:
        r = oracle(res)
        report.setdefault("oracle", []).append(r)
        print(f"oracle {res}px: overall {r['overall']:.4f} over {r['images']} images, tasks {r['tasks']}")
    if not args.skip_speed:
        for r in speed(args.resolution, args.workers, args.images_per_prompt):
            report.setdefault("speed", []).append(r)
            print(f"speed: {r['images']} images with {r['workers']} worker(s): {r['images_per_s']:.1f} images/s "
                  f"({r['wall_s']} s wall incl. start-up; overall {r['overall']:.4f})\n    {r['command']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
